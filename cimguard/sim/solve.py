"""The solver contract (problem, result, config, tracker, base class) and the core's check of every answer.

A solver looks for one perturbation ``ΔW`` (one chip: shared by every input)
inside the write-verify box ``|ΔW| <= bound`` that minimises accuracy.  Accuracy
is relaxed to the Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``, which
is negative exactly when a sample is misclassified.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch

from cimguard.errors import CimguardError
from cimguard.options import checked_config, config_values
from cimguard.progress import progress_bar
from cimguard.sim.crossbar import Crossbar, Perturbation, check_within_bounds
from cimguard.sim.evaluate import EvalData, accuracy


@dataclass(frozen=True)
class AttackProblem:
    """What every solver receives."""

    crossbar: Crossbar
    """The mapped model (nominal quantised weights) and its device."""
    data: EvalData
    """Evaluation inputs and the labels accuracy is measured against."""
    bounds: Perturbation
    """Per-weight box ``|ΔW| <= bound`` from the crossbar mapping and write-verify threshold."""
    thg: float
    """The write-verify threshold the bounds come from (level units); for the device's own box
    (which may differ per level) its largest per-device bound."""
    device_box: bool = False
    """True when ``bounds`` is the device's own box (``Crossbar.bounds()`` without a threshold)."""


@dataclass
class WorstCase:
    """A solver's answer: one chip's ΔW, the accuracy it gives, and how the search went."""

    perturbation: Perturbation
    accuracy: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    """One record per iteration or search run (accuracy, loss, distance, …)."""
    interrupted: bool = False
    """True when the search was stopped early (Ctrl-C); the result is the best so far."""
    passes: int = 0
    """Passes over the evaluation data the search used (forward, plus backward where it took a gradient)."""

    @property
    def curve(self) -> list[float | None]:
        """The any-time curve: best accuracy after each pass (derived from the trace: :func:`anytime_curve`)."""
        return anytime_curve(self.trace, self.passes)


@dataclass(frozen=True)
class SolverConfig:
    """Options every solver understands."""

    iterations: int = 100
    """Iterations of the search (each solver says what one is and what it costs in passes; ``budget``
    caps the passes)."""
    kappa: float = 0.0
    """Confidence margin κ of the Carlini–Wagner loss."""
    budget: int = 0
    """Most passes over the evaluation data the whole search may use (0: no cap, the solver's own
    schedule).  A pass is one forward over the whole set plus, when the search needs a gradient, its
    backward; an accuracy read-out that is not part of a gradient pass counts as a pass too."""

    def validate(self) -> None:
        """Raise :class:`CimguardError` for values no search can use (subclasses extend it)."""
        if self.iterations < 0:
            raise CimguardError(f"iterations must be >= 0, got {self.iterations}")
        if self.budget < 0:
            raise CimguardError(f"budget must be >= 0 (0: no cap), got {self.budget}")
        if not is_finite(self.kappa) or self.kappa < 0:
            raise CimguardError(f"kappa must be a finite number >= 0, got {self.kappa}")


def is_finite(value: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (what every numeric option must be)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TraceCallback = Callable[[dict[str, Any]], None]
"""Called with every trace record as it is made (progress, logging, tests)."""


class BudgetSpent(Exception):
    """Raised by :meth:`Tracker.advance` when a pass would exceed the solver's budget; :meth:`Solver.solve`
    ends the search there with the best chip so far (a solver need not catch it)."""


def anytime_curve(trace: list[dict[str, Any]], passes: int) -> list[float | None]:
    """Best accuracy after each pass ``1..passes`` (``None`` before the first scored chip), from the
    ``passes`` field :meth:`Tracker.record` puts on every record: the any-time curve of a search."""
    first: dict[int, float] = {}  # the best accuracy scored in each pass
    for entry in trace:
        at, acc = entry.get("passes"), entry.get("accuracy")
        if at and acc is not None:
            first[at] = min(first.get(at, acc), acc)
    curve: list[float | None] = []
    best: float | None = None
    for at in range(1, passes + 1):
        if at in first:
            best = first[at] if best is None else min(best, first[at])
        curve.append(best)
    return curve


class Tracker:
    """The trace and the best chip seen so far: what a solver returns, also when stopped early.

    Solvers report every candidate with :meth:`record`; the tracker keeps a copy of
    the best one, so a Ctrl-C at any moment still yields a feasible answer.
    """

    def __init__(self, problem: AttackProblem, solver: "Solver", total: int | None, desc: str) -> None:
        self.problem = problem
        #: Passes over the evaluation data paid so far (:meth:`advance`), and the most allowed (None: no cap).
        self.passes = 0
        self.budget: int | None = solver.config.budget or None
        self.trace: list[dict[str, Any]] = []
        self.best: Perturbation | None = None
        self.best_accuracy = float("inf")
        self.interrupted = False
        self._callbacks = list(solver.callbacks)
        self._bar = progress_bar(total, desc, "pass", solver.progress)

    def record(self, perturbation: Perturbation | None, accuracy: float | None, **fields: Any) -> None:
        """Add one trace record; ``perturbation`` (inside the box) competes for the best chip."""
        if perturbation is not None and accuracy is not None and accuracy < self.best_accuracy:
            self.best = {name: value.detach().clone() for name, value in perturbation.items()}
            self.best_accuracy = accuracy
        entry = {"accuracy": accuracy, **fields, "best_accuracy": self.best_accuracy, "passes": self.passes}
        self.trace.append(entry)
        if self._bar is not None and not self._bar.disable and accuracy is not None:
            self._bar.set_postfix(accuracy=f"{accuracy:.3f}", best=f"{self.best_accuracy:.3f}", refresh=False)
        for callback in self._callbacks:
            callback(entry)

    def stop(self, reason: str) -> None:
        """Say in the trace why a search (or one phase of it) ended: the last record gets ``stopped``."""
        if not self.trace:  # stopped before scoring anything
            self.trace.append({"accuracy": None})
        last = self.trace[-1]
        last["stopped"] = f"{last['stopped']}; {reason}" if "stopped" in last else reason

    @property
    def nothing_left(self) -> bool:
        """True once a chip with accuracy 0 is found: no chip can do worse, so searching on is wasted."""
        return self.best_accuracy <= 0.0

    @property
    def remaining(self) -> int | None:
        """Passes the budget still allows (``None``: no cap)."""
        return None if self.budget is None else self.budget - self.passes

    def advance(self, passes: int = 1) -> None:
        """Pay for ``passes`` passes over the evaluation data *before* computing them (each forward over the
        whole set, with or without its backward, is one): counts them on the progress bar and in the trace
        (``passes`` of later records), or raises :class:`BudgetSpent` when they would exceed the budget."""
        if self.budget is not None and self.passes + passes > self.budget:
            raise BudgetSpent
        self.passes += passes
        self._bar.update(passes)

    def close(self) -> None:
        self._bar.close()

    def result(self) -> WorstCase:
        if self.best is None:  # stopped before the first candidate: the unperturbed chip
            self.best = self.problem.crossbar.zeros()
            self.best_accuracy = accuracy(self.problem.crossbar, self.problem.data, self.best)
        return WorstCase(self.best, self.best_accuracy, self.trace, self.interrupted, self.passes)


class Solver:
    """Base class of worst-case solvers; subclasses implement :meth:`search` (or :meth:`solve`).

    :meth:`solve` runs :meth:`search` under a :class:`Tracker` and turns Ctrl-C
    (``KeyboardInterrupt``) into a result marked ``interrupted`` that holds the
    best perturbation found so far.
    """

    Config: ClassVar[type[SolverConfig]] = SolverConfig
    #: One line for ``cimguard plugins`` and help texts.
    summary: ClassVar[str] = ""

    def __init__(self, config: SolverConfig | None = None) -> None:
        # Validated here, not in search(): a bad option must fail before any work.
        self.config = checked_config(self, config)
        #: The name reports and errors use: the registered name when built by name, else the class name.
        self.name: str = type(self).__name__
        #: Show a tqdm progress bar (passes over the evaluation data).
        self.progress: bool = False
        #: Called with every trace record; raising ``KeyboardInterrupt`` stops the search cleanly.
        self.callbacks: list[TraceCallback] = []

    @classmethod
    def from_options(cls, name: str | None = None, **options: Any) -> "Solver":
        """Build from option values (text is typed by the config); ``None`` means "not given".

        An option this solver's config does not have is an error naming its fields;
        a bad value is an error naming the solver.
        """
        label = name or cls.__name__
        values = config_values("solver", label, cls.Config, {k: v for k, v in options.items() if v is not None})
        try:
            solver = cls(cls.Config(**values))
        except CimguardError as exc:
            raise CimguardError(f"solver {label!r}: {exc}") from None
        solver.name = label
        return solver

    def with_budget(self, budget: int | None) -> "Solver":
        """This solver capped at ``budget`` passes (a copy, its config checked again; ``None``: itself)."""
        if budget is None:
            return self
        capped = copy.copy(self)
        try:
            capped.config = checked_config(self, dataclasses.replace(self.config, budget=budget))
        except CimguardError as exc:
            raise CimguardError(f"solver {self.name!r}: {exc}") from None
        return capped

    def total_passes(self, problem: AttackProblem) -> int | None:
        """Passes over the data the search plans to use, read-outs included, at most the budget (for the
        progress bar; ``None``: unknown).  Subclasses override :meth:`planned_passes`."""
        planned = self.planned_passes(problem)
        budget = self.config.budget or None
        if planned is None:
            return budget
        return planned if budget is None else min(planned, budget)

    def planned_passes(self, problem: AttackProblem) -> int | None:
        """Passes the search uses without a budget when nothing stops it early (``None``: unknown)."""
        return self.config.iterations

    def solve(self, problem: AttackProblem, generator: torch.Generator) -> WorstCase:
        tracker = Tracker(problem, self, self.total_passes(problem), f"{type(self).__name__} thg={problem.thg:g}")
        try:
            if all(not bool((bound > 0).any()) for bound in problem.bounds.values()):
                # An empty box (thg = 0): the unperturbed chip is the only candidate.
                zeros = problem.crossbar.zeros()
                tracker.advance()
                tracker.record(zeros, accuracy(problem.crossbar, problem.data, zeros), empty_box=True)
            else:
                self.search(problem, generator, tracker)
        except BudgetSpent:
            tracker.stop(f"used its budget of {tracker.budget} passes")
        except KeyboardInterrupt:
            tracker.interrupted = True
        finally:
            tracker.close()
        return tracker.result()

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        """Look for the worst chip, reporting every candidate to ``tracker.record``."""
        raise NotImplementedError


def verified(problem: AttackProblem, result: WorstCase, solver_name: str) -> WorstCase:
    """The core's independent check of a solver's answer.

    The perturbation must lie in the box (a violation is an error, never clipped),
    and the accuracy is recomputed from scratch; the recomputed value is returned.
    """
    try:
        check_within_bounds(result.perturbation, problem.bounds)
    except CimguardError as exc:
        raise CimguardError(f"solver {solver_name!r} returned an invalid worst case: {exc}") from None
    recomputed = accuracy(problem.crossbar, problem.data, result.perturbation)
    return dataclasses.replace(result, accuracy=recomputed)

