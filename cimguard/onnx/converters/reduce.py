"""The ``Reduce*`` family, every version: axes as an attribute (before opset 18, ``ReduceSum``
before 13) or as an input, ``keepdims``, ``noop_with_empty_axes`` and empty reductions (the
identity of the operation: ``-inf`` for ``ReduceMax``, ``0`` for ``ReduceSum``...).
onnx2torch's own converter fails on empty sets and on axes given at run time."""

from __future__ import annotations

import math

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import attribute, converter, function_result

OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
       "ReduceProd", "ReduceSum", "ReduceSumSquare")


def _extreme(dtype: torch.dtype, largest: bool) -> float | int | bool:
    if dtype == torch.bool:
        return largest
    if dtype.is_floating_point:
        return math.inf if largest else -math.inf
    info = torch.iinfo(dtype)
    return info.max if largest else info.min


def reduce(op: str, x: torch.Tensor, dims: list[int], keepdims: bool) -> torch.Tensor:
    """``op`` over ``dims`` (already normalised, non-empty) of ``x``, in ``x``'s element type."""
    if op in ("ReduceMax", "ReduceMin") and any(x.shape[d] == 0 for d in dims):
        shape = [1 if d in dims else s for d, s in enumerate(x.shape)] if keepdims else \
            [s for d, s in enumerate(x.shape) if d not in dims]
        return torch.full(shape, _extreme(x.dtype, op == "ReduceMin"), dtype=x.dtype, device=x.device)
    if op == "ReduceMax":
        result = x.amax(dim=dims, keepdim=keepdims)
    elif op == "ReduceMin":
        result = x.amin(dim=dims, keepdim=keepdims)
    elif op == "ReduceSum":
        result = x.sum(dim=dims, keepdim=keepdims)
    elif op == "ReduceMean":
        result = x.mean(dim=dims, keepdim=keepdims) if x.is_floating_point() else \
            (x.sum(dim=dims, keepdim=keepdims) // max(math.prod(x.shape[d] for d in dims), 1))
    elif op == "ReduceProd":
        result = x
        for d in sorted(dims, reverse=True):
            result = result.prod(dim=d, keepdim=keepdims)
    elif op == "ReduceL1":
        result = x.abs().sum(dim=dims, keepdim=keepdims)
    elif op == "ReduceL2":
        result = (x * x).sum(dim=dims, keepdim=keepdims).double().sqrt() if not x.is_floating_point() else \
            (x * x).sum(dim=dims, keepdim=keepdims).sqrt()
    elif op == "ReduceLogSum":
        result = x.sum(dim=dims, keepdim=keepdims).log()
    elif op == "ReduceLogSumExp":
        result = torch.logsumexp(x.double() if not x.is_floating_point() else x, dim=dims, keepdim=keepdims)
    else:  # ReduceSumSquare
        result = (x * x).sum(dim=dims, keepdim=keepdims)
    return result.to(x.dtype)


_ELEMENTWISE = {"ReduceL1": torch.abs, "ReduceL2": torch.abs, "ReduceLogSum": torch.log,
                "ReduceSumSquare": lambda t: t * t}


def _run(op: str, static_axes: list[int] | None, keepdims: bool, noop: bool, x: torch.Tensor,
         axes: torch.Tensor | None = None) -> torch.Tensor:
    dims = list(static_axes) if static_axes is not None else \
        ([] if axes is None else [int(a) for a in axes.reshape(-1).tolist()])
    if not dims:
        if noop:  # no reduction, but the element-wise part of the operation still applies
            return _ELEMENTWISE.get(op, lambda t: t)(x)
        dims = list(range(x.dim()))
    if x.dim() == 0:
        return reduce(op, x.reshape(1), [0], False)
    return reduce(op, x, sorted({d % x.dim() for d in dims}), keepdims)


def _convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axes = attribute(node, "axes", None)
    keepdims = bool(attribute(node, "keepdims", 1))
    noop = bool(attribute(node, "noop_with_empty_axes", 0))
    op = node.operation_type
    return function_result(node, lambda x, a=None: _run(op, axes, keepdims, noop, x, a))


for _op in OPS:
    converter(_op, 1, "every form (axes attribute or input, empty sets)", replace=True)(_convert)
