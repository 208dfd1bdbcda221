"""Several models through the same sweep: the numbers ``cimguard compare`` tables, plots and saves."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from cimguard.api import SolverChoice, build_setup, pick_solvers
from cimguard.errors import CimguardError
from cimguard.factories import create_device
from cimguard.report import text_table
from cimguard.sim.crossbar import CrossbarConfig
from cimguard.sim.device import Device
from cimguard.sim.sweep import AttackSweep, BoxChoice, attack_sweep


@dataclass
class ModelComparison(BoxChoice):
    """One model at one write-verify threshold: a row of the ``compare`` table."""

    model: str
    thg: float | None
    """The swept threshold; ``None``: the device's own box (``box_levels``)."""
    clean: float
    monte_carlo_mean: float | None
    """``None`` when Monte Carlo was skipped (``--samples 0``) or interrupted."""
    monte_carlo_p1: float | None
    worst_case: dict[str, float] = field(default_factory=dict)
    """Verified worst-case accuracy (agreement in label-free mode) by solver name."""
    box_levels: list[float] | None = None
    """The device's box per target level (level units) when ``thg`` is None."""
    certified: float | None = None
    """Certified accuracy in the same box (``compare --certify``); None when not asked for."""


@dataclass
class Comparison:
    """Every model's :class:`~cimguard.sim.sweep.AttackSweep` (the same sweep ``cimguard attack`` runs) and its rows."""

    metric: str
    """``accuracy``, or ``agreement`` with each model's clean chip in label-free mode."""
    solvers: list[str]
    """The solvers every model was attacked with, in table order."""
    sweeps: list[tuple[str, AttackSweep]]
    """``(model label, AttackSweep)`` in the order the models were given."""
    interrupted: bool = False
    """Ctrl-C stopped the comparison; later models (and thresholds) are missing."""
    setups: list[Any] = field(default_factory=list, repr=False)
    """The :class:`cimguard.api.Setup` of every model compared (for the report's provenance)."""

    @property
    def rows(self) -> list[ModelComparison]:
        """One :class:`ModelComparison` per model and thg, in sweep order."""
        rows = []
        for label, sweep in self.sweeps:
            for point in sweep.points:
                mc = point.monte_carlo
                rows.append(ModelComparison(
                    label, point.thg, point.clean, mc.mean if mc else None, mc.percentiles["1"] if mc else None,
                    {name: run.accuracy for name, run in point.runs.items()}, point.box_levels,
                    None if point.certified is None else point.certified.accuracy,
                ))
        return rows

    def to_dict(self) -> dict[str, Any]:
        """Plain data: the rows, and every model's full sweep record."""
        return {"metric": self.metric, "solvers": self.solvers, "interrupted": self.interrupted,
                "rows": [dataclasses.asdict(row) for row in self.rows],
                "sweeps": [{"model": label, "conversion_check": setup.conversion_record, **sweep.to_record()}
                           for (label, sweep), setup in zip(self.sweeps, self.setups)]}

    def table(self) -> str:
        """The side-by-side table ``cimguard compare`` prints."""
        return "\n".join(format_comparison(self.rows, self.solvers))

    def __str__(self) -> str:
        return self.table()


def compare_sweeps(
    models: Sequence[str | Path | None],
    thgs: Sequence[float | None],
    solvers: SolverChoice,
    *,
    data: str = "digits",
    device: str | Device = "gaussian",
    device_params: Mapping[str, Any] | None = None,
    device_file: str | None = None,
    weight_bits: int | None = None,
    label_free: bool = False,
    samples: int = 100,
    seed: int = 0,
    torch_device: str = "auto",
    max_samples: int | None = None,
    labels: Sequence[str] | None = None,
    verify: bool = True,
    budget: int | None = None,
    progress: bool = False,
    certify: str | None = None,
    output: str | None = None,
) -> Comparison:
    """Run :func:`cimguard.sim.sweep.attack_sweep` once per model, with the same data, device, thg values,
    solvers (names, built :class:`Solver` objects, or ``{name: Solver}``; each capped at ``budget`` passes
    when given) and seeds.

    Each model gets exactly the numbers ``cimguard attack`` would report for it (``certify``: with the
    certified accuracy of ``attack --certify``).  A
    Ctrl-C stops the comparison: the models done so far (and the interrupted one's
    partial sweep) are returned, marked interrupted.
    """
    if not thgs:
        raise CimguardError("give at least one thg value")
    chosen = pick_solvers(solvers, budget)  # unknown solvers and bad settings fail before any work
    if not isinstance(device, Device):
        device = create_device(device, device_params, device_file=device_file)
    labels = list(labels) if labels is not None else [str(m) for m in models]
    if len(labels) != len(models):
        raise CimguardError(f"give one label per model: {len(models)} models, {len(labels)} labels")
    comparison = Comparison("agreement" if label_free else "accuracy", list(chosen), [])
    for label, model in zip(labels, models):
        setup = build_setup(model, data, device, dict(device_params or {}), device_file,
                            CrossbarConfig(weight_bits=weight_bits), label_free=label_free, verify=verify,
                            torch_device=torch_device, max_samples=max_samples, output=output)
        sweep = attack_sweep(setup.crossbar, setup.data, list(thgs), chosen, samples=samples, seed=seed,
                             progress=progress, certify_method=certify)
        comparison.sweeps.append((label, sweep))
        comparison.setups.append(setup)
        if sweep.interrupted:
            comparison.interrupted = True
            break
    return comparison


def compare_models(models: Sequence[str | Path | None], thgs: Sequence[float], solvers: SolverChoice,
                   **kwargs: Any) -> list[ModelComparison]:
    """The table rows of :func:`compare_sweeps` (same arguments), for scripts that only need the numbers."""
    return compare_sweeps(models, thgs, solvers, **kwargs).rows


def format_comparison(rows: Sequence[ModelComparison], solvers: Sequence[str] | None = None) -> list[str]:
    """The side-by-side table, one line per model and threshold ("-": not measured)."""
    solvers = list(solvers) if solvers is not None else (list(rows[0].worst_case) if rows else [])

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    certified = any(r.certified is not None for r in rows)
    header = ["model", "thg", "clean", "MC mean", "MC p1"] + [f"worst {s}" for s in solvers] + \
        (["certified"] if certified else [])
    table = [[r.model, r.label, number(r.clean), number(r.monte_carlo_mean), number(r.monte_carlo_p1)]
             + [number(r.worst_case.get(s)) for s in solvers] + ([number(r.certified)] if certified else [])
             for r in rows]
    return text_table(header, table, left=1)
