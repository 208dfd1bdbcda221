"""Worst-case search: the problem, the result, the shared gradient step, and the core's check.

A solver looks for one perturbation ``ΔW`` (one chip: shared by every input)
inside the write-verify box ``|ΔW| <= bound`` that minimises accuracy.  Accuracy
is relaxed to the Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``, which
is negative exactly when a sample is misclassified.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import numpy as np
import torch

from cimguard.crossbar import Crossbar, Perturbation, check_within_bounds
from cimguard.errors import CimguardError
from cimguard.progress import progress_bar
from cimguard.options import checked_config, config_values
from cimguard import distributed
from cimguard.evaluate import EvalData, accuracy, local_part


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


@dataclass(frozen=True)
class SolverConfig:
    """Options every solver understands."""

    iterations: int = 100
    """Iteration budget (each iteration is one pass over the evaluation data)."""
    kappa: float = 0.0
    """Confidence margin κ of the Carlini–Wagner loss."""

    def validate(self) -> None:
        """Raise :class:`CimguardError` for values no search can use (subclasses extend it)."""
        if self.iterations < 0:
            raise CimguardError(f"iterations must be >= 0, got {self.iterations}")
        if not is_finite(self.kappa) or self.kappa < 0:
            raise CimguardError(f"kappa must be a finite number >= 0, got {self.kappa}")


def is_finite(value: Any) -> bool:
    """True for a real number that is neither NaN nor infinite (what every numeric option must be)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


TraceCallback = Callable[[dict[str, Any]], None]
"""Called with every trace record as it is made (progress, logging, tests)."""


class Tracker:
    """The trace and the best chip seen so far: what a solver returns, also when stopped early.

    Solvers report every candidate with :meth:`record`; the tracker keeps a copy of
    the best one, so a Ctrl-C at any moment still yields a feasible answer.
    """

    def __init__(self, problem: AttackProblem, solver: "Solver", total: int | None, desc: str) -> None:
        self.problem = problem
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
        entry = {"accuracy": accuracy, **fields, "best_accuracy": self.best_accuracy}
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

    def advance(self, passes: int = 1) -> None:
        """Count passes over the evaluation data on the progress bar."""
        self._bar.update(passes)

    def close(self) -> None:
        self._bar.close()

    def result(self) -> WorstCase:
        if self.best is None:  # stopped before the first candidate: the unperturbed chip
            self.best = self.problem.crossbar.zeros()
            self.best_accuracy = accuracy(self.problem.crossbar, self.problem.data, self.best)
        return WorstCase(self.best, self.best_accuracy, self.trace, self.interrupted)


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
            return cls(cls.Config(**values))
        except CimguardError as exc:
            raise CimguardError(f"solver {label!r}: {exc}") from None

    def total_passes(self, problem: AttackProblem) -> int | None:
        """Upper bound on passes over the data, for the progress bar (``None``: unknown)."""
        return self.config.iterations

    def solve(self, problem: AttackProblem, generator: torch.Generator) -> WorstCase:
        tracker = Tracker(problem, self, self.total_passes(problem), f"{type(self).__name__} thg={problem.thg:g}")
        try:
            if all(not bool((bound > 0).any()) for bound in problem.bounds.values()):
                # An empty box (thg = 0): the unperturbed chip is the only candidate.
                zeros = problem.crossbar.zeros()
                tracker.record(zeros, accuracy(problem.crossbar, problem.data, zeros), empty_box=True)
            else:
                self.search(problem, generator, tracker)
        except KeyboardInterrupt:
            tracker.interrupted = True
        finally:
            tracker.close()
        return tracker.result()

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        """Look for the worst chip, reporting every candidate to ``tracker.record``."""
        raise NotImplementedError


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``; negative means wrong."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(true - others.max(dim=1).values, min=-kappa)


def margin_gradient(
    crossbar: Crossbar, data: EvalData, perturbation: Perturbation, kappa: float = 0.0
) -> tuple[Perturbation, float]:
    """Gradient of the summed margin over all of ``data`` w.r.t. ``ΔW``, and the summed margin."""
    grads, total, _ = margin_gradient_with_accuracy(crossbar, data, perturbation, kappa)
    return grads, total


def margin_gradient_with_accuracy(
    crossbar: Crossbar, data: EvalData, perturbation: Perturbation, kappa: float = 0.0
) -> tuple[Perturbation, float, float]:
    """:func:`margin_gradient` plus the accuracy of the chip ``perturbation``.

    The accuracy is read off the logits the gradient pass computes anyway, so a
    solver that reports it every iteration pays no extra forward pass.  Under torchrun
    each rank takes its share of the data and the sums are all-reduced: every rank
    gets the whole-set gradient, margin and accuracy (see :mod:`cimguard.distributed`).
    """
    delta = {name: value.detach().requires_grad_(True) for name, value in perturbation.items()}
    total = 0.0
    correct = 0
    grads = {name: torch.zeros_like(value) for name, value in perturbation.items()}
    for x, y in local_part(data).batches():
        logits = crossbar.logits(x, delta)
        loss = margin_loss(logits, y, kappa).sum()
        batch_grads = torch.autograd.grad(loss, list(delta.values()))
        for name, grad in zip(delta, batch_grads):
            grads[name] += grad
        total += float(loss.detach())
        correct += int((logits.detach().argmax(dim=1) == y).sum())
    if distributed.active():
        *summed, sums = distributed.all_reduce_sum([*grads.values(), torch.tensor([total, correct], dtype=torch.float64)])
        grads = dict(zip(grads, summed))
        total, correct = float(sums[0]), int(sums[1])
    return grads, total, correct / len(data.labels)


def sign_step(perturbation: Perturbation, gradient: Perturbation, step: Perturbation | float) -> Perturbation:
    """One FGSM step down the margin: ``ΔW - η · sign(∇)`` (η per layer or scalar)."""
    return {
        name: value - (step[name] if isinstance(step, dict) else step) * torch.sign(gradient[name])
        for name, value in perturbation.items()
    }


def sign_descent(
    problem: AttackProblem,
    start: Perturbation,
    steps: int,
    step: Perturbation,
    kappa: float,
    tracker: Tracker,
    *,
    stop_at_bound: bool = False,
    label: str = "flwc",
    schedule: Callable[[int], float] | None = None,
) -> tuple[Perturbation, int]:
    """Projected sign-gradient descent on the summed margin; every iterate goes to ``tracker``.

    ``schedule(t)`` (optional) scales the step at iteration ``t``.  Returns the last
    iterate and the number of steps taken.  Iterate ``t`` is scored from the logits of the gradient pass at ``t``;
    the final iterate costs one extra forward pass.

    The descent stops early, and says why in the trace (``stopped``), when there is
    nothing left to find: the accuracy is 0 (every margin is negative: no chip can do
    worse) or the gradient vanished inside the box (every step would leave ΔW where it is,
    e.g. a label-free model whose margins are all clamped at ``-κ``).
    """
    delta = {name: value.clone() for name, value in start.items()}
    taken = 0
    stopped = f"{label}: used its {steps} steps"
    scored = False  # True when the last iterate's accuracy is already in the trace
    for t in range(steps):
        distance = linf_ratio(delta, problem.bounds)
        if stop_at_bound and distance >= 1.0 - 1e-6:
            stopped = f"{label}: reached the box (max |ΔW| = bound)"
            break
        grads, margin, acc = margin_gradient_with_accuracy(problem.crossbar, problem.data, delta, kappa)
        tracker.advance()
        tracker.record(delta, acc, phase=label, iteration=t, margin=margin, distance=distance)
        if acc <= 0.0:
            stopped, scored = f"{label}: accuracy 0 (every margin negative) after {t + 1} passes", True
            break
        if not any(bool(((grad != 0) & (problem.bounds[name] > 0)).any()) for name, grad in grads.items()):
            stopped, scored = f"{label}: the margin gradient vanished after {t + 1} passes", True
            break
        scale = 1.0 if schedule is None else schedule(t)
        with torch.no_grad():  # in place: this is sign_step + project without new full-size tensors
            for name, value in delta.items():
                value.addcmul_(torch.sign(grads[name]), step[name], value=-scale)
                torch.clamp(value, -problem.bounds[name], problem.bounds[name], out=value)
        taken += 1
    if not scored:
        final = accuracy(problem.crossbar, problem.data, delta)
        tracker.record(delta, final, phase=label, iteration="final", distance=linf_ratio(delta, problem.bounds))
    tracker.stop(stopped)
    return delta, taken


def flwc_step(problem: AttackProblem, k: float) -> Perturbation:
    """The F-LWC step ``η = bound / k`` per weight."""
    return {name: bound / k for name, bound in problem.bounds.items()}


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


# -- box geometry shared by the solvers -----------------------------------------------------------


def project(perturbation: Perturbation, bounds: Perturbation) -> Perturbation:
    """The nearest point of the box ``|ΔW| <= bound`` (what a solver does to stay feasible)."""
    return {name: torch.clamp(value, -bounds[name], bounds[name]) for name, value in perturbation.items()}


def linf_ratio(perturbation: Perturbation, bounds: Perturbation) -> float:
    """``max |ΔW| / bound`` over all weights: 1.0 means the box is reached (0-bound weights skipped)."""
    worst = 0.0
    with torch.no_grad():
        for name, value in perturbation.items():
            if not value.numel():
                continue
            # 0/0 (a weight with no box that did not move) is NaN -> 0; x/0 stays inf (a violation).
            ratio = value.abs().div_(bounds[name]).nan_to_num_(nan=0.0, posinf=float("inf"))
            worst = max(worst, float(ratio.max()))
    return worst


# -- running a solver through the core's check ------------------------------------------------------


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
        return self.worst.accuracy


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


def build_solver(name: str, options: Mapping[str, Any] | None = None) -> Solver:
    """Look up solver ``name`` and build it with ``options`` (validated: a bad value is a one-line error)."""
    from cimguard.plugins import registry

    return registry("solvers").get(name).from_options(name, **dict(options or {}))


def build_solvers(names: list[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Solver]:
    """Build (and so validate) every solver before any work starts."""
    return {name: build_solver(name, (options or {}).get(name)) for name in names}


def run_solver(
    solver: str | Solver,
    problem: AttackProblem,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    *,
    progress: bool = False,
    callbacks: tuple[TraceCallback, ...] = (),
) -> SolverRun:
    """Run ``solver`` (a registered name, or a :class:`Solver` object) and return its answer after the
    core's independent check.

    ``options`` configure a solver given by name; a :class:`Solver` object carries its own config.
    """
    if isinstance(solver, Solver):
        if options:
            raise CimguardError("run_solver: options configure a solver given by name; this Solver object has its config")
        name = _registered_name(solver)
        # A shallow copy: this run's progress flag and callbacks must not stick to the caller's object.
        solver = copy.copy(solver)
        solver.callbacks = list(solver.callbacks)
    else:
        name = solver
        solver = build_solver(name, options)
    solver.progress = progress
    solver.callbacks.extend(callbacks)
    start = time.perf_counter()
    worst = solver.solve(problem, problem.crossbar.generator(seed))
    seconds = time.perf_counter() - start
    if not isinstance(worst, WorstCase):
        raise CimguardError(f"solver {name!r} returned {type(worst).__name__}, not a WorstCase")
    checked = verified(problem, worst, name)
    return SolverRun(name, None if problem.device_box else problem.thg, checked, seconds, dataclasses.asdict(solver.config),
                     linf_ratio(checked.perturbation, problem.bounds))


def _registered_name(solver: Solver) -> str:
    """The name ``solver``'s class is registered under, else its class name (for reports and errors)."""
    from cimguard.plugins import registry

    solvers = registry("solvers")
    return next((name for name in solvers.names() if solvers.get(name) is type(solver)), type(solver).__name__)


# -- saved perturbations ------------------------------------------------------------------------------

_DELTA_PREFIX = "delta/"
_META_KEY = "metadata_json"
PERTURBATION_FORMAT = "cimguard-perturbation-1"


def save_perturbation(path: str | Path, perturbation: Perturbation, metadata: Mapping[str, Any]) -> Path:
    """Write ``ΔW`` per layer and JSON metadata to a new ``.npz`` file (never overwrites)."""
    from cimguard.report import to_jsonable, write_new_file

    path = Path(path)
    if path.suffix != ".npz":
        raise CimguardError(f"perturbation file {path} must end in .npz")
    arrays = {_DELTA_PREFIX + name: value.detach().cpu().numpy() for name, value in perturbation.items()}
    meta = json.dumps(to_jsonable({"format": PERTURBATION_FORMAT, **metadata}))
    arrays[_META_KEY] = np.array(meta)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object keeps numpy from appending another .npz
            np.savez_compressed(handle, **arrays)

    return write_new_file(path, write)


def load_perturbation(path: str | Path, crossbar: Crossbar | None = None) -> tuple[Perturbation, dict[str, Any]]:
    """Read a file written by :func:`save_perturbation`; with ``crossbar``, check it fits and move it there."""
    from cimguard.checks import check_perturbation_metadata, read_npz

    path = Path(path)
    archive = read_npz(path, "perturbation file")
    try:
        meta = json.loads(str(archive[_META_KEY]))
    except (KeyError, ValueError):
        raise CimguardError(f"{path} is not a cimguard perturbation file (not a readable .npz with metadata)") from None
    if not isinstance(meta, dict):
        raise CimguardError(f"{path} is not a cimguard perturbation file (its metadata is not a JSON object)")
    arrays = {key[len(_DELTA_PREFIX):]: value for key, value in archive.items() if key.startswith(_DELTA_PREFIX)}
    if meta.get("format") != PERTURBATION_FORMAT:
        raise CimguardError(f"{path} is not a cimguard perturbation file (format {meta.get('format')!r})")
    check_perturbation_metadata(meta, path)
    for name, value in arrays.items():
        if value.dtype.kind != "f":
            raise CimguardError(f"{path}: ΔW of layer {name} must be floating-point, got {value.dtype}")
    if crossbar is None:
        return {name: torch.from_numpy(value) for name, value in arrays.items()}, meta
    if set(arrays) != set(crossbar.layers):
        raise CimguardError(
            f"{path} perturbs layers {sorted(arrays)} but the model maps {sorted(crossbar.layers)}; is it the same model?"
        )
    perturbation = {}
    for name, value in arrays.items():
        nominal = crossbar.layers[name].nominal
        if tuple(value.shape) != tuple(nominal.shape):
            raise CimguardError(f"{path}: layer {name} has shape {tuple(value.shape)}, the model has {tuple(nominal.shape)}")
        perturbation[name] = torch.from_numpy(value).to(device=crossbar.torch_device, dtype=nominal.dtype)
    return perturbation, meta


# -- solver options from text -------------------------------------------------------------------------


def solver_option_names(name: str) -> set[str]:
    """The option (config field) names solver ``name`` understands."""
    from cimguard.plugins import registry

    return {f.name for f in dataclasses.fields(registry("solvers").get(name).Config)}


def coerce_solver_options(name: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Text values (``--solver-param k=20``) typed by solver ``name``'s config; an unknown field is an error."""
    from cimguard.plugins import registry

    return config_values("solver", name, registry("solvers").get(name).Config, raw)


# -- sweeps over the write-verify threshold -----------------------------------------------------------


class BoxChoice:
    """``label`` and ``size`` of a record whose ``thg`` is a swept threshold or None (the device's own box)."""

    thg: float | None
    box_levels: list[float] | None

    @property
    def label(self) -> str:
        """``0.03`` for a swept threshold, ``device`` for the device's own box."""
        return "device" if self.thg is None else f"{self.thg:g}"

    @property
    def size(self) -> float:
        """The box's size in level units: ``thg``, or the device box's largest per-level bound (plots' x axis)."""
        return max(self.box_levels or [0.0]) if self.thg is None else self.thg


@dataclass
class ThgPoint(BoxChoice):
    """Clean, Monte Carlo and worst-case figures at one write-verify threshold, or in the device's own box."""

    thg: float | None
    """The swept threshold (level units); ``None``: the device's own box (its ``deviation_bound``)."""
    clean: float
    monte_carlo: Any | None
    """:class:`cimguard.evaluate.MonteCarloStats` of chips drawn with this thg (None: skipped/interrupted)."""
    runs: dict[str, SolverRun] = field(default_factory=dict)
    box_levels: list[float] | None = None
    """The device's box per target level (lowest level first, level units) when ``thg`` is None."""


@dataclass
class AttackSweep:
    """Every solver at every thg on one model: what ``cimguard attack`` tables, plots and saves."""

    metric: str
    """``accuracy``, or ``agreement`` (with the clean model) in label-free mode."""
    solvers: list[str]
    points: list[ThgPoint]
    interrupted: bool = False

    def worst_run(self) -> SolverRun | None:
        """The lowest-accuracy run at the largest thg that has one."""
        for point in sorted(self.points, key=lambda p: p.size, reverse=True):
            if point.runs:
                return min(point.runs.values(), key=lambda run: run.accuracy)
        return None

    def to_record(self) -> dict[str, Any]:
        """The JSON form (perturbations left out; the trace of every run kept)."""
        points = []
        for point in self.points:
            runs = {}
            for name, run in point.runs.items():
                runs[name] = {
                    "accuracy": run.accuracy,
                    "interrupted": run.worst.interrupted,
                    "seconds": run.seconds,
                    "distance": run.distance,
                    "options": run.options,
                    "trace": run.worst.trace,
                }
            points.append({"thg": point.thg, "box": "device" if point.thg is None else "thg",
                           "box_levels": point.box_levels, "clean": point.clean,
                           "monte_carlo": point.monte_carlo, "worst_case": runs})
        return {"metric": self.metric, "solvers": self.solvers, "interrupted": self.interrupted, "points": points}


def crossbar_at(crossbar: Crossbar, thg: float) -> Crossbar:
    """The same mapping on the same device with write-verify threshold ``thg`` (for Monte Carlo)."""
    device = crossbar.device
    if device.config.thg == thg:
        return crossbar
    try:
        new_device = type(device)(dataclasses.replace(device.config, thg=thg))
    except TypeError as exc:
        raise CimguardError(f"device {type(device).__name__} cannot be rebuilt with thg={thg:g}: {exc}") from None
    return Crossbar(crossbar.imported, new_device, crossbar.config, source_weights=crossbar.source_weights)


def device_box_levels(device: Any) -> list[float]:
    """The device's own worst-case box per target level (lowest level first, level units)."""
    levels = torch.arange(device.config.levels, dtype=torch.float64)
    return [float(b) for b in device.level_bounds(levels)]


def attack_sweep(
    crossbar: Crossbar,
    data: EvalData,
    thgs: list[float | None],
    solvers: list[str],
    *,
    samples: int = 100,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool = False,
) -> AttackSweep:
    """Clean, Monte Carlo (``samples`` chips; 0 skips it) and every solver at every ``thg``.

    A ``thg`` of ``None`` is the device as configured: its own Monte Carlo chips and its own
    worst-case box (:meth:`Crossbar.bounds` without a threshold, per level where the device says so).

    A Ctrl-C stops the sweep: the interrupted solver's best chip so far is kept and
    the result is marked interrupted.
    """
    from cimguard.evaluate import monte_carlo

    build_solvers(list(solvers), options)  # a bad solver option fails here, before Monte Carlo
    clean = accuracy(crossbar, data)
    sweep = AttackSweep("agreement" if data.label_free else "accuracy", list(solvers), [])
    for thg in thgs:
        chip = crossbar if thg is None else crossbar_at(crossbar, thg)
        point = ThgPoint(thg, clean, None)
        if thg is None:
            point.box_levels = device_box_levels(crossbar.device)
        sweep.points.append(point)
        try:
            if samples > 0:
                point.monte_carlo = monte_carlo(chip, data, samples, seed, progress=progress)
        except KeyboardInterrupt:
            sweep.interrupted = True
            return sweep
        problem = make_problem(chip, data, thg)
        for name in solvers:
            run = run_solver(name, problem, seed, (options or {}).get(name), progress=progress)
            point.runs[name] = run
            if run.worst.interrupted:
                sweep.interrupted = True
                return sweep
    return sweep
