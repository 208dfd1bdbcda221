"""Shape and layout operators: ``Reshape`` (``allowzero``), ``Pad`` (every mode, ``axes``),
``Clip`` (bounds omitted or given at run time), ``Split`` (every
version, ``num_outputs`` with an uneven last part), ``Cast``/``CastLike`` between numeric
types, ``Size``, ``Flatten`` (every axis), ``Trilu``, ``SpaceToDepth``/``DepthToSpace``
(both modes), ``Compress``."""

from __future__ import annotations

import math

import onnx
import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from cimguard.onnx.converters.registry import (
    OnnxToTorchModule,
    Unsupported,
    attribute,
    converter,
    delegate,
    function_result,
    register,
)


class OnnxReshapeAllowZero(nn.Module, OnnxToTorchModule):
    """``Reshape`` with ``allowzero=1``: a 0 in the shape is a zero-sized axis, not "copy this axis"."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(d) for d in shape.tolist()])


def _reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("allowzero", 0) == 1:
        return OperationConverterResult(OnnxReshapeAllowZero(), onnx_mapping_from_node(node))
    return delegate("Reshape", 14)(node, graph)


for _version in (19, 21, 23, 24, 25):
    register("Reshape", _version, _reshape, "Reshape 14 plus allowzero=1")


def _source_index(length: int, begin: int, end: int, mode: str, device: torch.device) -> torch.Tensor:
    """For each output position along one axis, the input index it copies (-1: the constant)."""
    position = torch.arange(-begin, length + end, device=device)
    if mode == "constant":
        return torch.where((position >= 0) & (position < length), position, torch.full_like(position, -1))
    if mode == "edge":
        return position.clamp(0, length - 1)
    if mode == "wrap":
        return position % length
    period = 2 * (length - 1)  # reflect: mirror without repeating the edge
    if period == 0:
        return torch.zeros_like(position)
    folded = position % period
    return torch.where(folded < length, folded, period - folded)


@converter("Pad", 11, "every mode, axes input, negative pads", replace=True)
def _pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    mode = node.attributes.get("mode", "constant")
    if mode not in ("constant", "reflect", "edge", "wrap"):
        raise Unsupported(f"Pad mode {mode!r} is not supported")

    def pad(x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
            axes: torch.Tensor | None = None) -> torch.Tensor:
        rank = x.dim()
        chosen = [int(a) % rank for a in axes.reshape(-1).tolist()] if axes is not None else list(range(rank))
        amounts = [int(p) for p in pads.reshape(-1).tolist()]
        fill = value.reshape(-1)[0].to(x.dtype) if value is not None and value.numel() else \
            torch.zeros((), dtype=x.dtype, device=x.device)
        y = x
        for i, axis in enumerate(chosen):
            begin, end = amounts[i], amounts[len(chosen) + i]
            if begin < 0 or end < 0:  # negative pads crop first; the other side pads the cropped axis
                start, stop = max(-begin, 0), y.shape[axis] - max(-end, 0)
                y = y.narrow(axis, start, stop - start)
                begin, end = max(begin, 0), max(end, 0)
            if begin == 0 and end == 0:
                continue
            index = _source_index(y.shape[axis], begin, end, mode, x.device)
            picked = torch.index_select(y, axis, index.clamp(min=0))
            if mode == "constant":
                shape = [1] * rank
                shape[axis] = -1
                picked = torch.where((index >= 0).reshape(shape), picked, fill)
            y = picked
        return y

    return function_result(node, pad)


@converter("Clip", 11, "bounds omitted or given at run time", replace=True)
def _clip(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    def clip(x: torch.Tensor, low: torch.Tensor | None = None, high: torch.Tensor | None = None) -> torch.Tensor:
        if low is not None:
            x = torch.maximum(x, low.to(x.dtype))
        if high is not None:
            x = torch.minimum(x, high.to(x.dtype))
        return x

    return function_result(node, clip)


# --- Split -------------------------------------------------------------------------


def _split(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", 0))
    count = sum(1 for name in node.output_values)
    static = attribute(node, "split", None)
    num_outputs = node.attributes.get("num_outputs")
    if num_outputs is not None and int(num_outputs) != count:
        raise Unsupported("Split: num_outputs differs from the number of outputs")

    def split(x: torch.Tensor, sizes: torch.Tensor | None = None):
        length = x.shape[axis]
        if sizes is not None:
            parts = [int(s) for s in sizes.reshape(-1).tolist()]
        elif static:
            parts = [int(s) for s in static]
        else:
            # Opset 18: ceil(length / n) per part, the last one smaller; before, equal parts.
            step = math.ceil(length / count)
            parts = [min(step, max(length - i * step, 0)) for i in range(count)]
        pieces = torch.split(x, parts, dim=axis)
        return pieces[0] if count == 1 else tuple(pieces)

    return function_result(node, split)


converter("Split", 1, "every version; num_outputs with an uneven last part", replace=True)(_split)


# --- casts -------------------------------------------------------------------------

_TORCH_TYPES = {
    onnx.TensorProto.FLOAT: torch.float32, onnx.TensorProto.DOUBLE: torch.float64,
    onnx.TensorProto.FLOAT16: torch.float16, onnx.TensorProto.BFLOAT16: torch.bfloat16,
    onnx.TensorProto.INT8: torch.int8, onnx.TensorProto.UINT8: torch.uint8, onnx.TensorProto.INT16: torch.int16,
    onnx.TensorProto.INT32: torch.int32, onnx.TensorProto.INT64: torch.int64, onnx.TensorProto.BOOL: torch.bool,
}


def torch_type(onnx_type: int, op: str) -> torch.dtype:
    """The torch element type of an ONNX one, or a one-line refusal (strings, float8, 4-bit...)."""
    if onnx_type not in _TORCH_TYPES:
        name = onnx.TensorProto.DataType.Name(onnx_type) if onnx_type in onnx.TensorProto.DataType.values() else onnx_type
        raise Unsupported(f"{op} to element type {name} is not supported")
    return _TORCH_TYPES[onnx_type]


def _cast_value(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype.is_floating_point:
        # cimguard computes every float in float32 (the conversion turns float16/float64 weights
        # into float32): a cast to a narrower float rounds to it and stays float32; to float64
        # it stays float32, so no operator ever mixes float types.
        return x.to(dtype).float() if dtype in (torch.float16, torch.bfloat16) else x.float()
    return x.to(dtype)  # float to integer truncates toward zero, as ONNX and C do


@converter("Cast", 6, "numeric types", replace=True)
def _cast(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    dtype = torch_type(int(node.attributes["to"]), "Cast")
    return function_result(node, lambda x: _cast_value(x, dtype))


@converter("CastLike", 15, "numeric types")
def _cast_like(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    return function_result(node, lambda x, like: _cast_value(x, like.dtype))


@converter("Size", 1, "new")
def _size(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    return function_result(node, lambda x: torch.tensor(x.numel(), dtype=torch.int64, device=x.device))


def _flatten_needs_own(node: onnx.NodeProto) -> bool:
    """onnx2torch's Flatten fails for axis 0 and negative axes."""
    return any(a.name == "axis" and a.i <= 0 for a in node.attribute)


@converter("Flatten", 1, "every axis", replace=True, when=_flatten_needs_own)
def _flatten(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", 1))

    def flatten(x: torch.Tensor) -> torch.Tensor:
        split = axis % x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:split]), math.prod(x.shape[split:]))

    return function_result(node, flatten)


@converter("Trilu", 14, "new")
def _trilu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    upper = bool(node.attributes.get("upper", 1))

    def trilu(x: torch.Tensor, k: torch.Tensor | None = None) -> torch.Tensor:
        diagonal = int(k.reshape(-1)[0]) if k is not None else 0
        return torch.triu(x, diagonal) if upper else torch.tril(x, diagonal)

    return function_result(node, trilu)


def _block_rearrange(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    """``DepthToSpace`` and its inverse ``SpaceToDepth``; ``DCR`` (depth-column-row) or ``CRD`` order."""
    block = int(node.attributes["blocksize"])
    crd = node.attributes.get("mode", "DCR") == "CRD"
    to_space = node.operation_type == "DepthToSpace"

    def rearrange(x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if to_space:
            depth = c // block**2
            split = (n, depth, block, block, h, w) if crd else (n, block, block, depth, h, w)
            order = (0, 1, 4, 2, 5, 3) if crd else (0, 3, 4, 1, 5, 2)
            return x.reshape(split).permute(order).reshape(n, depth, h * block, w * block)
        y = x.reshape(n, c, h // block, block, w // block, block)
        y = y.permute(0, 1, 3, 5, 2, 4) if crd else y.permute(0, 3, 5, 1, 2, 4)
        return y.reshape(n, c * block * block, h // block, w // block)

    return function_result(node, rearrange)


converter("DepthToSpace", 1, "DCR and CRD modes", replace=True)(_block_rearrange)
converter("SpaceToDepth", 1, "DCR and CRD modes", replace=True)(_block_rearrange)


@converter("Compress", 9, "new")
def _compress(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = node.attributes.get("axis")

    def compress(x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        keep = condition.reshape(-1).to(torch.bool)
        if axis is None:
            flat = x.reshape(-1)
            return flat[: keep.numel()][keep[: flat.numel()]]
        dim = int(axis) % x.dim()
        keep = keep[: x.shape[dim]]
        index = torch.nonzero(keep).reshape(-1)
        return torch.index_select(x, dim, index)

    return function_result(node, compress)


@converter("BitCast", 26, "same element size")
def _bit_cast(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    dtype = torch_type(int(node.attributes["to"]), "BitCast")
    if dtype.itemsize == 8 and not dtype.is_floating_point:
        # A 64-bit source may be a float64 that cimguard holds in float32: its bits are not the file's.
        raise Unsupported("BitCast to a 64-bit integer type is not supported (cimguard computes floats in float32)")

    def bit_cast(x: torch.Tensor) -> torch.Tensor:
        y = x.view(dtype)
        return y.float() if dtype.is_floating_point else y

    return function_result(node, bit_cast)
