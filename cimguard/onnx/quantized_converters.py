"""Torch converters for the activation quantizers: ``QuantizeLinear``, ``DequantizeLinear``, ``DynamicQuantizeLinear``.

The forward pass is exact ONNX arithmetic: ``QuantizeLinear`` is
``saturate(round_half_even(x / scale) + zero_point)`` (``torch.round`` rounds half to even) and
``DequantizeLinear`` is ``(x - zero_point) · scale``.  Integer tensors travel between them as float32
tensors holding whole numbers (exact below 2**24, far beyond any 8- or 16-bit code), so every torch
operator between a quantizer and a dequantizer (``MaxPool``, ``Reshape``, ``Flatten`` on codes) computes
what onnxruntime computes on the integers.

The gradient is a straight-through estimator: rounding passes gradients through unchanged,
saturation stops them outside the integer range (the usual clipped estimator).  Solvers and
trainers search with the quantizers in place; the accuracy the core reports is recomputed with the
exact forward pass, which the estimator does not change.

Weights never reach these modules: :mod:`cimguard.onnx.quantized` folds every dequantized constant
into a float initializer before conversion.  Importing this module registers the converters through
onnx2torch's own registry (``cimguard.onnx.model`` imports it before any conversion).
"""

from __future__ import annotations

import torch
from onnx import TensorProto, defs
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxToTorchModule, OperationConverterResult, onnx_mapping_from_node
from torch import fx, nn

from cimguard.onnx.quantized import DEFAULT_QUANTIZED_TYPE, INTEGER_TYPES

#: ONNX versions of the quantizers (opset 21 added int4/uint4 and blocks, later ones more types).
QUANTIZER_VERSIONS = (10, 13, 19, 21, 23, 24, 25)


def round_straight_through(x: torch.Tensor) -> torch.Tensor:
    """``torch.round(x)`` (half to even) in value, the identity in gradient.

    ``x - x.detach()`` is exactly zero, so the value is the rounded one bit for bit.
    """
    return torch.round(x.detach()) + (x - x.detach())


def _broadcast(param: torch.Tensor, x: torch.Tensor, axis: int, block_size: int) -> torch.Tensor:
    """A scale or zero point shaped to broadcast against ``x`` (per tensor, per axis or per block)."""
    if param.numel() == 1:
        return param.reshape(())
    axis %= x.dim()
    if block_size:
        return param.repeat_interleave(block_size, dim=axis).narrow(axis, 0, x.shape[axis])
    shape = [1] * x.dim()
    shape[axis] = -1
    return param.reshape(shape)


#: Torch integer types of the codes a graph output holds (int4/uint4 have none: they stay float32).
_TORCH_INTEGER = {TensorProto.INT8: torch.int8, TensorProto.UINT8: torch.uint8, TensorProto.INT16: torch.int16,
                  TensorProto.INT32: torch.int32}


class OnnxQuantizeLinear(nn.Module, OnnxToTorchModule):
    """``y = saturate(round(x / scale) + zero_point)``; codes as float32, straight-through gradient.

    ``output_dtype``: the integer type to return when the codes are a graph output (the file's own type)."""

    def __init__(self, low: int, high: int, axis: int, block_size: int, output_dtype: torch.dtype | None = None):
        super().__init__()
        self.low, self.high, self.axis, self.block_size = low, high, axis, block_size
        self.output_dtype = output_dtype

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        scale = _broadcast(scale.to(x.dtype), x, self.axis, self.block_size)
        codes = round_straight_through(x / scale)
        if zero_point is not None:
            codes = codes + _broadcast(zero_point.to(x.dtype), x, self.axis, self.block_size)
        codes = codes.clamp(self.low, self.high)
        return codes if self.output_dtype is None else codes.to(self.output_dtype)


class OnnxDequantizeLinear(nn.Module, OnnxToTorchModule):
    """``y = (x - zero_point) · scale`` on float32 codes."""

    def __init__(self, axis: int, block_size: int):
        super().__init__()
        self.axis, self.block_size = axis, block_size

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(scale.dtype) if not x.is_floating_point() else x
        if zero_point is not None:
            x = x - _broadcast(zero_point.to(x.dtype), x, self.axis, self.block_size)
        return x * _broadcast(scale.to(x.dtype), x, self.axis, self.block_size)


class OnnxDynamicQuantizeLinear(nn.Module, OnnxToTorchModule):
    """ONNX ``DynamicQuantizeLinear``: uint8 codes with a scale and zero point computed from ``x`` itself.

    ``scale = (max(0, max x) - min(0, min x)) / 255``, ``zero_point = saturate(round(-min(0, min x) / scale))``,
    over the whole tensor (the batch included, as in onnxruntime).
    """

    def __init__(self, integer_outputs: tuple[bool, bool] = (False, False)):
        super().__init__()
        self.integer_outputs = integer_outputs
        """Whether ``y`` and ``y_zero_point`` are graph outputs (returned as uint8, the file's type)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        codes, scale, zero_point = self._quantize(x)
        if self.integer_outputs[0]:
            codes = codes.to(torch.uint8)
        if self.integer_outputs[1]:
            zero_point = zero_point.to(torch.uint8)
        return codes, scale, zero_point

    def _quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        low = torch.clamp(x.min(), max=0.0)
        high = torch.clamp(x.max(), min=0.0)
        scale = (high - low) / 255.0
        # An all-zero input has no range: any scale quantizes it to the zero point exactly.
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        zero_point = torch.round(-low.detach() / safe.detach()).clamp(0, 255)
        codes = (round_straight_through(x / safe) + zero_point).clamp(0, 255)
        return codes, scale, zero_point


class _QuantizeDequantize(torch.autograd.Function):
    """``(saturate(round(x / scale) + zero) - zero) · scale`` in one pass of in-place arithmetic (exactly the
    two modules' values), with the clipped straight-through gradient: one inside the integer range, zero
    where the code saturates."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, scale, zero, low, high):  # noqa: D102 - see the class
        codes = torch.div(x, scale).round_().add_(zero)
        return codes.clamp_(low, high).sub_(zero).mul_(scale)

    @staticmethod
    def setup_context(ctx, inputs, output):  # noqa: ARG004, D102
        x, scale, zero, low, high = inputs
        ctx.save_for_backward(x, scale, zero)
        ctx.limits = (low, high)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        x, scale, zero = ctx.saved_tensors
        low, high = ctx.limits
        codes = torch.div(x, scale).round_().add_(zero)
        return grad * ((codes >= low) & (codes <= high)), None, None, None, None


class OnnxQuantizeDequantize(nn.Module, OnnxToTorchModule):
    """A ``QuantizeLinear`` whose only consumer is a ``DequantizeLinear`` with the same scale and zero point
    (the QDQ pattern on every activation), fused: the same values bit for bit, a fraction of the passes
    over memory (:func:`fuse_quantize_dequantize`)."""

    def __init__(self, low: int, high: int, axis: int, block_size: int):
        super().__init__()
        self.low, self.high, self.axis, self.block_size = low, high, axis, block_size

    def forward(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor | None = None) -> torch.Tensor:
        scale = _broadcast(scale.to(x.dtype), x, self.axis, self.block_size)
        zero = (torch.zeros((), dtype=x.dtype, device=x.device) if zero_point is None
                else _broadcast(zero_point.to(x.dtype), x, self.axis, self.block_size))
        return _QuantizeDequantize.apply(x, scale, zero, float(self.low), float(self.high))


def fuse_quantize_dequantize(module: fx.GraphModule) -> int:
    """Replace every ``QuantizeLinear`` → ``DequantizeLinear`` pair with the same parameters by one
    :class:`OnnxQuantizeDequantize`; returns how many pairs were fused."""
    fused = 0
    for node in list(module.graph.nodes):
        if node.op != "call_module" or not isinstance(module.get_submodule(node.target), OnnxDequantizeLinear):
            continue
        source = node.args[0] if node.args else None
        if getattr(source, "op", None) != "call_module" or len(source.users) != 1:
            continue
        quantize, dequantize = module.get_submodule(source.target), module.get_submodule(node.target)
        if (not isinstance(quantize, OnnxQuantizeLinear) or (quantize.axis, quantize.block_size) !=
                (dequantize.axis, dequantize.block_size) or not _same_parameters(module, source.args[1:], node.args[1:])):
            continue
        name = f"{source.target}_dequantized"
        module.add_submodule(name, OnnxQuantizeDequantize(quantize.low, quantize.high, quantize.axis,
                                                          quantize.block_size))
        with module.graph.inserting_before(node):
            replacement = module.graph.call_module(name, source.args)
        node.replace_all_uses_with(replacement)
        module.graph.erase_node(node)
        module.graph.erase_node(source)
        fused += 1
    if fused:
        module.graph.lint()
        module.delete_all_unused_submodules()
        module.recompile()
    return fused


def _same_parameters(module: fx.GraphModule, first: tuple, second: tuple) -> bool:
    """Scale and zero point given by the same nodes, or by constants with equal values."""
    if len(first) != len(second):
        return False
    for a, b in zip(first, second):
        if a is b:
            continue
        if getattr(a, "op", None) != "get_attr" or getattr(b, "op", None) != "get_attr":
            return False
        left, right = _attribute(module, a.target), _attribute(module, b.target)
        if left.dtype != right.dtype or not torch.equal(left, right):
            return False
    return True


def _attribute(module: fx.GraphModule, target: str) -> torch.Tensor:
    owner, _, name = target.rpartition(".")
    return getattr(module.get_submodule(owner) if owner else module, name)


def _zero_point_type(node: OnnxNode, graph: OnnxGraph) -> int:
    values = node.input_values
    if len(values) > 2 and values[2]:
        tensor = graph.initializers.get(values[2])
        if tensor is not None:
            return tensor.proto.data_type
        raise NotImplementedError("QuantizeLinear with a zero point computed at run time is not supported")
    return int(node.attributes.get("output_dtype", 0)) or DEFAULT_QUANTIZED_TYPE


def _quantize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    elem_type = _zero_point_type(node, graph)
    if elem_type not in INTEGER_TYPES or elem_type == TensorProto.INT32:
        raise NotImplementedError(f"QuantizeLinear to {TensorProto.DataType.Name(elem_type)} is not supported")
    if node.attributes.get("precision", 0):
        raise NotImplementedError("QuantizeLinear with a 'precision' attribute is not supported")
    low, high, _ = INTEGER_TYPES[elem_type]
    output = _TORCH_INTEGER.get(elem_type) if node.output_values[0] in graph.output_values else None
    module = OnnxQuantizeLinear(low, high, int(node.attributes.get("axis", 1)), int(node.attributes.get("block_size", 0)),
                                output)
    return OperationConverterResult(module, onnx_mapping_from_node(node))


def _dequantize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    module = OnnxDequantizeLinear(int(node.attributes.get("axis", 1)), int(node.attributes.get("block_size", 0)))
    return OperationConverterResult(module, onnx_mapping_from_node(node))


def _dynamic_quantize(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    outputs = list(node.output_values) + ["", "", ""]
    integer = (outputs[0] in graph.output_values, outputs[2] in graph.output_values)
    return OperationConverterResult(OnnxDynamicQuantizeLinear(integer), onnx_mapping_from_node(node))


def _register(op: str, version: int, converter) -> None:
    description = OperationDescription(domain=defs.ONNX_DOMAIN, operation_type=op, version=version)
    # The quantization path needs codes as float32 with a straight-through gradient; a converter
    # registered elsewhere for the same operator (integer tensors, no gradient) would break it.
    _CONVERTER_REGISTRY.pop(description, None)
    add_converter(operation_type=op, version=version)(converter)


def _register_all() -> None:
    newest = defs.onnx_opset_version()
    for version in QUANTIZER_VERSIONS:
        if version <= newest:
            _register("QuantizeLinear", version, _quantize)
            _register("DequantizeLinear", version, _dequantize)
    _register("DynamicQuantizeLinear", 11, _dynamic_quantize)


_register_all()
