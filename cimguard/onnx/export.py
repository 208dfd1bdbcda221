"""Export: the vendor's original ONNX graph with only the mapped weights replaced.

The file written is the model the user loaded (same nodes, node names, inputs,
outputs, opsets, IR version and metadata), not the legalised copy cimguard converted.
Each mapped weight goes back where the original file stored it:

* an initializer: its tensor is replaced (same name, same element type);
* a ``Constant`` node: its ``value`` is replaced (the node stays a ``Constant``);
* a node legalisation folded (``ConstantOfShape``, or the last node of an
  all-constant subgraph such as ``Transpose(W)``): that node is rewritten *in place*
  into a ``Constant`` with the same name and output, holding the new value.  The node
  list keeps its length, order and names; only that node's operator changes, and the
  nodes that fed it (now unused) are left as they were, because ONNX has no inverse of
  an arbitrary subgraph.  :func:`weight_locations` says which case applies to each weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from cimguard.errors import CimguardError
from cimguard.onnx.model import ImportedModel, MappedWeight
from cimguard.onnx.quantized import codes_for, recoded_weights, write_codes
from cimguard.onnx.runtime import comparison_tolerance, onnx_feed, onnxruntime_mismatch, random_inputs
from cimguard.report import check_new_output, write_new_file


@dataclass(frozen=True)
class WeightLocation:
    """Where export writes one mapped weight in the original file."""

    torch_name: str
    tensor: str
    """The weight's value name in the graph."""
    kind: str
    """``initializer``, ``constant`` (a Constant node's value), ``rewritten`` (a node becomes a Constant) or
    ``codes`` (a quantized file's integer initializer, re-coded with the file's scale and zero point)."""
    node: str | None = None
    """The node written to (``constant`` and ``rewritten``)."""
    op_type: str | None = None
    """That node's original operator (``codes``: the quantized form, QDQ, QOperator …)."""


def weight_locations(imported: ImportedModel) -> list[WeightLocation]:
    """Where each mapped weight lives in the original file (raises if one cannot be found)."""
    graph = imported.onnx_model.graph
    initializers = {init.name for init in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    locations = []
    quantized = imported.quantization.weights if imported.quantization is not None else {}
    for mapped in imported.mapped:
        name = mapped.initializer
        if name in quantized:
            # A quantized weight is written as new codes into the file's integer initializer.
            record = quantized[name]
            locations.append(WeightLocation(mapped.torch_name, record.codes, "codes", record.node, record.form))
            continue
        if name in initializers:
            locations.append(WeightLocation(mapped.torch_name, name, "initializer"))
            continue
        node = producers.get(name)
        if node is None:
            raise CimguardError(f"cannot find where the original model stores weight {name}")
        label = node.name or name
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            locations.append(WeightLocation(mapped.torch_name, name, "constant", label, node.op_type))
        elif len([out for out in node.output if out]) == 1:
            locations.append(WeightLocation(mapped.torch_name, name, "rewritten", label, node.op_type))
        else:
            raise CimguardError(
                f"weight {name} is one of several outputs of node {label!r} ({node.op_type}); it cannot be exported"
            )
    return locations


def with_weights(imported: ImportedModel, weights: Mapping[str, torch.Tensor]) -> onnx.ModelProto:
    """A copy of the original model whose mapped weights hold ``weights`` (by torch name)."""
    by_tensor: dict[str, np.ndarray] = {}
    untied: list[tuple[MappedWeight, np.ndarray]] = []
    # A quantized file's layers keep their format: new integer codes go into its integer initializers.
    codes = codes_for(imported, weights)
    for mapped in imported.mapped:
        if mapped.torch_name not in weights or (imported.quantization and mapped.initializer in imported.quantization.weights):
            continue
        value = mapped.to_onnx(weights[mapped.torch_name])
        previous = by_tensor.get(mapped.initializer)
        if previous is not None and not np.array_equal(previous, value):
            untied.append((mapped, value))  # layers that shared one stored tensor were trained apart
            continue
        by_tensor[mapped.initializer] = value
    locations = {loc.tensor: loc for loc in weight_locations(imported) if loc.tensor in by_tensor}
    model = onnx.ModelProto()
    model.CopyFrom(imported.onnx_model)
    for initializer in model.graph.initializer:
        if initializer.name in by_tensor and locations[initializer.name].kind == "initializer":
            _replace_tensor(initializer, by_tensor[initializer.name])
    for node in model.graph.node:
        name = node.output[0] if node.output else ""
        location = locations.get(name)
        if location is None or location.kind == "initializer":
            continue
        if location.kind == "constant":
            _set_constant_value(node, by_tensor[name], _constant_dtype(node))
        else:
            _rewrite_as_constant(node, by_tensor[name], imported.legalised, name)
    for mapped, value in untied:
        _untie(model, mapped, value)
    write_codes(model, codes)
    return model


def _untie(model: onnx.ModelProto, mapped: MappedWeight, value: np.ndarray) -> None:
    """Give one consumer of a shared initializer its own copy holding its new value.

    Exporters store identical tensors once (an untrained ``nn.TransformerEncoder``'s layers are
    copies of one layer); on a chip every layer has its own crossbar, so after hardening they
    differ.  The consuming node's weight input is pointed at a new initializer; nothing else changes.
    """
    shared = next((init for init in model.graph.initializer if init.name == mapped.initializer), None)
    node = next((n for n in model.graph.node if (n.name or "") == mapped.node and len(n.input) > 1
                 and n.input[1] == mapped.initializer), None)
    if shared is None or node is None:
        raise CimguardError(
            f"initializer {mapped.initializer} feeds several layers that now hold different weights; "
            "it cannot be exported as one tensor"
        )
    taken = {init.name for init in model.graph.initializer} | {out for n in model.graph.node for out in n.output}
    name, suffix = f"{mapped.initializer}.{mapped.node}", 1
    while name in taken:
        name, suffix = f"{mapped.initializer}.{mapped.node}.{suffix}", suffix + 1
    dtype = helper.tensor_dtype_to_np_dtype(shared.data_type)
    if tuple(shared.dims) != value.shape:
        raise CimguardError(f"weight {shared.name} has shape {value.shape}, the model stores {tuple(shared.dims)}")
    model.graph.initializer.append(numpy_helper.from_array(value.astype(dtype), name=name))
    node.input[1] = name


def _replace_tensor(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if tuple(tensor.dims) != value.shape:
        raise CimguardError(f"weight {tensor.name} has shape {value.shape}, the model stores {tuple(tensor.dims)}")
    new = numpy_helper.from_array(value.astype(dtype), name=tensor.name)
    tensor.CopyFrom(new)


def _constant_dtype(node: onnx.NodeProto) -> np.dtype:
    for attr in node.attribute:
        if attr.name == "value":
            return helper.tensor_dtype_to_np_dtype(attr.t.data_type)
        if attr.name in ("value_int", "value_ints"):
            return np.dtype(np.int64)
    return np.dtype(np.float32)


def _set_constant_value(node: onnx.NodeProto, value: np.ndarray, dtype: np.dtype) -> None:
    """Give a Constant node a ``value`` tensor (replacing value_float(s) forms too)."""
    tensor = numpy_helper.from_array(np.ascontiguousarray(value).astype(dtype), name="")
    del node.attribute[:]
    node.attribute.append(helper.make_attribute("value", tensor))


def _rewrite_as_constant(node: onnx.NodeProto, value: np.ndarray, legalised: onnx.ModelProto, name: str) -> None:
    """Turn the node that computed a folded weight into a Constant holding the new weight."""
    dtype = np.dtype(np.float32)
    for init in legalised.graph.initializer:
        if init.name == name:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            break
    node.op_type = "Constant"
    node.domain = ""
    del node.input[:]
    _set_constant_value(node, value, dtype)


def export_onnx(
    imported: ImportedModel,
    weights: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    check_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> Path:
    """Write the original graph with new weights to a new file, after checking it in onnxruntime.

    The exported model must reproduce the torch model run with ``weights`` on
    ``check_inputs`` (relative to output scale), or nothing is written.  Without
    ``check_inputs`` seeded random inputs of the model's input shapes are used.  The input
    file is never overwritten and an existing file is never replaced.
    """
    path = check_new_output(path, inputs=(imported.path,) if imported.path else ())
    if imported.quantization is not None:
        weights = recoded_weights(imported, weights)  # what the file computes with: the re-coded weights
    model = with_weights(imported, weights)
    if check_inputs is not None:
        feeds = {imported.input.name: onnx_feed(imported.input, check_inputs)}
    else:
        feeds = random_inputs(imported.inputs)
    error = onnxruntime_mismatch(model, imported.module, feeds, weights, paths=imported.result_paths)
    if not error <= comparison_tolerance(model, tolerance):
        raise CimguardError(
            f"the exported model does not reproduce the torch model in onnxruntime "
            f"(relative difference {error:.3g}); nothing was written"
        )
    try:
        data = model.SerializeToString()
    except ValueError as exc:
        raise CimguardError(f"the exported model cannot be serialised ({exc}); models over 2 GiB are not supported") from None
    return write_new_file(path, lambda tmp: tmp.write_bytes(data))
