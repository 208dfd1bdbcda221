"""Indexing and ordering: ``Gather``/``GatherElements``/``GatherND`` (negative indices,
``batch_dims``), ``Scatter``/``ScatterElements``/``ScatterND`` with every reduction,
``TopK`` (ties: the lower index first, as ONNX specifies), ``NonZero``, ``CumSum``/``CumProd``
(``exclusive``, ``reverse``), ``Einsum`` and ``ReverseSequence``."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, converter, delegate, function_result

_REDUCE = {"add": "sum", "mul": "prod", "max": "amax", "min": "amin"}


def _wrap(index: torch.Tensor, size: int) -> torch.Tensor:
    return torch.where(index < 0, index + size, index)


@converter("GatherElements", 11, "negative indices", replace=True)
def _gather_elements(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", 0))
    return function_result(node, lambda x, i: torch.gather(x, axis, _wrap(i.long(), x.shape[axis])))


def _scatter_elements(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", 0))
    reduction = node.attributes.get("reduction", "none")
    if reduction not in ("none", *_REDUCE):
        raise Unsupported(f"{node.operation_type} reduction {reduction!r} is not supported")

    def scatter(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        index = _wrap(indices.long(), x.shape[axis])
        if reduction == "none":
            return x.scatter(axis, index, updates)
        return x.scatter_reduce(axis, index, updates, _REDUCE[reduction], include_self=True)

    return function_result(node, scatter)


converter("ScatterElements", 11, "every reduction", replace=True)(_scatter_elements)
converter("Scatter", 9, "as ScatterElements", until=10)(_scatter_elements)


@converter("ScatterND", 11, "every reduction", replace=True)
def _scatter_nd(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    reduction = node.attributes.get("reduction", "none")
    if reduction not in ("none", *_REDUCE):
        raise Unsupported(f"ScatterND reduction {reduction!r} is not supported")

    def scatter_nd(x: torch.Tensor, indices: torch.Tensor, updates: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        depth = indices.shape[-1]
        flat_index = indices.reshape(-1, depth).long()
        flat_updates = updates.reshape(flat_index.shape[0], *x.shape[depth:])
        for row, update in zip(flat_index, flat_updates):  # ONNX applies the updates in order
            key = tuple(int(i) for i in row)
            if reduction == "none":
                out[key] = update
            elif reduction == "add":
                out[key] = out[key] + update
            elif reduction == "mul":
                out[key] = out[key] * update
            elif reduction == "max":
                out[key] = torch.maximum(out[key], update)
            else:
                out[key] = torch.minimum(out[key], update)
        return out

    return function_result(node, scatter_nd)


@converter("GatherND", 11, "batch_dims, negative indices", replace=True)
def _gather_nd(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    batch_dims = int(node.attributes.get("batch_dims", 0))

    def gather_nd(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:batch_dims]
        depth = indices.shape[-1]
        xs = x.reshape(-1, *x.shape[batch_dims:])
        idx = indices.long().reshape(xs.shape[0] if batch_dims else 1, -1, depth)
        results = []
        for b in range(idx.shape[0]):
            source = xs[b] if batch_dims else x
            keys = [_wrap(idx[b, :, d], source.shape[d]) for d in range(depth)]
            results.append(source[tuple(keys)])
        out = torch.stack(results) if batch_dims else results[0]
        return out.reshape(*batch, *indices.shape[batch_dims:-1], *x.shape[batch_dims + depth:])

    return function_result(node, gather_nd)


@converter("TopK", 10, "ties: lower index first", replace=True)
def _top_k(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", -1))
    largest = bool(node.attributes.get("largest", 1))

    def top_k(x: torch.Tensor, k: torch.Tensor):
        # A stable sort keeps equal values in index order, so ties give the lower index first.
        values, indices = torch.sort(x, dim=axis, descending=largest, stable=True)
        count = int(k.reshape(-1)[0])
        return values.narrow(axis, 0, count), indices.narrow(axis, 0, count)

    return function_result(node, top_k)


@converter("NonZero", 9, "indices as [rank, count]", replace=True)
def _non_zero(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    return function_result(node, lambda x: torch.nonzero(x.reshape(1) if x.dim() == 0 else x).T.contiguous())


def _cumulative(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    exclusive = bool(node.attributes.get("exclusive", 0))
    reverse = bool(node.attributes.get("reverse", 0))
    product = node.operation_type == "CumProd"

    def cumulative(x: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
        dim = int(axis.reshape(-1)[0])
        y = x.flip(dim) if reverse else x
        if exclusive:
            pad_shape = list(y.shape)
            pad_shape[dim] = 1
            fill = torch.ones(pad_shape, dtype=y.dtype, device=y.device) if product else \
                torch.zeros(pad_shape, dtype=y.dtype, device=y.device)
            y = torch.cat([fill, y.narrow(dim, 0, y.shape[dim] - 1)], dim=dim)
        y = (torch.cumprod(y, dim) if product else torch.cumsum(y, dim)).to(x.dtype)
        return y.flip(dim) if reverse else y

    return function_result(node, cumulative)


converter("CumSum", 11, "exclusive, reverse", replace=True)(_cumulative)
converter("CumProd", 26, "new")(_cumulative)


@converter("Einsum", 12, "any element type", replace=True)
def _einsum(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    equation = node.attributes["equation"]
    return function_result(node, lambda *xs: torch.einsum(equation, *xs))


@converter("ReverseSequence", 10, "new")
def _reverse_sequence(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    batch_axis = int(node.attributes.get("batch_axis", 1))
    time_axis = int(node.attributes.get("time_axis", 0))

    def reverse_sequence(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        out = x.clone()
        for b, length in enumerate(lengths.tolist()):
            row = x.select(batch_axis, b)
            t = time_axis if time_axis < batch_axis else time_axis - 1
            out.select(batch_axis, b).narrow(t, 0, int(length)).copy_(row.narrow(t, 0, int(length)).flip(t))
        return out

    return function_result(node, reverse_sequence)


@converter("NonMaxSuppression", 10, "boxes with flipped corners", replace=True)
def _non_max_suppression(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:
    # onnx2torch's module (torchvision's nms) assumes the first corner is the smaller one; ONNX
    # allows either diagonal, so the corners are ordered first.
    inner = delegate("NonMaxSuppression", version)(node, graph).torch_module
    centered = bool(node.attributes.get("center_point_box", 0))

    def nms(boxes, scores, max_output=None, iou=None, score=None):
        if not centered:
            first, second = boxes[..., :2], boxes[..., 2:]
            boxes = torch.cat([torch.minimum(first, second), torch.maximum(first, second)], dim=-1)
        return inner(boxes, scores, max_output, iou, score)

    return function_result(node, nms)


@converter("Unique", 11, "sorted or in order of first occurrence, with or without axis")
def _unique(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = node.attributes.get("axis")
    ordered = bool(node.attributes.get("sorted", 1))

    def unique(x: torch.Tensor):
        data = x.reshape(-1) if axis is None else x
        dim = 0 if axis is None else int(axis) % x.dim()
        values, inverse, counts = torch.unique(data, sorted=True, return_inverse=True, return_counts=True, dim=dim)
        positions = torch.arange(data.shape[dim], device=x.device)
        first = torch.full((values.shape[dim],), data.shape[dim], dtype=torch.int64, device=x.device)
        first = first.scatter_reduce(0, inverse, positions, "amin")
        if not ordered:  # the order of first occurrence
            order = torch.argsort(first)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(order.numel(), device=x.device)
            values, first, counts, inverse = values.index_select(dim, order), first[order], counts[order], rank[inverse]
        return values, first, inverse, counts

    return function_result(node, unique)


@converter("TensorScatter", 24, "linear and circular")
def _tensor_scatter(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    mode = node.attributes.get("mode", "linear")
    axis_attr = int(node.attributes.get("axis", -2))
    if mode not in ("linear", "circular"):
        raise Unsupported(f"TensorScatter mode {mode!r} is not supported")

    def tensor_scatter(cache: torch.Tensor, update: torch.Tensor, write: torch.Tensor | None = None) -> torch.Tensor:
        axis = axis_attr % cache.dim()
        length, count = cache.shape[axis], update.shape[axis]
        starts = write.long().tolist() if write is not None else [0] * cache.shape[0]
        out = cache.clone()
        for batch, start in enumerate(starts):  # each batch row writes at its own position
            positions = torch.arange(start, start + count, device=cache.device)
            if mode == "circular":
                positions = positions % length
            out[batch].index_copy_(axis - 1, positions, update[batch])
        return out

    return function_result(node, tensor_scatter)
