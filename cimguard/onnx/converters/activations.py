"""Element-wise functions: activations (``Gelu`` 20, ``Mish``, ``Swish``, ``Selu``, ``Elu``,
``Celu`` and ``HardSigmoid`` with their attributes, ``Shrink``, ``ThresholdedRelu``,
``Softsign``), hyperbolic functions, ``Hardmax``, bitwise operators and ``BitShift``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult, onnx_mapping_from_node
from torch import nn

from cimguard.onnx.converters.registry import Unsupported, constant_input, converter, function_result


@converter("Gelu", 20, "new")
def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise Unsupported(f"Gelu approximate={approximate!r} is not supported")
    return OperationConverterResult(nn.GELU(approximate=approximate), onnx_mapping_from_node(node))


def _unary(op: str, since: int, function, replace: bool = False, how: str = "new") -> None:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
        return function_result(node, function(node))

    converter(op, since, how, replace=replace)(convert)


_unary("Sinh", 9, lambda node: torch.sinh)
_unary("Cosh", 9, lambda node: torch.cosh)
_unary("Asinh", 9, lambda node: torch.asinh)
_unary("Acosh", 9, lambda node: torch.acosh)
_unary("Atanh", 9, lambda node: torch.atanh)
_unary("Mish", 18, lambda node: F.mish)
_unary("Swish", 24, lambda node: (lambda x, a=float(node.attributes.get("alpha", 1.0)): x * torch.sigmoid(a * x)))
_unary("Softsign", 1, lambda node: F.softsign)
_unary("Selu", 1, lambda node: (
    lambda x, a=float(node.attributes.get("alpha", 1.67326319217681884765625)),
    g=float(node.attributes.get("gamma", 1.05070102214813232421875)): g * torch.where(x > 0, x, a * (torch.exp(x) - 1))),
    replace=True, how="alpha and gamma")
_unary("Elu", 1, lambda node: (
    lambda x, a=float(node.attributes.get("alpha", 1.0)): torch.where(x > 0, x, a * (torch.exp(x) - 1))),
    replace=True, how="alpha")
_unary("Celu", 12, lambda node: (lambda x, a=float(node.attributes.get("alpha", 1.0)): F.celu(x, a)), replace=True)
_unary("HardSigmoid", 1, lambda node: (
    lambda x, a=float(node.attributes.get("alpha", 0.2)), b=float(node.attributes.get("beta", 0.5)):
    torch.clamp(a * x + b, 0, 1)), replace=True, how="alpha and beta")
_unary("ThresholdedRelu", 10, lambda node: (
    lambda x, a=float(node.attributes.get("alpha", 1.0)): torch.where(x > a, x, torch.zeros_like(x))))
_unary("Shrink", 9, lambda node: (
    lambda x, l=float(node.attributes.get("lambd", 0.5)), b=float(node.attributes.get("bias", 0.0)):
    torch.where(x < -l, x + b, torch.where(x > l, x - b, torch.zeros_like(x))).to(x.dtype)))


def _hardmax(node: OnnxNode) -> object:
    axis = int(node.attributes.get("axis", -1))

    def hardmax(x: torch.Tensor) -> torch.Tensor:
        index = x.argmax(dim=axis, keepdim=True)  # the first maximum, as ONNX asks
        return torch.zeros_like(x).scatter(axis, index, 1)

    return hardmax


_unary("Hardmax", 13, _hardmax)


def _flat_hardmax(node: OnnxNode) -> object:
    axis = int(node.attributes.get("axis", 1))

    def hardmax(x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(*x.shape[:axis % x.dim()], -1)
        return torch.zeros_like(flat).scatter(-1, flat.argmax(-1, keepdim=True), 1).reshape(x.shape)

    return hardmax


converter("Hardmax", 1, "opset 1-11: coerced to 2D", until=11)(
    lambda node, graph: function_result(node, _flat_hardmax(node)))

_BITWISE = {"BitwiseAnd": torch.bitwise_and, "BitwiseOr": torch.bitwise_or, "BitwiseXor": torch.bitwise_xor}
def _elementwise(function):
    return lambda node, graph: function_result(node, function)


for _op, _function in _BITWISE.items():
    converter(_op, 18, "new")(_elementwise(_function))
converter("BitwiseNot", 18, "new")(lambda node, graph: function_result(node, torch.bitwise_not))


@converter("BitShift", 11, "new")
def _bit_shift(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    left = node.attributes.get("direction") == "LEFT"

    def shift(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # Unsigned ONNX types: shift in int64 (torch's uint16/32/64 lack shift kernels), wrap back.
        wide, amount = x.to(torch.int64), y.to(torch.int64)
        bits = x.dtype.itemsize * 8
        result = wide << amount if left else wide >> amount
        if bits < 64:
            result = result & ((1 << bits) - 1)
        return result.to(x.dtype)

    return function_result(node, shift)


@converter("IsInf", 10, "detect_positive / detect_negative", replace=True)
def _is_inf(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    positive = bool(node.attributes.get("detect_positive", 1))
    negative = bool(node.attributes.get("detect_negative", 1))

    def is_inf(x: torch.Tensor) -> torch.Tensor:
        return (torch.isposinf(x) & positive) | (torch.isneginf(x) & negative)

    return function_result(node, is_inf)


def _dropout_needs_own(node) -> bool:
    """Dropout that onnx2torch refuses (a seed) or whose mask is used; legalisation removes the rest."""
    return any(a.name == "seed" for a in node.attribute) or (len(node.output) > 1 and bool(node.output[1]))


@converter("Dropout", 12, "inference: identity and an all-true mask", replace=True, when=_dropout_needs_own)
def _dropout(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    training = constant_input(node, graph, 2, "training_mode")
    if training is not None and bool(training.reshape(-1)[0]):
        raise Unsupported("Dropout in training mode (random) is not supported")

    def dropout(x: torch.Tensor, ratio=None, training_mode=None):
        return x, torch.ones_like(x, dtype=torch.bool)

    return function_result(node, dropout)
