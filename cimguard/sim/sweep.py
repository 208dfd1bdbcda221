"""Sweeps: clean, Monte Carlo and every solver's worst case at each write-verify threshold, or in the
device's own box (what ``cimguard attack`` tables, plots and saves)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cimguard.errors import CimguardError
from cimguard.options import device_values
from cimguard.report import text_table
from cimguard.sim.certify import Certificate, certify, check_certifiable
from cimguard.sim.crossbar import Crossbar
from cimguard.sim.device import Device, device_box_levels
from cimguard.sim.evaluate import EvalData, accuracy, chip_count, monte_carlo
from cimguard.sim.solve import Solver
from cimguard.sim.worst_case import SolverRun, make_problem, run_checked


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
    """:class:`cimguard.sim.evaluate.MonteCarloStats` of chips drawn with this thg (None: skipped/interrupted)."""
    runs: dict[str, SolverRun] = field(default_factory=dict)
    box_levels: list[float] | None = None
    """The device's box per target level (lowest level first, level units) when ``thg`` is None."""
    certified: Certificate | None = None
    """The certified accuracy in the same box (``attack --certify``); None when not asked for."""


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
        return {"metric": self.metric, "solvers": self.solvers, "interrupted": self.interrupted,
                "points": [point_record(point) for point in self.points]}

    def to_dict(self) -> dict[str, Any]:
        """Plain data (:meth:`to_record`), for notebooks and ``json``."""
        return self.to_record()

    def table(self) -> str:
        """One row per thg: clean, Monte Carlo mean and KPP, each solver's worst case (what ``attack`` prints)."""
        return points_table(f"{self.metric} per write-verify threshold (thg, level units)", "thg",
                            [point.label for point in self.points], self.points, self.solvers)

    def __str__(self) -> str:
        return self.table()


@dataclass
class DeviceSweep:
    """One device parameter swept (retention time ``t``, ``sigma``, ...): one row per value, each the
    same attack in the same box (the device's own, or a fixed ``thg``)."""

    parameter: str
    """The device config field swept."""
    values: list[Any]
    """Its values, in the order given (typed by the config)."""
    thg: float | None
    """The box of every row: ``None`` for the device's own box at each value, else this threshold."""
    metric: str
    solvers: list[str]
    points: list[ThgPoint]
    """One per value measured (fewer than ``values`` when interrupted)."""
    interrupted: bool = False

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the parameter, and one record per value (as :meth:`AttackSweep.to_record` has per thg)."""
        return {"parameter": self.parameter, "thg": self.thg, "metric": self.metric, "solvers": self.solvers,
                "interrupted": self.interrupted,
                "points": [{self.parameter: value, **point_record(point)}
                           for value, point in zip(self.values, self.points)]}

    def table(self) -> str:
        """One row per value of the parameter."""
        box = "the device's own box" if self.thg is None else f"thg {self.thg:g}"
        labels = [f"{value:g}" if isinstance(value, float) else str(value) for value in self.values[:len(self.points)]]
        return points_table(f"{self.metric} per {self.parameter} ({box})", self.parameter, labels, self.points,
                            self.solvers)

    def __str__(self) -> str:
        return self.table()


def point_record(point: ThgPoint) -> dict[str, Any]:
    """The JSON form of one point (perturbations left out; the trace of every run kept)."""
    # The point already says which box, and the key which solver.
    runs = {name: {key: value for key, value in run.to_dict().items() if key not in ("solver", "thg", "box")}
            for name, run in point.runs.items()}
    record = {"thg": point.thg, "box": "device" if point.thg is None else "thg", "box_levels": point.box_levels,
              "clean": point.clean, "monte_carlo": point.monte_carlo, "worst_case": runs}
    if point.certified is not None:
        record["certified"] = point.certified.to_dict()
    return record


def points_table(title: str, column: str, labels: list[str], points: list[ThgPoint], solvers: list[str]) -> str:
    """``title``, then one right-aligned row per point: ``column`` label, clean, Monte Carlo, worst cases."""
    header = [column, "clean", "MC mean", "KPP 1%", "KPP 10%"] + [f"worst {name}" for name in solvers]
    certified = any(point.certified is not None for point in points)
    header += ["certified"] if certified else []
    rows = []
    for label, point in zip(labels, points):
        mc = point.monte_carlo
        row = [label, f"{point.clean:.4f}"]
        row += [f"{mc.mean:.4f}", f"{mc.percentiles['1']:.4f}", f"{mc.percentiles['10']:.4f}"] if mc else ["-"] * 3
        for name in solvers:
            run = point.runs.get(name)
            row.append("-" if run is None else f"{run.accuracy:.4f}" + ("*" if run.worst.interrupted else ""))
        if certified:
            row.append("-" if point.certified is None else f"{point.certified.accuracy:.4f}")
        rows.append(row)
    lines = [title, *text_table(header, rows)]
    methods = sorted({point.certified.method for point in points if point.certified is not None})
    if methods:
        lines.append(f"certified ({', '.join(methods)}): proved for every chip in the box, a lower bound on the "
                     "worst chip; the worst cases found are upper bounds")
    if any(run.worst.interrupted for point in points for run in point.runs.values()):
        lines.append("* interrupted: best chip found before Ctrl-C")
    return "\n".join(lines)


def device_with(device: Device, **changes: Any) -> Device:
    """The same kind of device with some config fields changed (text or typed values, typed by the config;
    the new device checks them), keeping its name and source.  No change gives back ``device`` itself."""
    typed = device_values(type(device.config), changes)
    if all(getattr(device.config, name) == value for name, value in typed.items()):
        return device
    try:
        changed = type(device)(dataclasses.replace(device.config, **typed))
    except TypeError as exc:
        settings = ", ".join(f"{name}={value}" for name, value in typed.items())
        raise CimguardError(f"device {type(device).__name__} cannot be rebuilt with {settings}: {exc}") from None
    changed.name = device.name
    if getattr(device, "source", ""):
        changed.source = device.source
    return changed


def crossbar_with(crossbar: Crossbar, device: Device) -> Crossbar:
    """The same model and weights mapped onto ``device`` (``crossbar`` itself when it is the same device)."""
    if device is crossbar.device:
        return crossbar
    return Crossbar(crossbar.imported, device, crossbar.config, source_weights=crossbar.source_weights)


def crossbar_at(crossbar: Crossbar, thg: float) -> Crossbar:
    """The same mapping on the same device with write-verify threshold ``thg`` (for Monte Carlo)."""
    return crossbar_with(crossbar, device_with(crossbar.device, thg=thg))


def attack_sweep(
    crossbar: Crossbar,
    data: EvalData,
    thgs: list[float | None],
    solvers: Mapping[str, Solver],
    *,
    samples: int = 100,
    seed: int = 0,
    progress: bool = False,
    certify_method: str | None = None,
) -> AttackSweep:
    """Clean, Monte Carlo (``samples`` chips; 0 skips it) and every solver (``{name: Solver}``, built and
    so validated before the sweep) at every ``thg``; with ``certify_method`` (``interval``, ``crown``, ``joint``) also
    the certified accuracy in each box (:func:`cimguard.sim.certify.certify`).

    A ``thg`` of ``None`` is the device as configured: its own Monte Carlo chips and its own
    worst-case box (:meth:`Crossbar.bounds` without a threshold, per level where the device says so).

    A Ctrl-C stops the sweep: the interrupted solver's best chip so far is kept and
    the result is marked interrupted.
    """
    samples = chip_count(samples)
    if certify_method is not None:
        check_certifiable(crossbar, certify_method)
    clean = accuracy(crossbar, data)
    sweep = AttackSweep("agreement" if data.label_free else "accuracy", list(solvers), [])
    for thg in thgs:
        chip = crossbar if thg is None else crossbar_at(crossbar, thg)
        point = ThgPoint(thg, clean, None)
        if thg is None:
            point.box_levels = device_box_levels(crossbar.device)
        sweep.points.append(point)
        problem = make_problem(chip, data, thg)  # before Monte Carlo: a box that cannot be is refused first
        try:
            if samples > 0:
                point.monte_carlo = monte_carlo(chip, data, samples, seed, progress=progress)
        except KeyboardInterrupt:
            sweep.interrupted = True
            return sweep
        for name, solver in solvers.items():
            run = run_checked(solver, problem, seed, progress=progress)
            point.runs[name] = run
            if run.worst.interrupted:
                sweep.interrupted = True
                return sweep
        if certify_method is not None:
            point.certified = certify(chip, data, thg, certify_method, progress=progress)
    return sweep


def device_sweep(
    crossbar: Crossbar,
    data: EvalData,
    parameter: str,
    values: Sequence[Any],
    solvers: Mapping[str, Solver],
    *,
    thg: float | None = None,
    samples: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> DeviceSweep:
    """:func:`attack_sweep` in one box (``thg``; ``None``: the device's own) for every value of the device
    parameter ``parameter``: one row per value, each with the same seeds.

    Every value is checked (a device is built with it) before any work; a Ctrl-C keeps the
    rows measured so far, marked interrupted.
    """
    if not values:
        raise CimguardError(f"give at least one value of {parameter}")
    if parameter == "thg" and thg is not None:
        raise CimguardError("a sweep over thg sets the write-verify threshold itself; leave thg=None "
                            "(or sweep thresholds with attack_sweep)")
    # Every value checked (a device built with it) before any work; one crossbar at a time after that.
    devices = [device_with(crossbar.device, **{parameter: value}) for value in values]
    typed = [getattr(device.config, parameter) for device in devices]
    sweep = DeviceSweep(parameter, typed, thg, "agreement" if data.label_free else "accuracy", list(solvers), [])
    for device in devices:
        chip = crossbar_with(crossbar, device)
        one = attack_sweep(chip, data, [thg], solvers, samples=samples, seed=seed, progress=progress)
        sweep.points.extend(one.points)
        if one.interrupted:
            sweep.interrupted = True
            break
    return sweep
