"""``cimguard harden``: fine-tune a model against device variation and export it to ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import click

from cimguard.cli.options import MAX_COUNT, THG, model_argument, seed_option, setup_from_options, training_setup_options
from cimguard.distributed import is_main
from cimguard.errors import CimguardError
from cimguard.factories import build_trainer, parse_param_overrides


@click.command()
@model_argument
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
           torch_device, max_samples, output_name, thg, epochs, lr, batch_size, alpha, sigma, threshold, eta_train, trainer_params,
           seed, checkpoint, resume, json_path) -> None:
    """Fine-tune MODEL (default: the embedded model) to resist device variation; write the result to -o.

    Only the crossbar weights change: the output is the input's ONNX graph with new
    weight values, checked in onnxruntime before it is written.
    """
    from cimguard.api import default_model
    from cimguard.report import check_outputs, write_json
    from cimguard.sim.train import check_checkpoint

    trainer = build_trainer(trainer_name, trainer_options(click.get_current_context(), trainer_params))
    # Every refusal happens before any training starts.  The checkpoint rules are the
    # trainer's own (checked again by Trainer.fit); with --resume the checkpoint is an input.
    check_checkpoint(checkpoint, resume)
    inputs = (model if model else default_model(),) + ((checkpoint,) if resume else ())
    check_outputs({"-o": output, "--json": json_path, "--checkpoint": None if resume else checkpoint},
                  suffixes={"-o": (".onnx",)}, inputs=(*inputs, data, device_file))

    setup = setup_from_options(model, data, device_name, parse_param_overrides(device_params), device_file,
                               weight_bits, False, verify, torch_device, max_samples, thg, output_name)
    x_train, _ = setup.training_data
    # The header first: a long run under a pipe shows what it is doing before any work.
    click.echo(f"model    {setup.model_path}")
    click.echo(f"check    {setup.conversion_label}")
    click.echo(f"data     {setup.data_label}; {len(x_train)} training samples")
    click.echo(f"device   {setup.device_summary}, "
               f"{setup.crossbar.num_weights} weights in {len(setup.crossbar.layers)} layers")
    try:
        # progress: a bar on a terminal, a line every few seconds in a log (cimguard.progress)
        hardening = setup.harden(trainer, checkpoint=checkpoint, resume=resume, progress=True)
    except KeyboardInterrupt:
        if checkpoint is not None and Path(checkpoint).exists():
            click.echo(f"Training stopped; rerun the same command with --resume to continue from {checkpoint}.", err=True)
        raise
    hardening.export(output)
    click.echo(hardening.table())
    click.echo(f"wrote {output}")
    if json_path and is_main():  # torchrun: -o and the report live on rank 0's host
        from cimguard.provenance import file_sha256, provenance

        write_json(json_path, {"provenance": provenance(setup, metric="accuracy"), "setup": setup.describe(),
                               **hardening.to_dict(),
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

    given = parse_param_overrides(trainer_params, option="--trainer-param")
    options: dict[str, Any] = {}
    for field_name, flag in TRAINER_SHORTHANDS.items():
        explicit = ctx.get_parameter_source(field_name) not in (None, ParameterSource.DEFAULT)
        if explicit and field_name in given:
            raise CimguardError(f"{flag} and --trainer-param {field_name}={given[field_name]} both set {field_name}; give one")
        options[field_name] = ctx.params[field_name]
    return {**options, **given}


COMMANDS = (harden,)
