"""Sampling and image-layout operators: ``GridSample`` (opset 16: bilinear/nearest/bicubic;
20+: linear/nearest/cubic, 2-D and 3-D), ``AffineGrid``, ``Col2Im`` and
``CenterCropPad``."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, attribute, converter, function_result

_GRID_MODES = {"bilinear": "bilinear", "linear": "bilinear", "nearest": "nearest", "bicubic": "bicubic",
               "cubic": "bicubic"}


@converter("GridSample", 16, "2-D and 3-D (no cubic in 3-D)")
def _grid_sample(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    mode = node.attributes.get("mode", "bilinear")
    padding = node.attributes.get("padding_mode", "zeros")
    align = bool(node.attributes.get("align_corners", 0))
    if mode not in _GRID_MODES or padding not in ("zeros", "border", "reflection"):
        raise Unsupported(f"GridSample mode {mode!r} with padding {padding!r} is not supported")

    def grid_sample(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        if x.dim() not in (4, 5) or (x.dim() == 5 and _GRID_MODES[mode] == "bicubic"):
            raise Unsupported(f"GridSample {mode!r} on a rank-{x.dim()} input is not supported")
        return F.grid_sample(x, grid.to(x.dtype), mode=_GRID_MODES[mode], padding_mode=padding, align_corners=align)

    return function_result(node, grid_sample)


@converter("AffineGrid", 20, "2-D and 3-D")
def _affine_grid(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    align = bool(node.attributes.get("align_corners", 0))

    def affine_grid(theta: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return F.affine_grid(theta, [int(s) for s in size.tolist()], align_corners=align)

    return function_result(node, affine_grid)


@converter("Col2Im", 18, "any number of spatial dimensions")
def _col2im(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    def col2im(x: torch.Tensor, image: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
        sizes = [int(s) for s in image.tolist()]
        blocks = [int(b) for b in block.tolist()]
        rank = len(sizes)
        dilations = attribute(node, "dilations", None) or [1] * rank
        pads = attribute(node, "pads", None) or [0] * 2 * rank
        strides = attribute(node, "strides", None) or [1] * rank
        padded = [s + pads[i] + pads[rank + i] for i, s in enumerate(sizes)]
        counts = [(p - d * (b - 1) - 1) // st + 1 for p, d, b, st in zip(padded, dilations, blocks, strides)]
        n, channels = x.shape[0], x.shape[1] // math.prod(blocks)
        columns = x.reshape(n, channels, math.prod(blocks), math.prod(counts))
        # The padded-image position of every (block offset, block position) pair, flattened.
        offsets = torch.cartesian_prod(*[torch.arange(b) * d for b, d in zip(blocks, dilations)]).reshape(-1, rank)
        starts = torch.cartesian_prod(*[torch.arange(c) * st for c, st in zip(counts, strides)]).reshape(-1, rank)
        position = offsets[:, None, :] + starts[None, :, :]
        flat = torch.zeros(position.shape[:2], dtype=torch.int64)
        for axis in range(rank):
            flat = flat * padded[axis] + position[..., axis]
        out = torch.zeros((n, channels, math.prod(padded)), dtype=x.dtype, device=x.device)
        out.index_add_(2, flat.reshape(-1).to(x.device), columns.reshape(n, channels, -1))
        out = out.reshape(n, channels, *padded)
        for axis in range(rank):
            out = out.narrow(2 + axis, pads[axis], sizes[axis])
        return out

    return function_result(node, col2im)


@converter("CenterCropPad", 18, "new")
def _center_crop_pad(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axes = attribute(node, "axes", None)

    def center_crop_pad(x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        chosen = [a % x.dim() for a in axes] if axes else list(range(x.dim()))
        y = x
        for axis, target in zip(chosen, [int(s) for s in shape.tolist()]):
            size = y.shape[axis]
            if target < size:
                y = y.narrow(axis, (size - target) // 2, target)
            elif target > size:
                shape_pad = list(y.shape)
                begin = (target - size) // 2
                shape_pad[axis] = target
                out = torch.zeros(shape_pad, dtype=y.dtype, device=y.device)
                out.narrow(axis, begin, size).copy_(y)
                y = out
        return y

    return function_result(node, center_crop_pad)
