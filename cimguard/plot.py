"""Figures (matplotlib, Agg backend): every plot function builds a figure; ``save_figure`` writes it.

Each feature appends its own ``plot_*`` function below; they read the same result
objects the CLI tables and JSON reports use.
"""

from __future__ import annotations

from pathlib import Path

from cimguard.report import check_new_output, write_new_file


def new_figure(width: float = 6.4, height: float = 4.0):
    """A figure and axes on the non-interactive backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    return figure, figure.add_subplot()


def save_figure(figure, path: str | Path) -> Path:
    """Write ``figure`` to a new file (format from the suffix: .png, .pdf, .svg), atomically."""
    path = check_new_output(path)
    suffix = path.suffix.lower().lstrip(".") or "png"
    if suffix not in ("png", "pdf", "svg"):
        from cimguard.errors import CimguardError

        raise CimguardError(f"plot file {path} must end in .png, .pdf or .svg")
    return write_new_file(path, lambda tmp: figure.savefig(tmp, format=suffix, dpi=150))


# -- compare (cimguard compare): worst-case and Monte Carlo accuracy of several models over thg --------


def plot_comparison(rows, *, metric: str = "accuracy", title: str = ""):
    """``metric`` against thg, one colour per model: solid worst case per solver, dashed Monte Carlo 1st percentile.

    ``rows`` are :class:`cimguard.compare.ModelComparison` records; ``metric`` is
    ``accuracy``, or ``agreement`` in label-free mode.  Points not measured (Monte Carlo
    skipped, a solver interrupted) are left out.
    """
    figure, axes = new_figure()
    models = list(dict.fromkeys(row.model for row in rows))
    solvers = list(dict.fromkeys(solver for row in rows for solver in row.worst_case))
    markers = "osd^v<>"
    for index, model in enumerate(models):
        mine = sorted((row for row in rows if row.model == model), key=lambda row: row.size)
        colour = f"C{index % 10}"
        label = Path(model).name if model else "model"
        monte_carlo = [(row.size, row.monte_carlo_p1) for row in mine if row.monte_carlo_p1 is not None]
        if monte_carlo:
            axes.plot(*zip(*monte_carlo), linestyle="--", color=colour, label=f"{label}: MC 1st pct")
        for number, solver in enumerate(solvers):
            worst = [(row.size, row.worst_case[solver]) for row in mine if solver in row.worst_case]
            if worst:
                axes.plot(*zip(*worst), marker=markers[number % len(markers)], color=colour,
                          label=f"{label}: worst ({solver})")
    axes.set_xlabel("box size: write-verify threshold thg, or the device box's largest bound (levels)")
    axes.set_ylabel(metric)
    axes.set_ylim(0, 1.02)
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small")
    if title:
        axes.set_title(title, fontsize="medium")
    return figure


# -- evaluate --plot (cimguard evaluate): Monte Carlo accuracy histogram ------------------------------


def plot_monte_carlo(stats, clean_accuracy: float, path=None, *, metric: str = "accuracy", title: str = ""):
    """Histogram of chip accuracies (``stats``: a MonteCarloStats) with KPP percentiles and the clean chip.

    Writes a new file when ``path`` is given; returns the figure.
    """
    import numpy as np

    figure, axes = new_figure()
    values = np.asarray(stats.accuracies, dtype=float)
    # Accuracies are multiples of 1/len(data): centre one bin on each step, unless that needs > 40 bins.
    distinct = np.unique(values)
    step = float(np.diff(distinct).min()) if len(distinct) > 1 else 0.01
    count = int(round((distinct[-1] - distinct[0]) / step)) + 1
    edges = (
        np.linspace(distinct[0] - step / 2, distinct[-1] + step / 2, count + 1)
        if count <= 40
        else np.linspace(distinct[0], distinct[-1], 41)
    )
    axes.hist(values, bins=edges, color="C0", alpha=0.75, label=f"{stats.samples} chips (seed {stats.seed})")
    for index, (percentile, value) in enumerate(stats.percentiles.items()):
        axes.axvline(value, color=f"C{index + 1}", linestyle="--", label=f"KPP p{percentile}: {value:.4f}")
    axes.axvline(clean_accuracy, color="black", linewidth=2, label=f"clean chip: {clean_accuracy:.4f}")
    axes.set_xlabel(f"chip {metric}")
    axes.set_ylabel("chips")
    if title:
        axes.set_title(title, fontsize="medium")
    axes.grid(alpha=0.3)
    axes.legend(fontsize="small", loc="upper left")
    if path is not None:
        save_figure(figure, path)
    return figure


# -- worst-case sweeps (cimguard attack) ----------------------------------------------------------


def plot_attack_sweep(sweep, path=None, *, title: str = ""):
    """Accuracy vs write-verify threshold: clean, Monte Carlo mean and KPP band, each solver's worst case.

    ``sweep`` is a :class:`cimguard.sim.sweep.AttackSweep`; with ``path`` the figure is also written there.
    """
    figure, axes = new_figure()
    points = sorted(sweep.points, key=lambda point: point.size)
    thgs = [point.size for point in points]
    axes.plot(thgs, [point.clean for point in points], color="black", linestyle="--", label="clean chip", zorder=3)
    with_mc = [point for point in points if point.monte_carlo is not None]
    if with_mc:
        mc_thg = [point.size for point in with_mc]
        axes.plot(mc_thg, [point.monte_carlo.mean for point in with_mc], marker="o", color="tab:blue",
                  label=f"Monte Carlo mean ({with_mc[0].monte_carlo.samples} chips)")
        low = [point.monte_carlo.percentiles.get("1", point.monte_carlo.min) for point in with_mc]
        axes.fill_between(mc_thg, low, [point.monte_carlo.mean for point in with_mc], color="tab:blue", alpha=0.2,
                          label="KPP 1st percentile to mean")
    markers = "svD^<>p*h"
    colours = ("tab:red", "tab:orange", "tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
    for index, name in enumerate(sweep.solvers):
        solved = [point for point in points if name in point.runs]
        if solved:
            axes.plot([point.size for point in solved], [point.runs[name].accuracy for point in solved],
                      marker=markers[index % len(markers)], color=colours[index % len(colours)],
                      label=f"worst case ({name})")
    _shade_certified(axes, points)
    axes.set_xlabel("box size: write-verify threshold thg, or the device box's largest bound (levels)")
    axes.set_ylabel(sweep.metric)
    axes.set_ylim(-0.02, 1.02)
    axes.grid(True, alpha=0.3)
    figure.legend(loc="outside lower center", ncols=3, fontsize="small")
    axes.set_title(f"{sweep.metric.capitalize()} vs write-verify threshold" + (f"\n{title}" if title else "")
                   + (" (interrupted)" if sweep.interrupted else ""), fontsize="medium")
    if path is not None:
        save_figure(figure, path)
    return figure


def _shade_certified(axes, points) -> None:
    """The certified accuracy (``attack --certify``) and the bracket up to the lowest worst case found:
    the worst chip's true accuracy lies in the shaded band."""
    proved = [point for point in points if point.certified is not None]
    if not proved:
        return
    sizes = [point.size for point in proved]
    lower = [point.certified.accuracy for point in proved]
    # Without a solver run the bracket's top is the clean chip (any chip bounds the worst one from above).
    upper = [min([run.accuracy for run in point.runs.values()] + [point.clean]) for point in proved]
    axes.plot(sizes, lower, marker="^", color="tab:green", label=f"certified ({proved[0].certified.method})")
    axes.fill_between(sizes, lower, upper, color="tab:green", alpha=0.15, label="the worst chip lies here")


# -- any-time curves (cimguard attack --plot-passes, benchmarks/bench_solver_budget.py) ----------------


def plot_anytime_grid(panels, path=None, *, metric: str = "accuracy", title: str = ""):
    """Best ``metric`` so far against passes over the data, one panel per problem, one line per solver.

    ``panels`` maps a panel title to ``{solver: curve}``, a curve being a run's ``WorstCase.curve`` (the best
    accuracy after each pass; ``None`` before the first scored chip).  With ``path`` the figure is written.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.figure import Figure

    columns = min(2, len(panels)) or 1
    rows = max(1, -(-len(panels) // columns))
    figure = Figure(figsize=(5.2 * columns, 3.6 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, (panel, curves) in zip(grid.flat, panels.items()):
        for index, (solver, curve) in enumerate(curves.items()):
            points = [(at, value) for at, value in enumerate(curve, start=1) if value is not None]
            if points:  # styles and widths differ so that identical curves (pgd's start is flwc) both show
                axes.step(*zip(*points), where="post", color=f"C{index % 10}", label=solver,
                          linestyle=("-", "--", ":", "-.")[index % 4], linewidth=max(2.6 - 0.4 * index, 1.0))
        axes.set_xscale("log")
        axes.set_xlabel("passes (forward + backward over the evaluation set)")
        axes.set_ylabel(f"worst {metric} so far")
        axes.set_title(panel, fontsize="small")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    for axes in list(grid.flat)[len(panels):]:
        axes.set_visible(False)
    if title:
        figure.suptitle(title, fontsize="medium")
    if path is not None:
        save_figure(figure, path)
    return figure


def plot_anytime(sweep, path=None, *, title: str = ""):
    """:func:`plot_anytime_grid` of an :class:`~cimguard.sim.sweep.AttackSweep`: one panel per box."""
    panels = {f"box {point.label}": {name: run.worst.curve for name, run in point.runs.items()}
              for point in sorted(sweep.points, key=lambda point: point.size)}
    return plot_anytime_grid(panels, path, metric=sweep.metric, title=title)
