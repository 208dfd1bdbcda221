"""Pooling and convolutions onnx2torch lacks: ``AveragePool`` and ``LpPool`` (any padding, dilations, ``ceil_mode``),
``MaxPool`` (pads larger than half the kernel, dilations, the ``Indices`` output with either
storage order), ``GlobalMaxPool``, ``GlobalLpPool``, ``MaxUnpool``, ``ConvTranspose`` (``output_shape``,
``auto_pad``, asymmetric pads) and ``DeformConv``.

The windows are computed the way onnxruntime does: the input is padded explicitly, the
``ceil_mode`` overhang is added at the end, and a window sum is a grouped convolution with a
kernel of ones (dilations included)."""

from __future__ import annotations

import math
from typing import Sequence

import onnx
import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from cimguard.onnx.converters.registry import (
    OnnxToTorchModule,
    Unsupported,
    attribute,
    converter,
    function_result,
)

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_MAXPOOL = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}


class Window:
    """The geometry of a pooling node: kernel, strides, dilations, begin/end pads, ceil mode."""

    def __init__(self, node: OnnxNode):
        attrs = node.attributes
        self.kernel = tuple(int(k) for k in attrs["kernel_shape"])
        rank = len(self.kernel)
        if rank not in (1, 2, 3):
            raise Unsupported(f"{node.operation_type} with spatial rank {rank} is not supported")
        if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Unsupported(f"{node.operation_type} with auto_pad SAME_* needs static shapes "
                              "(legalisation makes pads explicit)")
        self.strides = tuple(int(s) for s in attribute(node, "strides", None) or [1] * rank)
        self.dilations = tuple(int(d) for d in attribute(node, "dilations", None) or [1] * rank)
        pads = attribute(node, "pads", None) or [0] * 2 * rank
        if attrs.get("auto_pad", "NOTSET") == "VALID":
            pads = [0] * 2 * rank
        self.begin = tuple(int(p) for p in pads[:rank])
        self.end = tuple(int(p) for p in pads[rank:])
        self.ceil_mode = bool(attrs.get("ceil_mode", 0))

    def extra(self, spatial: Sequence[int]) -> list[int]:
        """Elements past the end pad that the last (ceil-mode) window reaches."""
        extra = []
        for size, k, s, d, b, e in zip(spatial, self.kernel, self.strides, self.dilations, self.begin, self.end):
            span = int(size) + b + e - ((k - 1) * d + 1)
            out = (math.ceil(span / s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (out - 1) * s >= int(size) + b:
                out -= 1  # ONNX/torch rule: the last window must start inside the input or left pad
            extra.append(max((out - 1) * s + (k - 1) * d + 1 - (int(size) + b + e), 0))
        return extra

    def padding(self, spatial: Sequence[int]) -> list[int]:
        """``F.pad`` arguments (last dimension first) for the pads plus the ceil-mode overhang."""
        torch_pads: list[int] = []
        for b, e, more in reversed(list(zip(self.begin, self.end, self.extra(spatial)))):
            torch_pads += [b, e + more]
        return torch_pads

    def window_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over each window of an already padded ``x``."""
        channels = x.shape[1]
        ones = torch.ones((channels, 1, *self.kernel), dtype=x.dtype, device=x.device)
        return _CONV[len(self.kernel)](x, ones, stride=self.strides, dilation=self.dilations, groups=channels)


class OnnxAveragePool(nn.Module, OnnxToTorchModule):
    """ONNX ``AveragePool`` as onnxruntime computes it: with ``count_include_pad=0`` each window
    is divided by the number of real input elements in it, with 1 by the elements inside the pads."""

    def __init__(self, window: Window, count_include_pad: bool):
        super().__init__()
        self.window = window
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window = self.window
        spatial = x.shape[2:]
        sums = window.window_sum(F.pad(x, window.padding(spatial)))
        if self.count_include_pad:
            inner = [int(size) + b + e for size, b, e in zip(spatial, window.begin, window.end)]
            mask = F.pad(torch.ones((1, 1, *inner), dtype=x.dtype, device=x.device),
                         [p for more in reversed(window.extra(spatial)) for p in (0, more)])
        else:
            mask = F.pad(torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device), window.padding(spatial))
        counts = window.window_sum(mask)
        return sums / counts


def _average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    module = OnnxAveragePool(Window(node), bool(node.attributes.get("count_include_pad", 0)))
    return OperationConverterResult(module, onnx_mapping_from_node(node))


def _lp_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    window = Window(node)
    p = float(node.attributes.get("p", 2))

    def lp_pool(x: torch.Tensor) -> torch.Tensor:
        sums = window.window_sum(F.pad(x.abs() ** p, window.padding(x.shape[2:])))
        return sums ** (1.0 / p)

    return function_result(node, lp_pool)


def _max_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    window = Window(node)
    column_major = bool(node.attributes.get("storage_order", 0))
    with_indices = len(node.output_values) > 1 and bool(node.output_values[1])

    def max_pool(x: torch.Tensor):
        spatial = list(x.shape[2:])
        fill = -math.inf if x.is_floating_point() else torch.iinfo(x.dtype).min
        source = x if x.is_floating_point() else x.double()
        padded = F.pad(source, window.padding(spatial), value=fill)
        if not with_indices:
            return _MAXPOOL[len(spatial)](padded, window.kernel, window.strides, 0, window.dilations).to(x.dtype)
        values, flat = _MAXPOOL[len(spatial)](padded, window.kernel, window.strides, 0, window.dilations,
                                             return_indices=True)
        values = values.to(x.dtype)
        # torch's index is flat in the padded plane; ONNX's is flat in the whole unpadded tensor.
        padded_shape = padded.shape[2:]
        coords = []
        rest = flat
        for size in reversed(padded_shape):
            coords.append(rest % size)
            rest = rest // size
        coords = [c - b for c, b in zip(reversed(coords), window.begin)]
        index = torch.zeros_like(flat)
        order = list(range(len(spatial)))
        if column_major:
            order = order[::-1]
        for axis in order:
            index = index * spatial[axis] + coords[axis]
        plane = math.prod(spatial)
        base = torch.arange(x.shape[0] * x.shape[1], device=x.device).reshape(x.shape[0], x.shape[1],
                                                                              *[1] * len(spatial))
        return values, index + base * plane

    return function_result(node, max_pool)


def _global(reduce_name: str):
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
        p = float(node.attributes.get("p", 2))

        def pool(x: torch.Tensor) -> torch.Tensor:
            dims = list(range(2, x.dim()))
            if reduce_name == "max":
                return x.amax(dim=dims, keepdim=True)
            return (x.abs() ** p).sum(dim=dims, keepdim=True) ** (1.0 / p)

        return function_result(node, pool)

    return convert


converter("AveragePool", 1, "exact padding, dilations, ceil mode", replace=True)(_average_pool)
converter("LpPool", 1, "new")(_lp_pool)
def _max_pool_needs_own(node: onnx.NodeProto) -> bool:
    """Indices output, or pads torch's pooling refuses (more than half the dilated kernel)."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    if len(node.output) > 1 and node.output[1]:
        return True
    kernel = list(attrs.get("kernel_shape", []))
    dilations = list(attrs.get("dilations", [1] * len(kernel)))
    pads = list(attrs.get("pads", [0] * 2 * len(kernel)))
    half = [((k - 1) * d + 1) // 2 for k, d in zip(kernel, dilations)]
    return any(p > h for p, h in zip(pads, half + half)) or pads[: len(kernel)] != pads[len(kernel):]


converter("MaxPool", 8, "any pads, dilations, Indices output", replace=True, when=_max_pool_needs_own)(_max_pool)
converter("GlobalMaxPool", 1, "new", replace=True)(_global("max"))
converter("GlobalLpPool", 2, "new", replace=True)(_global("lp"))


# --- ConvTranspose -----------------------------------------------------------------

_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _conv_transpose_needs_own(node: onnx.NodeProto) -> bool:
    """``output_shape`` or ``auto_pad`` (onnx2torch ignores both), or asymmetric pads."""
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    pads = list(attrs.get("pads", []))
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    return ("output_shape" in attrs or auto_pad not in (b"NOTSET", "NOTSET")
            or pads[: len(pads) // 2] != pads[len(pads) // 2:])


def _conv_transpose(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    attrs = node.attributes
    auto_pad = attrs.get("auto_pad", "NOTSET")
    group = int(attrs.get("group", 1))

    def conv_transpose(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        rank = x.dim() - 2
        if rank not in _CONV_TRANSPOSE:
            raise Unsupported(f"ConvTranspose with spatial rank {rank} is not supported")
        kernel = list(attribute(node, "kernel_shape", None) or w.shape[2:])
        strides = list(attribute(node, "strides", None) or [1] * rank)
        dilations = list(attribute(node, "dilations", None) or [1] * rank)
        extra = list(attribute(node, "output_padding", None) or [0] * rank)
        pads = list(attribute(node, "pads", None) or [0] * 2 * rank)
        wanted = attribute(node, "output_shape", None)
        y = _CONV_TRANSPOSE[rank](x, w, None, strides, 0, 0, group, dilations)
        for axis in range(rank):
            size = x.shape[2 + axis]
            full = strides[axis] * (size - 1) + (kernel[axis] - 1) * dilations[axis] + 1
            if wanted or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
                out = int(wanted[-rank + axis]) if wanted else size * strides[axis]
                total = full + extra[axis] - out
                begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            else:
                begin = pads[axis] if auto_pad == "NOTSET" else 0
                end = pads[rank + axis] if auto_pad == "NOTSET" else 0
                out = full + extra[axis] - begin - end
            dim = 2 + axis
            if begin + out > y.shape[dim]:  # output_padding reaches past the computed values: zeros
                pad = [0, 0] * (y.dim() - dim - 1) + [0, begin + out - y.shape[dim]]
                y = F.pad(y, pad)
            y = y.narrow(dim, begin, out) if begin >= 0 else F.pad(y, [0, 0] * (y.dim() - dim - 1) + [-begin, 0]).narrow(dim, 0, out)
        if b is not None:
            y = y + b.reshape(1, -1, *[1] * rank)
        return y

    return function_result(node, conv_transpose)


converter("ConvTranspose", 1, "output_shape, auto_pad, asymmetric pads", replace=True,
          when=_conv_transpose_needs_own)(_conv_transpose)


_MAX_UNPOOL = {1: F.max_unpool1d, 2: F.max_unpool2d, 3: F.max_unpool3d}


@converter("MaxUnpool", 9, "new")
def _max_unpool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    kernel = [int(k) for k in node.attributes["kernel_shape"]]
    rank = len(kernel)
    strides = attribute(node, "strides", None) or [1] * rank
    pads = attribute(node, "pads", None) or [0] * 2 * rank
    if rank not in _MAX_UNPOOL:
        raise Unsupported(f"MaxUnpool with spatial rank {rank} is not supported")
    if len(node.input_values) > 2 and node.input_values[2]:
        # Where the values land in a larger output is read differently by the reference and onnxruntime.
        raise Unsupported("MaxUnpool with an output_shape input is not supported")

    def max_unpool(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        spatial = [(size - 1) * s + k - pads[i] - pads[rank + i]
                   for i, (size, s, k) in enumerate(zip(x.shape[2:], strides, kernel))]
        # ONNX indices are flat over the whole tensor; torch's over one (N, C) plane.
        plane = math.prod(spatial)
        return _MAX_UNPOOL[rank](x, indices.long() % plane, kernel, strides, 0, [x.shape[0], x.shape[1], *spatial])

    return function_result(node, max_unpool)


@converter("DeformConv", 19, "2-D, symmetric pads (torchvision's deform_conv2d)")
def _deform_conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    strides = attribute(node, "strides", None) or [1, 1]
    dilations = attribute(node, "dilations", None) or [1, 1]
    pads = attribute(node, "pads", None) or [0, 0, 0, 0]
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise Unsupported("DeformConv with asymmetric pads or a spatial rank other than 2 is not supported")

    def deform_conv(x, w, offset, b=None, mask=None):
        from torchvision.ops import deform_conv2d

        # torchvision reads the groups and offset groups from the weight and offset shapes, as ONNX defines them.
        return deform_conv2d(x, offset, w, b, stride=strides, padding=pads[:2], dilation=dilations, mask=mask)

    return function_result(node, deform_conv)
