"""Running a solver: the attack problem for a box, and the solver's answer after the core's check."""

from __future__ import annotations

import copy
import dataclasses
import time
from dataclasses import dataclass
from typing import Any

import torch

from cimguard.errors import CimguardError
from cimguard.sim.crossbar import Crossbar
from cimguard.sim.device import device_box_levels
from cimguard.sim.evaluate import EvalData
from cimguard.sim.gradients import linf_ratio
from cimguard.sim.solve import AttackProblem, Solver, TraceCallback, WorstCase, verified


@dataclass
class SolverRun:
    """One solver run as the core reports it: the verified worst case and what it cost."""

    solver: str
    thg: float | None
    """The swept threshold; ``None`` for the device's own box."""
    worst: WorstCase
    seconds: float
    options: dict[str, Any]
    distance: float = 0.0
    """``max |ΔW| / bound`` of the answer (1.0: on the box's surface)."""

    @property
    def accuracy(self) -> float:
        """Accuracy (agreement in label-free mode) of the worst chip, recomputed by the core."""
        return self.worst.accuracy

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the perturbation left out; its trace kept), as in the ``attack`` report."""
        return {"solver": self.solver, "thg": self.thg, "box": "device" if self.thg is None else "thg",
                "accuracy": self.accuracy, "interrupted": self.worst.interrupted, "seconds": self.seconds,
                "distance": self.distance, "options": self.options, "passes": self.worst.passes,
                "curve": self.worst.curve, "trace": self.worst.trace}

    def table(self) -> str:
        """One line: the solver, the box and the worst chip's accuracy."""
        box = "in the device's box" if self.thg is None else f"at thg {self.thg:g}"
        note = " (interrupted: best chip found before Ctrl-C)" if self.worst.interrupted else ""
        return (f"{self.solver} worst case {box}: {self.accuracy:.4f} "
                f"(max |ΔW|/bound {self.distance:.3f}, {self.seconds:.1f} s){note}")

    def __str__(self) -> str:
        return self.table()


def make_problem(crossbar: Crossbar, data: EvalData, thg: float | None = None,
                 layers: tuple[str, ...] | None = None) -> AttackProblem:
    """The box at ``thg``, or the device's own box (per level, :meth:`Crossbar.bounds`) when ``thg`` is None;
    ``layers`` limits it to those layers."""
    device_box = thg is None
    if device_box:
        bounds = crossbar.bounds(None)
        thg = max(device_box_levels(crossbar.device))
    else:
        thg = float(thg)
        bounds = crossbar.bounds(thg)
    if layers is not None:
        unknown = set(layers) - set(bounds)
        if unknown:
            raise CimguardError(f"unknown layer(s) {', '.join(sorted(unknown))}")
        bounds = {name: bound if name in layers else torch.zeros_like(bound) for name, bound in bounds.items()}
    return AttackProblem(crossbar, data, bounds, thg, device_box)


def run_checked(
    solver: Solver,
    problem: AttackProblem,
    seed: int = 0,
    *,
    progress: bool = False,
    callbacks: tuple[TraceCallback, ...] = (),
) -> SolverRun:
    """Run ``solver`` on ``problem`` and return its answer after the core's independent check.

    The solver is used as built (its config is its options); :func:`cimguard.api.run_solver` also takes
    a registered name.  ``seed`` seeds its generator (:func:`cimguard.seeds.torch_generator`).
    """
    # A shallow copy: this run's progress flag and callbacks must not stick to the caller's object.
    solver = copy.copy(solver)
    solver.callbacks = [*solver.callbacks, *callbacks]
    solver.progress = progress
    start = time.perf_counter()
    worst = solver.solve(problem, problem.crossbar.generator(seed))
    seconds = time.perf_counter() - start
    if not isinstance(worst, WorstCase):
        raise CimguardError(f"solver {solver.name!r} returned {type(worst).__name__}, not a WorstCase")
    checked = verified(problem, worst, solver.name)
    return SolverRun(solver.name, None if problem.device_box else problem.thg, checked, seconds,
                     dataclasses.asdict(solver.config), linf_ratio(checked.perturbation, problem.bounds))
