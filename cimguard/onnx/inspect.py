"""What is in an ONNX file and how cimguard will see it: opsets, operators, inputs and outputs, the
crossbar layers, and how closely the converted torch module matches onnxruntime (``cimguard inspect``)."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import torch

from cimguard.checks import check_declared_dims
from cimguard.errors import CimguardError
from cimguard.onnx.model import TensorSpec, import_model, read_onnx, shape_text, tensor_spec
from cimguard.onnx.runtime import comparison_tolerance, onnx_feed, onnxruntime_mismatch, random_inputs
from cimguard.onnx.verify import EXACT_TOLERANCE, ConversionCheck


@dataclass(frozen=True)
class CrossbarLayer:
    """One layer whose weight is programmed into a crossbar."""

    node: str
    op_type: str
    weight: str
    """The ONNX tensor holding the weight."""
    shape: tuple[int, ...]
    """Shape of the torch weight."""
    weights: int
    """Number of weights (crossbar cells per device slice)."""
    stored_as: str
    """Where the original file keeps it: an initializer, a Constant node, or a node export rewrites into a Constant."""


@dataclass
class ModelInspection:
    """Everything ``inspect`` reports (the JSON form is this record)."""

    path: str
    ir_version: int
    opsets: dict[str, int]
    producer: str
    operators: dict[str, int]
    """Operator counts of the original graph, most frequent first."""
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parameters: int | None = None
    """Elements of all floating-point constant tensors after legalisation (weights made by nodes included)."""
    crossbar_layers: list[CrossbarLayer] = field(default_factory=list)
    crossbar_weights: int = 0
    """Weights programmed into crossbars: a weight used by several nodes counts once per use (one crossbar each)."""
    shared_weights: dict[str, list[str]] = field(default_factory=dict)
    """``{initializer: [nodes]}`` for weights that several crossbar layers use (tied weights)."""
    legalisation: list[str] = field(default_factory=list)
    converts: bool = False
    conversion_error: str | None = None
    batch: str | None = None
    """How batches of any size run (:mod:`cimguard.onnx.batch`): ``dynamic``, ``symbolic``, ``vmap`` or ``loop``."""
    batch_text: str | None = None
    """The same in words."""
    quantization: dict | None = None
    """A quantized file's format, weights (type, bits, granularity, zero points, crossbar layer) and quantized
    activations (:meth:`cimguard.onnx.quantized.Quantization.summary`); ``None`` for a float file."""
    check: ConversionCheck | None = None
    check_note: str | None = None
    """Why the conversion was not checked (inputs whose sizes are all dynamic: give ``--data``), or how."""
    provenance: dict | None = None
    """Versions, the model's SHA-256 and absolute path, command line and times (:mod:`cimguard.provenance`)."""


def inspect_model(path: str | Path, *, seed: int = 0,
                  check_samples: Callable[[list[TensorSpec]], torch.Tensor] | None = None) -> ModelInspection:
    """Read, convert and check ``path``; conversion problems are reported in the record, not raised.

    ``check_samples``, called with the model's declared inputs, gives the samples (fitted to its single input)
    the conversion is checked on; without it a seeded random input, dynamic axes set to 1, and when the model
    cannot run on that (every axis of an image input dynamic) the check is skipped and ``check_note`` says it
    needs a size.
    """
    path = Path(path)
    original = read_onnx(path)
    initializers = {init.name for init in original.graph.initializer}
    producer = " ".join(part for part in (original.producer_name, original.producer_version) if part) or "unknown"
    report = ModelInspection(
        path=str(path),
        ir_version=original.ir_version,
        opsets={op.domain or "ai.onnx": op.version for op in original.opset_import},
        producer=producer,
        operators=dict(Counter(_label(node) for node in original.graph.node).most_common()),
        inputs=[tensor_spec(v) for v in original.graph.input if v.name not in initializers],
        outputs=[tensor_spec(v) for v in original.graph.output],
    )
    # Samples that cannot feed the model are the caller's error, raised before any conversion work.
    check_input = None if check_samples is None else check_samples(report.inputs)
    try:
        imported = import_model(original, path=path, require_mapped=False)
    except CimguardError as exc:
        report.conversion_error = str(exc)
        return report
    from cimguard.onnx.batch import BATCH_MODE_TEXT
    from cimguard.onnx.export import weight_locations

    report.converts = True
    report.batch = imported.batch_mode
    report.batch_text = BATCH_MODE_TEXT[imported.batch_mode]
    report.legalisation = list(imported.notes)
    report.parameters = sum(
        int(np.prod(init.dims)) for init in imported.legalised.graph.initializer
        if onnx.helper.tensor_dtype_to_np_dtype(init.data_type).kind == "f"
    )
    try:
        stored = {loc.torch_name: _stored_as(loc) for loc in weight_locations(imported)}
    except CimguardError:
        stored = {}
    for mapped in imported.mapped:
        report.crossbar_layers.append(CrossbarLayer(mapped.node, mapped.op_type, mapped.initializer, mapped.shape,
                                                    mapped.numel, stored.get(mapped.torch_name, "unknown")))
    report.crossbar_weights = sum(layer.weights for layer in report.crossbar_layers)
    if imported.quantization is not None:
        report.quantization = imported.quantization.summary({m.initializer: m.node for m in imported.mapped})
    users: dict[str, list[str]] = {}
    for layer in report.crossbar_layers:
        users.setdefault(layer.weight, []).append(layer.node)
    report.shared_weights = {name: nodes for name, nodes in users.items() if len(nodes) > 1}
    report.check, report.check_note = _check(imported, seed, check_input)
    return report


def _stored_as(location) -> str:
    if location.kind == "initializer":
        return "initializer"
    if location.kind == "codes":
        return f"integer initializer {location.tensor!r} ({location.op_type}, dequantized by {location.node!r})"
    if location.kind == "constant":
        return f"Constant node {location.node!r}"
    return f"{location.op_type} node {location.node!r} (export writes a Constant)"


def _label(node: onnx.NodeProto) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def _check(imported, seed: int, check_input: torch.Tensor | None) -> tuple[ConversionCheck | None, str | None]:
    from cimguard.checks import MAX_ELEMENTS, AllocationError, check_input_spec, run_probe

    where = str(imported.path)
    for value in imported.onnx_model.graph.input:
        if value.name in {spec.name for spec in imported.inputs}:
            check_declared_dims(value, where)
    for spec in imported.inputs:
        check_input_spec(spec, where)
        elements = int(np.prod([d or 1 for d in spec.shape], dtype=np.float64))
        if elements > MAX_ELEMENTS:
            raise CimguardError(f"{where}: input {spec.name!r} declares {shape_text(spec)}: {elements} elements, more than "
                                f"the limit of {MAX_ELEMENTS} for the random check input")
    if check_input is not None:
        feeds = {imported.input.name: onnx_feed(imported.input, check_input)}
    else:
        feeds = random_inputs(imported.inputs, seed)
    try:
        error = run_probe(lambda: onnxruntime_mismatch(imported.onnx_model, imported.module, feeds,
                                                        paths=imported.result_paths), where,
                          imported.legalised)
    except AllocationError:
        raise
    except CimguardError as exc:
        dynamic = {spec.name: [axis for axis, d in enumerate(spec.shape) if d is None] for spec in imported.inputs}
        hints = [f"input {name!r} has dynamic axes {axes}" for name, axes in dynamic.items() if axes[1:]]
        if not hints or check_input is not None:
            raise
        # Sizes the file leaves open are not the file's fault: the model is fine, the check needs a size.
        shapes = ", ".join(f"{name} {list(feed.shape)}" for name, feed in feeds.items())
        return None, (f"not checked: {'; '.join(hints)}, and the model does not run with them set to 1 ({shapes}); "
                      f"the conversion check needs a sample size: give --data")
    tolerance = comparison_tolerance(imported.onnx_model, EXACT_TOLERANCE)
    shapes = {k: tuple(v.shape) for k, v in feeds.items()}
    how = "the given samples" if check_input is not None else "a seeded random input"
    return ConversionCheck(error <= tolerance, error, shapes, tolerance), f"on {how}"
