"""``cimguard harden`` (fine-tune a model against device variation, export ONNX) and ``cimguard compare``."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import click

from cimguard.cli_options import seed_option, setup_from_options, setup_options
from cimguard.errors import CimguardError

#: Solvers ``compare`` runs when ``--solvers`` is not given (those that are registered).
DEFAULT_COMPARE_SOLVERS: tuple[str, ...] = ("flwc", "pgd")


# -- harden -------------------------------------------------------------------------------------


@click.command()
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--trainer", "trainer_name", default="atrice", show_default=True, help="Hardening trainer (see `cimguard plugins`).")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="New ONNX file to write (never overwritten).")
@setup_options
@click.option("--thg", type=click.FloatRange(min=0), default=None, help="Write-verify threshold in level units (default: the device's).")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Training epochs (default: the trainer's).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Mini-batch size.")
@click.option("--alpha", type=click.FloatRange(min=0), default=None, help="atrice: weight of the adversarial loss.")
@click.option("--sigma", type=click.FloatRange(min=0), default=None, help="trice/atrice: sigma of the RCG noise (level units).")
@click.option("--threshold", type=float, default=None, help="trice/atrice: RCG censoring threshold (units of sigma).")
@click.option("--eta-train", type=click.FloatRange(min=0), default=None, help="atrice: adversarial step in level units (default: 1.5 x thg).")
@seed_option
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None, help="Checkpoint file, rewritten after every epoch.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run saved in --checkpoint.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write a training report to a new JSON file.")
def harden(model, trainer_name, output, data, device_name, device_params, device_file, weight_bits, label_free, verify,
           torch_device, max_samples, thg, epochs, lr, batch_size, alpha, sigma, threshold, eta_train, seed,
           checkpoint, resume, json_path) -> None:
    """Fine-tune MODEL (default: the embedded model) to resist device variation; write the result to -o.

    Only the crossbar weights change: the output is the input's ONNX graph with new
    weight values, checked in onnxruntime before it is written.
    """
    from cimguard.data import fit_to_model
    from cimguard.evaluate import accuracy
    from cimguard.export import export_onnx
    from cimguard.plugins import registry
    from cimguard.report import check_new_output, write_json

    if label_free:
        raise CimguardError("harden trains on labelled data; --label-free does not apply")
    trainer_class = registry("trainers").get(trainer_name)
    trainer = trainer_class.from_options(
        trainer_name, epochs=epochs, lr=lr, batch_size=batch_size, alpha=alpha, sigma=sigma, threshold=threshold,
        eta_train=eta_train, seed=seed,
    )
    # Every refusal happens before any training starts.
    from cimguard.pipeline import default_model

    inputs = (model if model else default_model(),)
    check_new_output(output, inputs=inputs)
    if json_path:
        check_new_output(json_path, inputs=inputs)
        if Path(json_path).resolve() == Path(output).resolve():
            raise CimguardError("--json and -o name the same file")
    if checkpoint is not None:
        _check_checkpoint(checkpoint, resume, inputs + (output,))
    elif resume:
        raise CimguardError("--resume needs --checkpoint PATH (the checkpoint of the interrupted run)")

    setup = setup_from_options(model, data, device_name, device_params, device_file, weight_bits, False, verify,
                               torch_device, max_samples, thg)
    x_train, y_train = setup.dataset.require_training()
    x_train = fit_to_model(x_train, setup.imported.input, what="training data")
    progress = sys.stderr.isatty()
    try:
        result = trainer.fit(setup.crossbar, x_train, y_train, checkpoint=checkpoint, resume=resume, progress=progress)
    except KeyboardInterrupt:
        if checkpoint is not None and Path(checkpoint).exists():
            click.echo(f"Training stopped; rerun the same command with --resume to continue from {checkpoint}.", err=True)
        raise
    hardened = setup.crossbar.remapped(result.weights)
    export_onnx(setup.imported, result.weights, output, check_inputs=setup.data.x[:256])

    before, after = accuracy(setup.crossbar, setup.data), accuracy(hardened, setup.data)
    click.echo(f"model    {setup.model_path}")
    click.echo(f"trainer  {trainer_name} ({result.config['epochs']} epochs, seed {result.config['seed']})"
               + (f", resumed after epoch {result.resumed_from_epoch}" if result.resumed_from_epoch is not None else ""))
    for key, value in result.chosen.items():
        if key != "search":
            click.echo(f"         {key} = {value:g}" if isinstance(value, float) else f"         {key} = {value}")
    click.echo(f"clean chip accuracy  {before:.4f} -> {after:.4f} ({setup.dataset.name} evaluation split)")
    click.echo(f"wrote {output}")
    if json_path:
        write_json(json_path, {"setup": setup.describe(), "trainer": trainer_name, "config": result.config,
                               "chosen": result.chosen, "history": result.history,
                               "clean_accuracy_before": before, "clean_accuracy_after": after, "output": output})
        click.echo(f"wrote {json_path}")


def _check_checkpoint(checkpoint: str, resume: bool, others: tuple[str, ...]) -> None:
    path = Path(checkpoint)
    for other in others:
        if Path(other).resolve() == path.resolve():
            raise CimguardError(f"--checkpoint must be a file of its own, not {other}")
    if resume:
        if not path.is_file():
            raise CimguardError(f"cannot resume: checkpoint {path} does not exist")
    elif path.exists():
        raise CimguardError(f"checkpoint {path} already exists; pass --resume to continue from it or choose a new path")
    elif not path.parent.exists():
        raise CimguardError(f"checkpoint folder {path.parent} does not exist")


# -- compare ------------------------------------------------------------------------------------


@dataclass
class ModelComparison:
    """One model evaluated at one write-verify threshold."""

    model: str
    thg: float
    clean: float
    monte_carlo_mean: float
    monte_carlo_p1: float
    worst_case: dict[str, float] = field(default_factory=dict)
    """Verified worst-case accuracy by solver name."""


def compare_models(
    models: Sequence[str | Path | None],
    thgs: Sequence[float],
    solvers: Sequence[str],
    *,
    data: str = "digits",
    device: str = "gaussian",
    device_params: dict[str, Any] | None = None,
    device_file: str | None = None,
    weight_bits: int = 8,
    samples: int = 100,
    seed: int = 0,
    solver_options: dict[str, Any] | None = None,
    torch_device: str = "auto",
    max_samples: int | None = None,
    labels: Sequence[str] | None = None,
    verify: bool = False,
    progress: bool = False,
) -> list[ModelComparison]:
    """Evaluate every model with the same data, device, thresholds, solvers and seeds."""
    import dataclasses

    from cimguard.crossbar import Crossbar, CrossbarConfig
    from cimguard.device import create_device
    from cimguard.evaluate import accuracy, monte_carlo
    from cimguard.pipeline import build_setup
    from cimguard.plugins import registry
    from cimguard.solve import make_problem, run_solver

    for name in solvers:
        registry("solvers").get(name)
    if not thgs:
        raise CimguardError("give at least one thg value")
    labels = list(labels) if labels is not None else [str(m) for m in models]
    rows: list[ModelComparison] = []
    for label, model in zip(labels, models):
        setup = build_setup(model, data, device, dict(device_params or {}), device_file,
                            CrossbarConfig(weight_bits=weight_bits), verify=verify, torch_device=torch_device,
                            max_samples=max_samples)
        clean = accuracy(setup.crossbar, setup.data)
        for thg in thgs:
            # The same device at this threshold: Monte Carlo chips are truncated at thg, the solvers' box is thg.
            device_at = create_device(device, dict(device_params or {}) | {"thg": thg}, device_file=device_file)
            crossbar = Crossbar(setup.imported, device_at, dataclasses.replace(setup.crossbar.config))
            stats = monte_carlo(crossbar, setup.data, samples, seed, progress=progress)
            row = ModelComparison(label, thg, clean, stats.mean, stats.percentiles["1"])
            for solver in solvers:
                run = run_solver(solver, make_problem(crossbar, setup.data, thg), seed, solver_options, progress=progress)
                row.worst_case[solver] = run.accuracy
            rows.append(row)
    return rows


def format_comparison(rows: Sequence[ModelComparison]) -> list[str]:
    """The side-by-side table, one line per model and threshold."""
    solvers = list(rows[0].worst_case) if rows else []
    headers = ["model", "thg", "clean", "MC mean", "MC p1"] + [f"worst {s}" for s in solvers]
    table = [[r.model, f"{r.thg:g}", f"{r.clean:.4f}", f"{r.monte_carlo_mean:.4f}", f"{r.monte_carlo_p1:.4f}"]
             + [f"{r.worst_case[s]:.4f}" for s in solvers] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for line in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return lines


def _parse_thgs(text: str) -> list[float]:
    values = []
    for part in text.split(","):
        try:
            value = float(part)
        except ValueError:
            raise CimguardError(f"--thg expects a comma-separated list of numbers, got {part.strip()!r}") from None
        if not 0 <= value < float("inf"):
            raise CimguardError(f"--thg values must be finite and >= 0, got {value}")
        values.append(value)
    return values


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(dir_okay=False))
@setup_options
@click.option("--thg", "thg_text", default="0.01,0.02,0.03", show_default=True, help="Comma-separated write-verify thresholds.")
@click.option("--solvers", "solver_text", default=None, help="Comma-separated solvers (default: flwc,pgd where registered).")
@click.option("--iterations", type=click.IntRange(min=1), default=None, help="Solver iteration budget (default: each solver's).")
@click.option("--samples", type=click.IntRange(min=1), default=100, show_default=True, help="Monte Carlo chips per threshold.")
@seed_option
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default=None, help="Write a figure (.png/.pdf/.svg).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, help="Write the results to a new JSON file.")
def compare(models, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
            max_samples, thg_text, solver_text, iterations, samples, seed, plot_path, json_path) -> None:
    """Evaluate MODELS side by side: clean, Monte Carlo and worst-case accuracy at each thg."""
    import dataclasses

    from cimguard.device import parse_param_overrides
    from cimguard.plugins import registry
    from cimguard.report import check_new_output, write_json

    if label_free:
        raise CimguardError("compare measures accuracy against labels; --label-free does not apply")
    thgs = _parse_thgs(thg_text)
    if solver_text is None:
        known = set(registry("solvers").names())
        solvers = [s for s in DEFAULT_COMPARE_SOLVERS if s in known]
    else:
        solvers = [s.strip() for s in solver_text.split(",") if s.strip()]
        for name in solvers:
            registry("solvers").get(name)
    outputs = [p for p in (plot_path, json_path) if p]
    if len({str(Path(p).resolve()) for p in outputs}) < len(outputs):
        raise CimguardError("--plot and --json name the same file")
    for path in outputs:
        check_new_output(path, inputs=tuple(models))
    if plot_path and Path(plot_path).suffix.lower() not in (".png", ".pdf", ".svg"):
        raise CimguardError(f"plot file {plot_path} must end in .png, .pdf or .svg")
    params = dict(parse_param_overrides(device_params))
    rows = compare_models(
        list(models), thgs, solvers, data=data, device=device_name, device_params=params, device_file=device_file,
        weight_bits=weight_bits, samples=samples, seed=seed,
        solver_options={"iterations": iterations} if iterations else None, torch_device=torch_device,
        max_samples=max_samples, verify=verify, progress=sys.stderr.isatty(),
    )
    click.echo(f"device {device_name}, {samples} Monte Carlo chips, seed {seed}; solvers: {', '.join(solvers) or 'none'}")
    for line in format_comparison(rows):
        click.echo(line)
    if plot_path:
        from cimguard.plot import plot_comparison, save_figure

        save_figure(plot_comparison(rows), plot_path)
        click.echo(f"wrote {plot_path}")
    if json_path:
        write_json(json_path, {"device": device_name, "device_params": params, "samples": samples, "seed": seed,
                               "solvers": solvers, "thg": thgs, "rows": [dataclasses.asdict(r) for r in rows]})
        click.echo(f"wrote {json_path}")


COMMANDS = (harden, compare)
