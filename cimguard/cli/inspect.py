"""``cimguard inspect MODEL.onnx``: what is in an ONNX file and how cimguard will see it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import click
import torch

from cimguard.cli.options import SEED, model_argument, output_option
from cimguard.errors import CimguardError
from cimguard.onnx.inspect import ModelInspection, inspect_model
from cimguard.onnx.model import TensorSpec, shape_text
from cimguard.report import to_jsonable


def _print(report: ModelInspection) -> None:
    opsets = ", ".join(f"{domain} {version}" for domain, version in report.opsets.items())
    click.echo(f"model       {report.path}")
    click.echo(f"format      IR {report.ir_version}, opset {opsets}, producer {report.producer}")
    for kind, specs in (("input", report.inputs), ("output", report.outputs)):
        for spec in specs:
            click.echo(f"{kind:<11} {spec.name}: {spec.dtype} {shape_text(spec)}")
    operators = ", ".join(f"{op} {count}" for op, count in report.operators.items())
    click.echo(f"operators   {sum(report.operators.values())} nodes: {operators}")
    if not report.converts:
        click.echo(f"conversion  FAILED: {report.conversion_error}")
        return
    click.echo(f"parameters  {report.parameters}")
    click.echo(f"batch       {report.batch}: {report.batch_text}")
    if report.legalisation:
        click.echo("legalised   " + "\n            ".join(report.legalisation))
    else:
        click.echo("legalised   nothing to change")
    click.echo(f"crossbars   {len(report.crossbar_layers)} layers, {report.crossbar_weights} weights "
               "(layers named by their ONNX weight, as `attack --sensitivity` names them; node in brackets)")
    if report.crossbar_layers:
        width = max(len(layer.weight) for layer in report.crossbar_layers)
        for layer in report.crossbar_layers:
            shape = "x".join(str(d) for d in layer.shape)
            click.echo(f"  {layer.weight:<{width}}  {layer.op_type:<6} {shape:<16} {layer.weights:>10} weights  "
                       f"[{layer.node}] ({layer.stored_as})")
    if report.quantization is not None:
        _print_quantization(report.quantization)
    for name, nodes in report.shared_weights.items():
        click.echo(f"shared      {name} is used by {len(nodes)} nodes ({', '.join(nodes)}): each use is its own "
                   f"crossbar, so crossbars count it {len(nodes)} times while parameters counts it once")
    check = report.check
    if check is None:
        click.echo(f"conversion  {report.check_note}")
        return
    shapes = ", ".join(f"{name} {list(shape)}" for name, shape in check.input_shapes.items())
    verdict = "exact" if check.exact else "NOT exact"
    click.echo(f"conversion  {verdict}: max relative error {check.relative_error:.2e} vs onnxruntime "
               f"(tolerance {check.tolerance:g}) {report.check_note} {shapes}")


def _print_quantization(quantization: dict) -> None:
    weights, activations = quantization["weights"], quantization["activations"]
    mapped = [w for w in weights if w["crossbar_layer"]]
    click.echo(f"quantized   {quantization['format']}: {len(mapped)} crossbar weights as integer codes (their levels), "
               f"{len(weights) - len(mapped)} other constants (biases), {len(activations)} quantized activations")
    for weight in weights:
        layer = f"crossbar [{weight['crossbar_layer']}]" if weight["crossbar_layer"] else "digital"
        click.echo(f"  {weight['codes']}  {weight['type']} ({weight['bits']} bits) {weight['granularity']}, "
                   f"zero points {weight['zero_points']}, {weight['form']}, {layer}")
    for activation in activations:
        click.echo(f"  activation {activation['tensor']}  {activation['type']} ({activation['bits']} bits) "
                   f"{activation['granularity']} [{activation['node']}]")


@click.command(name="inspect")
@model_argument
@click.option("--data", default=None,
              help="Check the conversion on these samples (NAME, NAME:ARG or a .npz file): the sizes of an input "
                   "whose axes are all dynamic.")
@output_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the random check input (0 <= seed < 2^64).")
def inspect_command(model: str | None, data: str | None, output_name: str | None, as_json: bool, seed: int) -> None:
    """Opsets, operators, inputs/outputs, crossbar layers and whether conversion is exact.

    Exits with status 1 when the model does not convert, the conversion is not exact, or the
    output --output names cannot be class scores.  Without --data, a model whose input sizes are all
    dynamic is reported with the check skipped (it needs a sample size), not refused.
    """
    from cimguard.api import default_model
    from cimguard.provenance import provenance

    model_path = str(model) if model is not None else str(default_model())
    report = inspect_model(model_path, seed=seed, check_samples=_check_samples(model_path, data))
    if as_json:
        report.provenance = provenance(models=[Path(model_path)], metric=None)
        click.echo(json.dumps(to_jsonable(report), indent=2))
    else:
        _print(report)
    if not report.converts:
        raise CimguardError(report.conversion_error or "conversion failed")
    if output_name is not None:  # inspect describes any file; only a named output must be class scores
        _check_score_output(report, model_path, output_name)
    if report.check is not None and not report.check.exact:
        raise CimguardError(
            f"the converted model is not exact: relative error {report.check.relative_error:.2e} "
            f"exceeds {report.check.tolerance:g}"
        )


def _check_samples(model_path: str, data: str | None) -> Callable[[list[TensorSpec]], torch.Tensor] | None:
    """Given the model's declared inputs (read once, by :func:`inspect_model`), the first evaluation samples of
    ``--data`` fitted to its single input (``None`` without --data)."""
    if data is None:
        return None
    from cimguard.checks import PROBE_SAMPLES
    from cimguard.factories import load_dataset
    from cimguard.sim.data import fit_to_model

    def fitted(inputs: list[TensorSpec]) -> torch.Tensor:
        if len(inputs) != 1:
            raise CimguardError(f"{model_path} has {len(inputs)} inputs; --data feeds single-input models")
        return fit_to_model(load_dataset(data).x_eval[:PROBE_SAMPLES], inputs[0])

    return fitted


def _check_score_output(report: ModelInspection, model_path: str, output_name: str) -> None:
    """The output ``--output`` names, as declared: ``[batch, classes]`` floats."""
    from cimguard.checks import check_output_spec

    names = [spec.name for spec in report.outputs]
    if output_name not in names:
        raise CimguardError(f"{model_path} has no output {output_name!r}; its outputs are {', '.join(map(repr, names))}")
    spec = report.outputs[names.index(output_name)]
    check_output_spec(spec, model_path, others=len(names) - 1)


COMMANDS = (inspect_command,)
