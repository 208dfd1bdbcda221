"""``cimguard harden`` (fine-tune a model against device variation, export ONNX) and ``cimguard compare``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import click

from cimguard.cli_attack import check_thg_sweep, parse_thg_list, solver_options, solvers_from_options, sweep_options
from cimguard.cli_options import MAX_COUNT, THG, seed_option, setup_from_options, setup_options, training_setup_options
from cimguard.distributed import is_main
from cimguard.errors import CimguardError
from cimguard.solve import BoxChoice

if TYPE_CHECKING:
    from cimguard.solve import AttackSweep

# -- harden -------------------------------------------------------------------------------------


@click.command()
@click.argument("model", required=False, type=click.Path())
@click.option("--trainer", "trainer_name", default="atrice", show_default=True, help="Hardening trainer (see `cimguard plugins`).")
@click.option("-o", "--output", required=True, type=click.Path(), help="New .onnx file to write (never overwritten).")
@training_setup_options
@click.option("--thg", type=THG, default=None, help="Write-verify threshold in level units (default: the device's).")
@click.option("--epochs", type=click.IntRange(min=1, max=MAX_COUNT), default=None, help="Training epochs (default: the trainer's).")
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Adam learning rate.")
@click.option("--batch-size", type=click.IntRange(min=1, max=2**31), default=None, help="Mini-batch size.")
@click.option("--alpha", type=click.FloatRange(min=0), default=None, help="atrice: weight of the adversarial loss.")
@click.option("--sigma", type=click.FloatRange(min=0), default=None, help="trice/atrice: sigma of the RCG noise (level units).")
@click.option("--threshold", type=float, default=None, help="trice/atrice: RCG censoring threshold (units of sigma; inf: none).")
@click.option("--eta-train", type=click.FloatRange(min=0), default=None, help="atrice: adversarial step in level units (default: 1.5 x thg).")
@click.option("--trainer-param", "trainer_params", multiple=True, metavar="FIELD=VALUE",
              help="Set one field of the trainer's config, e.g. sigma=0.2 (repeatable; any trainer, third-party included).")
@seed_option
@click.option("--checkpoint", type=click.Path(), default=None, help="Checkpoint file, rewritten after every epoch.")
@click.option("--resume", is_flag=True, help="Continue the interrupted run saved in --checkpoint.")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write a training report to a new JSON file.")
def harden(model, trainer_name, output, data, device_name, device_params, device_file, weight_bits, verify,
           torch_device, max_samples, thg, epochs, lr, batch_size, alpha, sigma, threshold, eta_train, trainer_params,
           seed, checkpoint, resume, json_path) -> None:
    """Fine-tune MODEL (default: the embedded model) to resist device variation; write the result to -o.

    Only the crossbar weights change: the output is the input's ONNX graph with new
    weight values, checked in onnxruntime before it is written.
    """
    from cimguard.data import fit_to_model
    from cimguard.evaluate import accuracy
    from cimguard.export import export_onnx
    from cimguard.pipeline import default_model
    from cimguard.plugins import registry
    from cimguard.report import check_outputs, write_json
    from cimguard.train import check_checkpoint

    trainer_class = registry("trainers").get(trainer_name)
    trainer = trainer_class.from_options(trainer_name, **trainer_options(click.get_current_context(), trainer_params))
    # Every refusal happens before any training starts.  The checkpoint rules are the
    # trainer's own (checked again by Trainer.fit); with --resume the checkpoint is an input.
    check_checkpoint(checkpoint, resume)
    inputs = (model if model else default_model(),) + ((checkpoint,) if resume else ())
    check_outputs({"-o": output, "--json": json_path, "--checkpoint": None if resume else checkpoint},
                  suffixes={"-o": (".onnx",)}, inputs=(*inputs, data, device_file))

    setup = setup_from_options(model, data, device_name, device_params, device_file, weight_bits, False, verify,
                               torch_device, max_samples, thg)
    x_train, y_train = setup.dataset.require_training()
    x_train = fit_to_model(x_train, setup.imported.input, what="training data")
    progress = True  # a bar on a terminal, a line every few seconds in a log (cimguard.progress)
    # The header first: a long run under a pipe shows what it is doing before any work.
    click.echo(f"model    {setup.model_path}")
    click.echo(f"data     {setup.data_label}; {len(x_train)} training samples")
    click.echo(f"device   {setup.device_summary}, "
               f"{setup.crossbar.num_weights} weights in {len(setup.crossbar.layers)} layers")
    try:
        result = trainer.fit(setup.crossbar, x_train, y_train, checkpoint=checkpoint, resume=resume, progress=progress)
    except KeyboardInterrupt:
        if checkpoint is not None and Path(checkpoint).exists():
            click.echo(f"Training stopped; rerun the same command with --resume to continue from {checkpoint}.", err=True)
        raise
    from cimguard.checks import check_finite

    for name, weight in result.weights.items():
        check_finite(weight, f"training diverged (lower --lr or the noise): weight {name}")
    hardened = setup.crossbar.remapped(result.weights)
    export_onnx(setup.imported, result.weights, output, check_inputs=setup.data.x[:256])

    before, after = accuracy(setup.crossbar, setup.data), accuracy(hardened, setup.data)
    click.echo(f"trainer  {trainer_name} ({result.config['epochs']} epochs, seed {result.config['seed']})"
               + (f", resumed after epoch {result.resumed_from_epoch}" if result.resumed_from_epoch is not None else ""))
    for key, value in result.chosen.items():
        if key != "search":
            click.echo(f"         {key} = {value:g}" if isinstance(value, float) else f"         {key} = {value}")
    click.echo(f"clean chip accuracy  {before:.4f} -> {after:.4f} ({setup.dataset.name} evaluation split)")
    click.echo(f"wrote {output}")
    if json_path and is_main():  # torchrun: -o and the report live on rank 0's host
        from cimguard.provenance import file_sha256, provenance

        write_json(json_path, {"provenance": provenance(setup, metric="accuracy"), "setup": setup.describe(),
                               "metric": "accuracy", "trainer": trainer_name, "config": result.config,
                               "chosen": result.chosen, "history": result.history,
                               "clean_accuracy_before": before, "clean_accuracy_after": after,
                               "output": {"path": str(Path(output).resolve()), "sha256": file_sha256(output)}})
        click.echo(f"wrote {json_path}")


#: The trainer config fields that have an option of their own, and that option.
TRAINER_SHORTHANDS: dict[str, str] = {
    "epochs": "--epochs", "lr": "--lr", "batch_size": "--batch-size", "alpha": "--alpha", "sigma": "--sigma",
    "threshold": "--threshold", "eta_train": "--eta-train", "seed": "--seed",
}


def trainer_options(ctx: click.Context, trainer_params: Sequence[str]) -> dict[str, Any]:
    """The trainer's options: the shorthand options' values, then ``--trainer-param FIELD=VALUE`` (text,
    typed by the trainer's config when it is built).

    A field set both by its shorthand and by ``--trainer-param`` is refused rather than one silently winning.
    """
    from click.core import ParameterSource

    from cimguard.device import parse_param_overrides

    given = parse_param_overrides(trainer_params, option="--trainer-param")
    options: dict[str, Any] = {}
    for field_name, flag in TRAINER_SHORTHANDS.items():
        explicit = ctx.get_parameter_source(field_name) not in (None, ParameterSource.DEFAULT)
        if explicit and field_name in given:
            raise CimguardError(f"{flag} and --trainer-param {field_name}={given[field_name]} both set {field_name}; give one")
        options[field_name] = ctx.params[field_name]
    return {**options, **given}


# -- compare ------------------------------------------------------------------------------------


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


@dataclass
class Comparison:
    """Every model's :class:`~cimguard.solve.AttackSweep` (the same sweep ``cimguard attack`` runs) and its rows."""

    metric: str
    """``accuracy``, or ``agreement`` with each model's clean chip in label-free mode."""
    solvers: list[str]
    """The solvers every model was attacked with, in table order."""
    sweeps: list[tuple[str, AttackSweep]]
    """``(model label, AttackSweep)`` in the order the models were given."""
    interrupted: bool = False
    """Ctrl-C stopped the comparison; later models (and thresholds) are missing."""
    setups: list[Any] = field(default_factory=list, repr=False)
    """The :class:`cimguard.pipeline.Setup` of every model compared (for the report's provenance)."""

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
                ))
        return rows


def compare_sweeps(
    models: Sequence[str | Path | None],
    thgs: Sequence[float | None],
    solvers: Sequence[str],
    *,
    data: str = "digits",
    device: str = "gaussian",
    device_params: Mapping[str, Any] | None = None,
    device_file: str | None = None,
    weight_bits: int = 8,
    label_free: bool = False,
    samples: int = 100,
    seed: int = 0,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    torch_device: str = "auto",
    max_samples: int | None = None,
    labels: Sequence[str] | None = None,
    verify: bool = False,
    progress: bool = False,
) -> Comparison:
    """Run :func:`cimguard.solve.attack_sweep` once per model, with the same data, device, thg values,
    solvers, solver options (``{solver: {field: value}}``) and seeds.

    Each model gets exactly the numbers ``cimguard attack`` would report for it.  A
    Ctrl-C stops the comparison: the models done so far (and the interrupted one's
    partial sweep) are returned, marked interrupted.
    """
    from cimguard.crossbar import CrossbarConfig
    from cimguard.pipeline import build_setup
    from cimguard.solve import attack_sweep, build_solvers

    if not thgs:
        raise CimguardError("give at least one thg value")
    build_solvers(list(solvers), options)  # unknown solvers and bad settings fail before any work
    labels = list(labels) if labels is not None else [str(m) for m in models]
    comparison = Comparison("agreement" if label_free else "accuracy", list(solvers), [])
    for label, model in zip(labels, models):
        setup = build_setup(model, data, device, dict(device_params or {}), device_file,
                            CrossbarConfig(weight_bits=weight_bits), label_free=label_free, verify=verify,
                            torch_device=torch_device, max_samples=max_samples)
        sweep = attack_sweep(setup.crossbar, setup.data, list(thgs), list(solvers), samples=samples, seed=seed,
                             options=options, progress=progress)
        comparison.sweeps.append((label, sweep))
        comparison.setups.append(setup)
        if sweep.interrupted:
            comparison.interrupted = True
            break
    return comparison


def compare_models(models: Sequence[str | Path | None], thgs: Sequence[float], solvers: Sequence[str],
                   **kwargs: Any) -> list[ModelComparison]:
    """The table rows of :func:`compare_sweeps` (same arguments), for scripts that only need the numbers."""
    return compare_sweeps(models, thgs, solvers, **kwargs).rows


def format_comparison(rows: Sequence[ModelComparison], solvers: Sequence[str] | None = None) -> list[str]:
    """The side-by-side table, one line per model and threshold ("-": not measured)."""
    solvers = list(solvers) if solvers is not None else (list(rows[0].worst_case) if rows else [])

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    headers = ["model", "thg", "clean", "MC mean", "MC p1"] + [f"worst {s}" for s in solvers]
    table = [[r.model, r.label, number(r.clean), number(r.monte_carlo_mean), number(r.monte_carlo_p1)]
             + [number(r.worst_case.get(s)) for s in solvers] for r in rows]
    widths = [max(len(h), *(len(line[i]) for line in table)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths)))]
    for line in table:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))))
    return lines


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@setup_options
@solver_options()
@sweep_options
@seed_option
@click.option("--plot", "plot_path", type=click.Path(), default=None, help="Write a figure (.png/.pdf/.svg).")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results to a new JSON file.")
@click.pass_context
def compare(ctx, models, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
            max_samples, solver_names, iterations, solver_params, thg_text, samples, seed, plot_path, json_path) -> None:
    """Evaluate MODELS side by side: clean, Monte Carlo and worst-case accuracy at each thg.

    Every model runs the same sweep as `cimguard attack` (same device, thg values,
    solvers, solver options and seeds).
    """
    from cimguard.device import create_device, parse_param_overrides
    from cimguard.pipeline import describe_device_choice
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    # Every check before any work, as `attack` does: thresholds, solvers (built, so their settings
    # are validated), outputs.
    thgs = parse_thg_list(thg_text)
    check_thg_sweep(thgs, device_params)
    solvers, options = solvers_from_options(solver_names, iterations, solver_params)
    check_outputs({"--plot": plot_path, "--json": json_path}, suffixes={"--plot": PLOT_SUFFIXES},
                  inputs=(*models, data, device_file))
    params = dict(parse_param_overrides(device_params))
    # The header first (a long run under a pipe shows what it is doing); building the device
    # here also refuses a bad device parameter before any model is loaded.
    device_label = describe_device_choice(device_name, create_device(device_name, params, device_file=device_file),
                                          params)
    monte_carlo = f"{samples} Monte Carlo chips per thg" if samples else "no Monte Carlo"
    click.echo(f"device {device_label}, {monte_carlo}, seed {seed}; solvers: {', '.join(solvers)}; "
               f"{'agreement' if label_free else 'accuracy'}" + (" with each model's clean chip" if label_free else ""))
    comparison = compare_sweeps(
        list(models), thgs, solvers, data=data, device=device_name, device_params=params, device_file=device_file,
        weight_bits=weight_bits, label_free=label_free, samples=samples, seed=seed, options=options,
        torch_device=torch_device, max_samples=max_samples, verify=verify, progress=True,
    )
    rows = comparison.rows
    for line in format_comparison(rows, solvers):
        click.echo(line)
    if plot_path:
        from cimguard.plot import plot_comparison, save_figure

        save_figure(plot_comparison(rows, metric=comparison.metric, title=f"on {device_label}"), plot_path)
        click.echo(f"wrote {plot_path}")
    if json_path:
        from cimguard.provenance import provenance

        write_json(json_path, {
            "provenance": provenance(comparison.setups[0] if comparison.setups else None, metric=comparison.metric,
                                     models=[s.model_path for s in comparison.setups]),
            "device": device_name, "device_params": params, "samples": samples, "seed": seed,
            "thg": ["device" if thg is None else thg for thg in thgs],
            "metric": comparison.metric, "solvers": solvers, "interrupted": comparison.interrupted,
            "rows": [dataclasses.asdict(r) for r in rows],
            "sweeps": [{"model": label, **sweep.to_record()} for label, sweep in comparison.sweeps],
        })
        click.echo(f"wrote {json_path}")
    if comparison.interrupted:
        click.echo("Interrupted: the table holds the results found before Ctrl-C.", err=True)
        ctx.exit(130)


COMMANDS = (harden, compare)
