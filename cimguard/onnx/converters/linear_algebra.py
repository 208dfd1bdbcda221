"""Linear algebra and integer arithmetic: ``Det``, ``MatMulInteger``, ``QLinearMatMul``
(per-tensor or per-row/column scales and zero points, rounding half to even, saturation)."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import converter, function_result


@converter("Det", 11, "new")
def _det(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    return function_result(node, torch.linalg.det)


def _centred(x: torch.Tensor, zero: torch.Tensor | None, row_axis: bool) -> torch.Tensor:
    """``x - zero_point`` in int64; a 1-D zero point is per row of A / per column of B."""
    wide = x.to(torch.int64)
    if zero is None:
        return wide
    zero = zero.to(torch.int64)
    if zero.dim() == 1 and zero.numel() > 1:
        zero = zero.reshape(-1, 1) if row_axis else zero.reshape(1, -1)
    return wide - zero


@converter("MatMulInteger", 10, "new")
def _matmul_integer(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    def matmul_integer(a, b, a_zero=None, b_zero=None):
        return (_centred(a, a_zero, True) @ _centred(b, b_zero, False)).to(torch.int32)

    return function_result(node, matmul_integer)


def _per_axis(scale: torch.Tensor, row_axis: bool) -> torch.Tensor:
    scale = scale.to(torch.float64)
    if scale.dim() == 1 and scale.numel() > 1:
        return scale.reshape(-1, 1) if row_axis else scale.reshape(1, -1)
    return scale


@converter("QLinearMatMul", 10, "new")
def _qlinear_matmul(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    def qlinear_matmul(a, a_scale, a_zero, b, b_scale, b_zero, y_scale, y_zero):
        real = (_centred(a, a_zero, True).double() * _per_axis(a_scale, True)) @ \
            (_centred(b, b_zero, False).double() * _per_axis(b_scale, False))
        quantised = torch.round(real / y_scale.double()) + y_zero.to(torch.float64)
        info = torch.iinfo(y_zero.dtype)
        return quantised.clamp(info.min, info.max).to(y_zero.dtype)

    return function_result(node, qlinear_matmul)
