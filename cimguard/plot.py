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
