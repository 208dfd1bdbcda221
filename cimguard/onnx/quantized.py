"""Quantized ONNX files: one path for every form today's tools write, and the record of the file's codes.

A quantized file stores a layer's weight as integer codes ``c`` with a scale ``s`` (per tensor, per
channel ``axis`` or per block ``block_size``) and a zero point ``z``; the weight the network computes
with is ``(c - z) · s``.  Those codes are what a chip programs into its devices, so cimguard maps them
as they are (:class:`cimguard.sim.crossbar.Crossbar`) instead of re-quantising a float copy.

:func:`legalise_quantized` (a pass of :mod:`cimguard.onnx.legalise`, run on the legalised copy only)
brings every form to the same arithmetic, the QDQ form:

* QOperator nodes (``QLinearConv``, ``QLinearMatMul``, and onnxruntime's ``com.microsoft`` ``QGemm``,
  ``QLinearAdd``, ``QLinearMul``, ``QLinearGlobalAveragePool``, ``QLinearAveragePool``,
  ``QLinearConcat``, ``QLinearSigmoid``, ``QLinearLeakyRelu``, ``QLinearSoftmax``) become ``DequantizeLinear`` of each
  input, the float operator, and ``QuantizeLinear`` of the output (an integer bias ``B`` dequantised
  with ``x_scale · w_scale``, as the operators define it);
* dynamic quantization's ``MatMulInteger``/``ConvInteger`` become the float ``MatMul``/``Conv`` of
  dequantized inputs (with the file's scales where onnxruntime's ``Mul`` pattern gives them, see
  :func:`_scale_plan`; else with unit scales, the file's ``Mul`` applying them afterwards);
  ``DynamicQuantizeLinear`` stays and is converted;
* onnxruntime's weight-only ``MatMulNBits`` becomes a ``MatMul`` of its dequantized weight (codes
  unpacked, recorded as uint4 with blocked scales);
* a ``QuantizeLinear`` of a float initializer (fake-quantized exports) becomes the codes it computes;
* every ``DequantizeLinear`` of a constant integer tensor becomes a float initializer holding the
  dequantised value ``(c - z) · s`` (float32, as onnxruntime computes it) and is recorded as a
  :class:`QuantizedTensor`: the crossbar maps its codes, export writes new codes back into the
  file's integer initializer.

Activation ``QuantizeLinear``/``DequantizeLinear`` stay in the graph and are converted by
:mod:`cimguard.onnx.quantized_converters` (round half to even, saturation; a straight-through
gradient).  Scales, zero points, axes and block sizes are checked here, once, with one-line errors.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from cimguard.errors import CimguardError

#: ONNX integer element types a quantized tensor may have: ``type -> (lowest, highest, bits)``.
INTEGER_TYPES: dict[int, tuple[int, int, int]] = {
    TensorProto.INT8: (-128, 127, 8),
    TensorProto.UINT8: (0, 255, 8),
    TensorProto.INT16: (-(2**15), 2**15 - 1, 16),
    TensorProto.UINT16: (0, 2**16 - 1, 16),
    TensorProto.INT4: (-8, 7, 4),
    TensorProto.UINT4: (0, 15, 4),
    TensorProto.INT32: (-(2**31), 2**31 - 1, 32),
}
#: Element types that hold weight codes (int32 is a bias type only).
CODE_TYPES = frozenset(INTEGER_TYPES) - {TensorProto.INT32}

#: ``QuantizeLinear`` without a zero point (and without ``output_dtype``) writes uint8.
DEFAULT_QUANTIZED_TYPE = TensorProto.UINT8

QDQ, QOPERATOR, DYNAMIC, WEIGHT_ONLY = "QDQ", "QOperator", "dynamic", "weight-only"

_MS = "com.microsoft"
_DEFAULT = ("", "ai.onnx")


def type_name(elem_type: int) -> str:
    return TensorProto.DataType.Name(elem_type).lower()


@dataclass(frozen=True)
class QuantizedTensor:
    """A constant tensor the file stores as integer codes: ``value = (codes - zero_point) · scale``."""

    codes: str
    """The initializer of the original file holding the codes (export writes new codes there)."""
    node: str
    """The node that dequantizes it (``DequantizeLinear``, or the QOperator/dynamic node it came from)."""
    form: str
    """``QDQ``, ``QOperator``, ``dynamic`` or ``weight-only``."""
    elem_type: int
    """ONNX element type of the codes (int8, uint8, int4 …)."""
    scale: np.ndarray
    """As stored: a scalar, one value per channel along :attr:`axis`, or one per block."""
    zero_point: np.ndarray
    """Same shape as :attr:`scale` (zeros when the file gives none)."""
    axis: int
    """Non-negative axis of the per-channel or blocked scale (0 for a per-tensor scale)."""
    block_size: int = 0
    """Elements per block along :attr:`axis` (0: not blocked)."""
    shape: tuple[int, ...] = ()
    """Shape of the codes."""
    storage: str = "codes"
    """How :attr:`codes` stores them: ``codes`` (an integer initializer, this layout), ``float`` (a float
    weight that a ``QuantizeLinear`` turns into codes at run time, a fake-quantized export: export writes
    the dequantized new codes there and the file's ``QuantizeLinear`` gives them back exactly) or
    ``nbits`` (``MatMulNBits``'s packed ``[N, blocks, bytes]`` uint8 of the transposed weight)."""

    @property
    def bits(self) -> int:
        return INTEGER_TYPES[self.elem_type][2]

    @property
    def limits(self) -> tuple[int, int]:
        """Lowest and highest code of the element type (saturation)."""
        low, high, _ = INTEGER_TYPES[self.elem_type]
        return low, high

    @property
    def granularity(self) -> str:
        if self.block_size:
            return f"per block of {self.block_size} along axis {self.axis}"
        if self.scale.size == 1:
            return "per tensor"
        return f"per channel (axis {self.axis})"

    def expanded(self, array: np.ndarray) -> np.ndarray:
        """A scale-shaped array broadcast to one value per code."""
        if array.size == 1:
            return np.broadcast_to(array.reshape(()), self.shape)
        if self.block_size:
            return np.repeat(array, self.block_size, axis=self.axis).take(range(self.shape[self.axis]), axis=self.axis)
        view = [1] * len(self.shape)
        view[self.axis] = -1
        return np.broadcast_to(array.reshape(view), self.shape)

    def dequantize(self, codes: np.ndarray) -> np.ndarray:
        """``(codes - zero_point) · scale`` in float32, as onnxruntime's ``DequantizeLinear`` computes it."""
        shifted = codes.astype(np.int64) - self.expanded(self.zero_point).astype(np.int64)
        return shifted.astype(np.float32) * self.expanded(self.scale).astype(np.float32)

    def quantize(self, value: np.ndarray) -> np.ndarray:
        """Codes for float values: ``saturate(round_half_even(value / scale) + zero_point)``."""
        low, high = self.limits
        steps = np.rint(value.astype(np.float32) / self.expanded(self.scale).astype(np.float32))
        return np.clip(steps + self.expanded(self.zero_point), low, high).astype(np.int64)

    def summary(self) -> dict:
        """Plain data for ``inspect``."""
        zero = np.unique(self.zero_point)
        return {"codes": self.codes, "node": self.node, "form": self.form, "type": type_name(self.elem_type),
                "bits": self.bits, "granularity": self.granularity,
                "zero_points": "0" if zero.size == 1 and zero[0] == 0 else
                ", ".join(str(int(z)) for z in zero[:4]) + (" …" if zero.size > 4 else ""),
                "scales": int(self.scale.size)}


@dataclass(frozen=True)
class QuantizedActivation:
    """An activation tensor the file rounds to integers (``QuantizeLinear`` or ``DynamicQuantizeLinear``)."""

    tensor: str
    """The float tensor that is quantized."""
    node: str
    elem_type: int
    granularity: str
    """``per tensor``, ``per channel (axis …)`` or ``dynamic`` (scale computed from each input)."""

    def summary(self) -> dict:
        return {"tensor": self.tensor, "node": self.node, "type": type_name(self.elem_type),
                "bits": INTEGER_TYPES[self.elem_type][2], "granularity": self.granularity}


@dataclass
class Quantization:
    """What a quantized file quantizes, found while legalising it."""

    forms: list[str] = field(default_factory=list)
    """The forms present, in the order met (``QDQ``, ``QOperator``, ``dynamic``, ``weight-only``)."""
    weights: dict[str, QuantizedTensor] = field(default_factory=dict)
    """``{legalised initializer: record}`` for every dequantized constant (weights and biases)."""
    activations: list[QuantizedActivation] = field(default_factory=list)

    def add_form(self, form: str) -> None:
        if form not in self.forms:
            self.forms.append(form)

    @property
    def format(self) -> str:
        return " + ".join(self.forms)

    def summary(self, mapped: dict[str, str] | None = None) -> dict:
        """Plain data for ``inspect``: ``mapped`` names the crossbar layer of each weight."""
        mapped = mapped or {}
        return {"format": self.format,
                "weights": [dict(record.summary(), crossbar_layer=mapped.get(name)) for name, record in self.weights.items()],
                "activations": [activation.summary() for activation in self.activations]}


# --- torch side: the file's codes in a mapped weight's torch layout ------------------------------


@dataclass(frozen=True)
class CodeLayout:
    """A quantized weight's scale and zero point per element, in the torch tensor's layout."""

    step: torch.Tensor
    """The file's scale per weight (times Gemm's alpha when the torch tensor holds it)."""
    zero_point: torch.Tensor
    low: int
    high: int
    bits: int

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """The file's codes for float weights (the nominal weights give the file's codes back exactly)."""
        return (torch.round(weight / self.step) + self.zero_point).clamp(self.low, self.high)

    def dequantize(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes - self.zero_point) * self.step


def code_layout(record: QuantizedTensor, transposed: bool, factor: float, device: torch.device) -> CodeLayout:
    """The record's scale and zero point per element, laid out like the torch tensor (Gemm ``transB=0``
    transposes it, Gemm ``alpha`` multiplies it)."""
    step = record.expanded(record.scale).astype(np.float32)
    zero = record.expanded(record.zero_point).astype(np.float32)
    if transposed:
        step, zero = step.T, zero.T
    step_t = torch.from_numpy(np.ascontiguousarray(step)).to(device)
    if factor != 1.0:
        step_t = step_t * factor
    low, high = record.limits
    return CodeLayout(step_t, torch.from_numpy(np.ascontiguousarray(zero)).to(device), low, high, record.bits)


# --- checks -------------------------------------------------------------------------------------------


def check_parameters(scale: np.ndarray, zero_point: np.ndarray | None, elem_type: int, shape: tuple[int, ...] | None,
                     axis: int, block_size: int, where: str) -> int:
    """Refuse scales, zero points, axes and block sizes that do not fit; returns the non-negative axis."""
    if scale.dtype.kind != "f":
        raise CimguardError(f"{where}: the scale must be a floating-point tensor, got {scale.dtype}")
    if not np.isfinite(scale).all() or not (scale > 0).all():
        bad = scale[~(np.isfinite(scale) & (scale > 0))].reshape(-1)[0]
        raise CimguardError(f"{where}: scales must be finite and positive, found {float(bad):g}")
    if elem_type not in INTEGER_TYPES:
        raise CimguardError(f"{where}: quantized type {type_name(elem_type)} is not an integer type cimguard simulates")
    low, high, _ = INTEGER_TYPES[elem_type]
    if zero_point is not None:
        if zero_point.shape != scale.shape and zero_point.size != scale.size:
            raise CimguardError(f"{where}: the zero point has shape {zero_point.shape}, the scale {scale.shape}")
        if zero_point.size and (zero_point.min() < low or zero_point.max() > high):
            raise CimguardError(f"{where}: zero points must lie in the {type_name(elem_type)} range [{low}, {high}], "
                                f"found {int(zero_point.min() if zero_point.min() < low else zero_point.max())}")
    if shape is None or scale.size == 1 and not block_size:
        return 0 if shape is None else (axis % len(shape) if shape else 0)
    rank = len(shape)
    if not -rank <= axis < rank:
        raise CimguardError(f"{where}: axis {axis} does not fit a tensor of rank {rank}")
    axis %= rank
    if block_size:
        if block_size < 0:
            raise CimguardError(f"{where}: block_size must be positive, got {block_size}")
        expected = list(shape)
        expected[axis] = -(-shape[axis] // block_size)
        if list(scale.shape) != expected:
            raise CimguardError(f"{where}: block_size {block_size} along axis {axis} of shape {tuple(shape)} needs "
                                f"scales of shape {tuple(expected)}, found {tuple(scale.shape)}")
    elif scale.ndim != 1 or scale.shape[0] != shape[axis]:
        raise CimguardError(f"{where}: per-axis scales of shape {tuple(scale.shape)} do not fit axis {axis} of a "
                            f"tensor of shape {tuple(shape)}")
    return axis


# --- the legalisation pass ---------------------------------------------------------------------------


class _Graph:
    """The legalised graph being rewritten: constants by name, fresh names, new initializers."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        self.initializers = {init.name: init for init in model.graph.initializer}
        self.constants = {out: node for node in model.graph.node if node.op_type == "Constant" and node.domain in _DEFAULT
                          for out in node.output}
        self.taken = set(self.initializers) | {out for node in model.graph.node for out in node.output} | {
            value.name for value in model.graph.input}
        self.added: list[onnx.TensorProto] = []
        self.outputs = {value.name for value in model.graph.output}
        self.pending: list[onnx.TensorProto] = []
        """Float weights made by rewrites, added to the graph with the folded ones."""
        self.fake_quantized: dict[str, str] = {}
        """``{codes computed from a constant: the float initializer}`` (see :func:`_quantize_constant`)."""
        self.dropped: set[int] = set()
        """``id`` of nodes a rewrite made unnecessary."""

    def array(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        return None

    def elem_type(self, name: str) -> int | None:
        init = self.initializers.get(name)
        return init.data_type if init is not None else None

    def fresh(self, base: str) -> str:
        name, suffix = base, 1
        while name in self.taken:
            name, suffix = f"{base}_{suffix}", suffix + 1
        self.taken.add(name)
        return name

    def constant(self, base: str, array: np.ndarray) -> str:
        name = self.fresh(base)
        tensor = numpy_helper.from_array(array, name=name)
        self.initializers[name] = tensor
        self.added.append(tensor)
        return name


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


def _dq(graph: _Graph, node: onnx.NodeProto, tag: str, x: str, scale: str, zero: str, axis: int | None = None) -> tuple[onnx.NodeProto, str]:
    # A weight's float copy is named after its codes: the crossbar layer's name in reports.
    out = graph.fresh(f"{x}_dequantized" if tag in ("w", "b") and x in graph.initializers else f"{x}_{tag}_dequantized")
    inputs = [x, scale] + ([zero] if zero else [])
    kwargs = {} if axis is None else {"axis": axis}
    return helper.make_node("DequantizeLinear", inputs, [out], name=graph.fresh(f"{_label(node)}_{tag}_dq"), **kwargs), out


def _q(graph: _Graph, node: onnx.NodeProto, y: str, scale: str, zero: str, output: str) -> onnx.NodeProto:
    inputs = [y, scale] + ([zero] if zero else [])
    return helper.make_node("QuantizeLinear", inputs, [output], name=graph.fresh(f"{_label(node)}_q"))


def _weight_axis(graph: _Graph, scale: str, axis: int) -> int | None:
    array = graph.array(scale)
    return axis if array is not None and array.size > 1 else None


def _bias(graph: _Graph, node: onnx.NodeProto, bias: str, scales: list[str], factor: float = 1.0) -> tuple[list, str]:
    """An int32 bias dequantized with the product of the input and weight scales (zero point 0)."""
    values = [graph.array(name) for name in scales]
    if any(v is None for v in values):
        raise CimguardError(f"node {_label(node)!r} ({node.op_type}): a bias needs constant scales")
    product = np.asarray(values[0], np.float32) * np.asarray(values[1], np.float32) * np.float32(factor)
    scale = graph.constant(f"{bias}_scale", product.astype(np.float32).reshape(-1) if product.size > 1 else
                           product.astype(np.float32).reshape(()))
    dq, out = _dq(graph, node, "bias", bias, scale, "", 0 if product.size > 1 else None)
    return [dq], out


def _rewrite_qoperator(graph: _Graph, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
    """The QDQ equivalent of one QOperator node (``None``: not a QOperator node)."""
    op, domain, i, attrs = node.op_type, node.domain, list(node.input) + [""] * 9, _attrs(node)
    default = domain in _DEFAULT
    nodes: list[onnx.NodeProto] = []
    if op == "QLinearConv" and default:
        dx, x = _dq(graph, node, "x", i[0], i[1], i[2])
        dw, w = _dq(graph, node, "w", i[3], i[4], i[5], _weight_axis(graph, i[4], 0))
        nodes += [dx, dw]
        inputs = [x, w]
        if i[8]:
            more, b = _bias(graph, node, i[8], [i[1], i[4]])
            nodes += more
            inputs.append(b)
        y = graph.fresh(f"{node.output[0]}_float")
        nodes.append(helper.make_node("Conv", inputs, [y], name=graph.fresh(_label(node)), **attrs))
        return nodes + [_q(graph, node, y, i[6], i[7], node.output[0])]
    if op == "QLinearMatMul" and default:
        b = graph.array(i[3])
        dx, x = _dq(graph, node, "a", i[0], i[1], i[2])
        dw, w = _dq(graph, node, "b", i[3], i[4], i[5], _weight_axis(graph, i[4], (b.ndim - 1) if b is not None else 1))
        y = graph.fresh(f"{node.output[0]}_float")
        return [dx, dw, helper.make_node("MatMul", [x, w], [y], name=graph.fresh(_label(node))),
                _q(graph, node, y, i[6], i[7], node.output[0])]
    if domain != _MS:
        return None
    if op == "QGemm":
        alpha = float(attrs.get("alpha", 1.0))
        trans_b = int(attrs.get("transB", 0))
        dx, x = _dq(graph, node, "a", i[0], i[1], i[2])
        dw, w = _dq(graph, node, "b", i[3], i[4], i[5], _weight_axis(graph, i[4], 0 if trans_b else 1))
        nodes += [dx, dw]
        inputs = [x, w]
        if i[6]:
            more, c = _bias(graph, node, i[6], [i[1], i[4]], alpha)
            nodes += more
            inputs.append(c)
        quantized_output = bool(i[7])
        y = graph.fresh(f"{node.output[0]}_float") if quantized_output else node.output[0]
        nodes.append(helper.make_node("Gemm", inputs, [y], name=graph.fresh(_label(node)), alpha=alpha, beta=1.0,
                                      transA=int(attrs.get("transA", 0)), transB=trans_b))
        return nodes + ([_q(graph, node, y, i[7], i[8], node.output[0])] if quantized_output else [])
    binary = {"QLinearAdd": "Add", "QLinearMul": "Mul"}
    unary = {"QLinearGlobalAveragePool": "GlobalAveragePool", "QLinearAveragePool": "AveragePool",
             "QLinearSigmoid": "Sigmoid", "QLinearLeakyRelu": "LeakyRelu"}
    if op in binary:
        da, a = _dq(graph, node, "a", i[0], i[1], i[2])
        db, b = _dq(graph, node, "b", i[3], i[4], i[5])
        y = graph.fresh(f"{node.output[0]}_float")
        return [da, db, helper.make_node(binary[op], [a, b], [y], name=graph.fresh(_label(node))),
                _q(graph, node, y, i[6], i[7], node.output[0])]
    if op == "QLinearSoftmax":
        # 'opset' names the Softmax semantics: before 13 the input is coerced to 2-D from 'axis' on,
        # which equals Softmax-13 only on the last axis.
        if int(attrs.pop("opset", 13)) < 13 and int(attrs.get("axis", 1)) != -1:
            raise CimguardError(f"node {_label(node)!r} ({domain}::{op}): Softmax semantics before opset 13 are "
                                "supported only with axis=-1")
        attrs.setdefault("axis", -1)
        op, unary = "QLinearSoftmax", {"QLinearSoftmax": "Softmax"}
    if op in unary:
        if attrs.pop("channels_last", 0):
            raise CimguardError(f"node {_label(node)!r} ({domain}::{op}): channels_last=1 is not supported")
        dx, x = _dq(graph, node, "x", i[0], i[1], i[2])
        y = graph.fresh(f"{node.output[0]}_float")
        return [dx, helper.make_node(unary[op], [x], [y], name=graph.fresh(_label(node)), **attrs),
                _q(graph, node, y, i[3], i[4], node.output[0])]
    if op == "QLinearConcat":
        parts = list(node.input)[2:]
        if len(parts) % 3:
            raise CimguardError(f"node {_label(node)!r} ({domain}::{op}) has {len(node.input)} inputs; expected "
                                "y_scale, y_zero_point and triples (x, scale, zero_point)")
        floats = []
        for k in range(0, len(parts), 3):
            dq, x = _dq(graph, node, f"x{k // 3}", parts[k], parts[k + 1], parts[k + 2])
            nodes.append(dq)
            floats.append(x)
        y = graph.fresh(f"{node.output[0]}_float")
        nodes.append(helper.make_node("Concat", floats, [y], name=graph.fresh(_label(node)), axis=attrs["axis"]))
        return nodes + [_q(graph, node, y, i[0], i[1], node.output[0])]
    if op.startswith("QLinear") or op in ("QGemm", "QAttention", "QEmbedLayerNormalization", "QOrderedMatMul"):
        raise CimguardError(f"node {_label(node)!r}: quantized operator {domain}::{op} is not supported "
                            "(cimguard simulates QLinearConv, QLinearMatMul, QGemm, QLinearAdd, QLinearMul, "
                            "QLinearGlobalAveragePool, QLinearAveragePool, QLinearConcat, QLinearSigmoid, QLinearLeakyRelu, "
                            "QLinearSoftmax)")
    return None


def _unpack_nbits(packed: np.ndarray) -> np.ndarray:
    """``[N, blocks, bytes]`` uint8 of two 4-bit codes each (low nibble first) as ``[N, blocks · 2 · bytes]``."""
    low, high = packed & 0x0F, packed >> 4
    return np.stack([low, high], axis=-1).reshape(packed.shape[0], -1).astype(np.int64)


def _pack_nbits(original: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """New ``[K, N]`` codes into ``MatMulNBits``'s packed layout, the padding beyond K kept as the file has it."""
    full = _unpack_nbits(original)
    full[:, :codes.shape[0]] = codes.T
    pairs = full.reshape(*original.shape[:2], -1, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)


def _rewrite_nbits(graph: _Graph, node: onnx.NodeProto, found: Quantization) -> list[onnx.NodeProto]:
    """onnxruntime's weight-only ``MatMulNBits`` (4 bits, blocked scales along K, optional packed zero points)
    as ``MatMul`` with the dequantized weight; its codes are recorded like a blocked ``DequantizeLinear``'s."""
    where = f"node {_label(node)!r} (com.microsoft::MatMulNBits)"
    attrs = _attrs(node)
    i = list(node.input) + [""] * 6
    k, n, bits, block = (int(attrs.get(name, 0)) for name in ("K", "N", "bits", "block_size"))
    if bits != 4:
        raise CimguardError(f"{where}: {bits}-bit MatMulNBits is not supported (4 bits are)")
    if i[4]:
        raise CimguardError(f"{where}: the g_idx input (act-order) is not supported")
    packed, scales = graph.array(i[1]), graph.array(i[2])
    if packed is None or scales is None or packed.dtype != np.uint8 or block < 16 or block & (block - 1):
        raise CimguardError(f"{where}: needs constant packed uint8 weights, constant scales and a power-of-two "
                            "block_size >= 16")
    blocks = -(-k // block)
    if packed.shape != (n, blocks, block // 2) or scales.size != n * blocks:
        raise CimguardError(f"{where}: weights {packed.shape} and scales {scales.shape} do not fit K={k}, N={n}, "
                            f"block_size={block}")
    codes = _unpack_nbits(packed)[:, :k].T  # [K, N], the MatMul weight's layout
    zero = np.full((n, blocks), 8, np.int64)  # the operator's default for 4 bits
    if i[3]:
        zeros = graph.array(i[3])
        if zeros is None or zeros.dtype != np.uint8:
            raise CimguardError(f"{where}: only constant packed uint8 zero points are supported")
        zero = _unpack_nbits(zeros.reshape(n, 1, -1))[:, :blocks]
    record = QuantizedTensor(i[1], _label(node), WEIGHT_ONLY, TensorProto.UINT4,
                             scales.reshape(n, blocks).T.astype(np.float32), zero.T.copy(), 0, block, (k, n),
                             storage="nbits")
    check_parameters(record.scale, record.zero_point, TensorProto.UINT4, (k, n), 0, block, where)
    found.add_form(WEIGHT_ONLY)
    weight = graph.constant(f"{i[1]}_dequantized", record.dequantize(codes))
    graph.added.remove(graph.initializers[weight])  # appended with the folded weights below
    graph.pending.append(graph.initializers[weight])
    found.weights[weight] = record
    out = graph.fresh(f"{node.output[0]}_matmul") if i[5] else node.output[0]
    nodes = [helper.make_node("MatMul", [i[0], weight], [out], name=graph.fresh(_label(node)))]
    if i[5]:
        nodes.append(helper.make_node("Add", [out, i[5]], [node.output[0]], name=graph.fresh(f"{_label(node)}_bias")))
    return nodes


def _scale_plan(model: onnx.ModelProto, graph: _Graph) -> dict[str, tuple[str, str, onnx.NodeProto, onnx.NodeProto]]:
    """onnxruntime's dynamic pattern ``Mul(Cast(MatMulInteger(A, B)), Mul(a_scale, b_scale))``, per node.

    When it matches, the integer node is rewritten with the real scales (``DequantizeLinear(B, b_scale,
    b_zero_point)``: the crossbar's step is the file's weight scale) and the later ``Mul`` by the scale
    product becomes a ``Mul`` by one.  ``{node: (a_scale, b_scale, scale Mul node, product Mul node)}``.
    """
    consumers: dict[str, list[onnx.NodeProto]] = {}
    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    plan = {}
    for node in model.graph.node:
        if node.domain not in _DEFAULT or node.op_type not in ("MatMulInteger", "ConvInteger"):
            continue
        source = producers.get(node.input[0])
        casts = consumers.get(node.output[0], [])
        if source is None or source.op_type != "DynamicQuantizeLinear" or len(casts) != 1 or casts[0].op_type != "Cast":
            continue
        muls = consumers.get(casts[0].output[0], [])
        if len(muls) != 1 or muls[0].op_type != "Mul":
            continue
        product_name = next((name for name in muls[0].input if name != casts[0].output[0]), "")
        product = producers.get(product_name)
        if product is None or product.op_type != "Mul" or len(consumers.get(product_name, [])) != 1:
            continue
        a_scale = source.output[1]
        b_scale = next((name for name in product.input if name != a_scale), "")
        if a_scale not in product.input or graph.array(b_scale) is None:
            continue
        plan[node.name or node.output[0]] = (a_scale, b_scale, muls[0], product)
    return plan


def _rewrite_integer(graph: _Graph, node: onnx.NodeProto, plan: dict) -> list[onnx.NodeProto] | None:
    """``MatMulInteger``/``ConvInteger`` as float ``MatMul``/``Conv`` of dequantized inputs (see :func:`_scale_plan`;
    without the pattern, the scales stay where the file applies them and the inputs are shifted by their zero points)."""
    if node.domain not in _DEFAULT or node.op_type not in ("MatMulInteger", "ConvInteger"):
        return None
    i = list(node.input) + ["", ""]
    scales = plan.get(node.name or node.output[0])
    nodes = []
    floats = []
    codes = graph.array(i[1])
    for index, tag in ((0, "a"), (1, "b")):
        zero = i[index + 2]
        zero_array = graph.array(zero)
        scale = scales[index] if scales else ""
        scale_array = graph.array(scale)
        per_axis = (zero_array is not None and zero_array.size > 1) or (scale_array is not None and scale_array.size > 1)
        if not scale:
            scale = graph.constant(f"{_label(node)}_{tag}_unit_scale",
                                   np.ones(zero_array.shape if per_axis else (), np.float32))
        if index == 1 and per_axis:
            axis = 0 if node.op_type == "ConvInteger" else (codes.ndim - 1 if codes is not None else 1)
        elif index == 0 and per_axis:
            axis = 0  # MatMulInteger's per-row zero point of A
        else:
            axis = None
        dq, value = _dq(graph, node, tag, i[index], scale, zero, axis)
        nodes.append(dq)
        floats.append(value)
    if scales:
        _, _, scale_mul, product = scales
        one = graph.constant(f"{_label(node)}_scales_applied", np.ones((), np.float32))
        for k, name in enumerate(scale_mul.input):
            if name == product.output[0]:
                scale_mul.input[k] = one
        graph.dropped.add(id(product))
    op = "MatMul" if node.op_type == "MatMulInteger" else "Conv"
    if node.output[0] in graph.outputs:  # the file's int32 result leaves the graph: give it that type
        product = graph.fresh(f"{node.output[0]}_float")
        nodes.append(helper.make_node(op, floats, [product], name=graph.fresh(_label(node)), **_attrs(node)))
        nodes.append(helper.make_node("Cast", [product], [node.output[0]], name=graph.fresh(f"{_label(node)}_int32"),
                                      to=TensorProto.INT32))
        return nodes
    nodes.append(helper.make_node(op, floats, [node.output[0]], name=graph.fresh(_label(node)), **_attrs(node)))
    return nodes


def legalise_quantized(model: onnx.ModelProto) -> tuple[Quantization | None, list[str]]:
    """Rewrite ``model`` (the legalised copy) in place into QDQ arithmetic with folded weights.

    Returns the :class:`Quantization` found (``None`` for a float file) and notes for ``inspect``.
    """
    graph = _Graph(model)
    found = Quantization()
    nodes: list[onnx.NodeProto] = []
    counts: dict[str, int] = {}
    created: dict[str, tuple[str, str]] = {}  # rewritten node -> (form, the file's node it came from)
    origin_ops: dict[str, str] = {}  # rewritten node -> the file's operator, for refusals
    plan = _scale_plan(model, graph)
    for node in model.graph.node:
        if node.domain == _MS and node.op_type == "MatMulNBits":
            nodes += _rewrite_nbits(graph, node, found)
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
            continue
        replacement = _rewrite_qoperator(graph, node)
        form = QOPERATOR
        if replacement is None:
            replacement = _rewrite_integer(graph, node, plan)
            form = DYNAMIC
        if replacement is None:
            nodes.append(node)
            continue
        found.add_form(form)
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
        nodes += replacement
        for new in replacement:
            created[new.name] = (form, _label(node))
            origin_ops[new.name] = node.op_type
    model.graph.initializer.extend(graph.added)
    graph.added = list(graph.pending)
    kept: list[onnx.NodeProto] = []
    folded = 0
    for node in nodes:
        if id(node) in graph.dropped:
            continue
        if node.domain in _DEFAULT and node.op_type == "DynamicQuantizeLinear":
            found.add_form(DYNAMIC)
            found.activations.append(QuantizedActivation(node.input[0], _label(node), TensorProto.UINT8, "dynamic"))
        if node.domain not in _DEFAULT or node.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            kept.append(node)
            continue
        if (node.op_type == "QuantizeLinear" and node.input[0] in graph.initializers
                and graph.elem_type(node.input[0]) in _FLOAT_TYPES):
            _quantize_constant(graph, node)
            continue
        if node.op_type == "DequantizeLinear" and (node.input[0] in graph.initializers or node.input[0] in graph.constants):
            _fold_dequantize(graph, node, found, *created.get(node.name, (QDQ, _label(node))))
            folded += 1
            continue
        try:
            _check_activation(graph, node, found, node.name in created)
        except CimguardError as exc:
            if node.name not in origin_ops:
                raise
            # The user's file has no such node: name the operator it was rewritten from.
            raise CimguardError(f"{exc} (rewritten from {origin_ops[node.name]} "
                                f"{created[node.name][1]!r})") from None
        kept.append(node)
    _refuse_bare_codes(graph, kept)
    if not found.forms and not found.weights and not found.activations:
        return None, []
    if not found.forms:
        found.add_form(QDQ)  # activation quantizers only
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(graph.added)
    used = {name for node in model.graph.node for name in node.input} | {v.name for v in model.graph.output}
    for init in [init for init in model.graph.initializer if init.name not in used]:
        model.graph.initializer.remove(init)
    notes = []
    if counts:
        rewritten = ", ".join(f"{count} {op}" for op, count in sorted(counts.items()))
        notes.append(f"quantized operators rewritten as DequantizeLinear → float operator (→ QuantizeLinear) ({rewritten})")
    if folded:
        notes.append(f"{folded} integer constant(s) dequantized into float initializers; the crossbar maps their codes")
    return found, notes


def _fold_dequantize(graph: _Graph, node: onnx.NodeProto, found: Quantization, form: str, origin: str) -> None:
    where = f"node {_label(node)!r} (DequantizeLinear of {node.input[0]!r})"
    if node.input[0] in graph.constants:
        raise CimguardError(f"{where}: integer weights stored in a Constant node are not supported; store them as an "
                            "initializer")
    codes_tensor = graph.initializers[node.input[0]]
    elem_type = codes_tensor.data_type
    if elem_type not in INTEGER_TYPES:
        raise CimguardError(f"{where}: codes of type {type_name(elem_type)} are not an integer type cimguard simulates")
    scale = graph.array(node.input[1])
    zero = graph.array(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scale is None or (len(node.input) > 2 and node.input[2] and zero is None):
        raise CimguardError(f"{where}: the scale and zero point of a constant weight must be constants")
    attrs = _attrs(node)
    codes = numpy_helper.to_array(codes_tensor)
    block = int(attrs.get("block_size", 0))
    axis = check_parameters(scale, zero, elem_type, codes.shape, int(attrs.get("axis", 1)), block, where)
    if zero is not None and graph.elem_type(node.input[2]) not in (elem_type, None):
        raise CimguardError(f"{where}: the zero point's type {type_name(graph.elem_type(node.input[2]))} differs "
                            f"from the codes' {type_name(elem_type)}")
    source = graph.fake_quantized.get(node.input[0])
    record = QuantizedTensor(source or node.input[0], origin, form, elem_type, scale.astype(np.float32),
                             _zero_points(zero, scale),
                             axis, block, tuple(codes.shape), storage="codes" if source is None else "float")
    found.add_form(form)
    name = node.output[0]
    graph.taken.add(name)
    tensor = numpy_helper.from_array(record.dequantize(codes), name=name)
    graph.initializers[name] = tensor
    graph.added.append(tensor)
    found.weights[name] = record


def _zero_points(zero: np.ndarray | None, scale: np.ndarray) -> np.ndarray:
    """The zero points as int64 in the scale's shape (zeros when the file gives none)."""
    return (zero if zero is not None else np.zeros_like(scale, np.int64)).astype(np.int64).reshape(scale.shape)


_FLOAT_TYPES = frozenset({TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16})


def _quantize_constant(graph: _Graph, node: onnx.NodeProto) -> None:
    """A ``QuantizeLinear`` of a float initializer (fake-quantized weights): its codes, computed as the
    operator does (round half to even, saturation), become an integer initializer for the
    ``DequantizeLinear`` that follows; the float initializer is where export writes."""
    where = f"node {_label(node)!r} (QuantizeLinear of the constant {node.input[0]!r})"
    attrs = _attrs(node)
    scale = graph.array(node.input[1])
    zero_name = node.input[2] if len(node.input) > 2 else ""
    zero = graph.array(zero_name)
    if scale is None or (zero_name and zero is None):
        raise CimguardError(f"{where}: the scale and zero point of a constant weight must be constants")
    elem_type = graph.elem_type(zero_name) or int(attrs.get("output_dtype", 0)) or DEFAULT_QUANTIZED_TYPE
    weight = graph.array(node.input[0])
    block = int(attrs.get("block_size", 0))
    axis = check_parameters(scale, zero, elem_type, weight.shape, int(attrs.get("axis", 1)), block, where)
    record = QuantizedTensor(node.input[0], _label(node), QDQ, elem_type, scale.astype(np.float32),
                             _zero_points(zero, scale),
                             axis, block, tuple(weight.shape))
    name = node.output[0]
    tensor = _code_tensor(name, record, record.quantize(weight))
    graph.initializers[name] = tensor
    graph.added.append(tensor)
    graph.fake_quantized[name] = node.input[0]


def _check_activation(graph: _Graph, node: onnx.NodeProto, found: Quantization, rewritten: bool) -> None:
    """Check an activation quantizer's constants; record a ``QuantizeLinear``."""
    where = f"node {_label(node)!r} ({node.op_type})"
    attrs = _attrs(node)
    scale = graph.array(node.input[1]) if len(node.input) > 1 else None
    zero_name = node.input[2] if len(node.input) > 2 else ""
    zero = graph.array(zero_name)
    if node.op_type == "QuantizeLinear":
        elem_type = graph.elem_type(zero_name) or int(attrs.get("output_dtype", 0)) or DEFAULT_QUANTIZED_TYPE
    else:
        elem_type = graph.elem_type(zero_name) or DEFAULT_QUANTIZED_TYPE
    if scale is None:
        if node.op_type == "QuantizeLinear" or zero_name and zero is None and zero_name in graph.initializers:
            raise CimguardError(f"{where}: the scale of an activation quantizer must be a constant")
        return  # a DequantizeLinear of DynamicQuantizeLinear's run-time scale
    check_parameters(scale, zero, elem_type, None, int(attrs.get("axis", 1)), int(attrs.get("block_size", 0)), where)
    if int(attrs.get("block_size", 0)):
        raise CimguardError(f"{where}: blocked scales on activations are not supported")
    if node.op_type == "QuantizeLinear":
        granularity = "per tensor" if scale.size == 1 else f"per channel (axis {int(attrs.get('axis', 1))})"
        # A rewritten QOperator node's quantizer writes the file's own quantized tensor: name that one.
        tensor = node.output[0] if rewritten else node.input[0]
        found.activations.append(QuantizedActivation(tensor, _label(node), elem_type, granularity))


def _refuse_bare_codes(graph: _Graph, nodes: list[onnx.NodeProto]) -> None:
    """Integer weights that reach a layer without a dequantizer cimguard follows are refused."""
    for node in nodes:
        if node.domain in _DEFAULT and node.op_type in ("Conv", "Gemm", "MatMul", "ConvTranspose") and len(node.input) > 1:
            elem_type = graph.elem_type(node.input[1])
            if elem_type in CODE_TYPES:
                raise CimguardError(f"node {_label(node)!r} ({node.op_type}) uses integer weights {node.input[1]!r} "
                                    f"({type_name(elem_type)}) without a DequantizeLinear cimguard can follow")


# --- export: new codes into the file's integer initializers ------------------------------------------

#: Relative output difference (of the output scale) accepted between onnxruntime and torch on a quantized
#: file.  Integer kernels accumulate exactly, float32 does not: a value within float32 rounding of a rounding
#: boundary lands one code apart, and the difference travels through the later layers (a deep network such
#: as ResNet-18 with random weights ends a few output codes apart).
QUANTIZED_TOLERANCE = 5e-2


def _records(imported) -> dict[str, tuple]:
    """``{torch_name: (MappedWeight, QuantizedTensor)}`` for the quantized crossbar weights of an ImportedModel."""
    quantization = imported.quantization
    if quantization is None:
        return {}
    return {m.torch_name: (m, quantization.weights[m.initializer]) for m in imported.mapped
            if m.initializer in quantization.weights}


#: Operators that make a file quantized (their presence widens the onnxruntime comparison tolerance).
QUANTIZED_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger", "ConvInteger",
                           "QLinearConv", "QLinearMatMul", "QGemm", "QLinearAdd", "QLinearMul", "QLinearConcat",
                           "QLinearGlobalAveragePool", "QLinearAveragePool", "QLinearSigmoid", "QLinearLeakyRelu",
                           "QLinearSoftmax"})


def is_quantized(model: onnx.ModelProto) -> bool:
    return any(node.op_type in QUANTIZED_OPS for node in model.graph.node)


def recoded_weights(imported, weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``weights`` with every quantized layer re-coded with the file's scale and zero point and dequantized:
    what the exported file computes with (float layers unchanged)."""
    records = _records(imported)
    result = dict(weights)
    for name, (mapped, record) in records.items():
        if name in weights:
            layout = code_layout(record, mapped.transposed, mapped.scale, weights[name].device)
            result[name] = layout.dequantize(layout.codes(weights[name].detach().float()))
    return result


def codes_for(imported, weights: dict[str, torch.Tensor]) -> list[tuple[QuantizedTensor, str, np.ndarray]]:
    """``(record, layer node, new codes in the file's layout)`` for each quantized layer in ``weights``."""
    entries = []
    for name, (mapped, record) in _records(imported).items():
        if name not in weights:
            continue
        layout = code_layout(record, mapped.transposed, mapped.scale, weights[name].device)
        codes = layout.codes(weights[name].detach().float()).cpu().numpy().astype(np.int64)
        entries.append((record, mapped.node, np.ascontiguousarray(codes.T if mapped.transposed else codes)))
    return entries


def write_codes(model: onnx.ModelProto, entries: list[tuple[QuantizedTensor, str, np.ndarray]]) -> None:
    """Replace the integer initializers of ``model`` (a copy of the file) by new codes of the same type and shape.

    Layers that shared one integer tensor in the file (a transformer's copied layers) and now hold
    different codes each get their own copy, as float weights do (:func:`cimguard.onnx.export.with_weights`).
    """
    first: dict[str, tuple[QuantizedTensor, np.ndarray]] = {}
    untied = []
    for record, layer, codes in entries:
        previous = first.setdefault(record.codes, (record, codes))
        if previous[1] is not codes and not np.array_equal(previous[1], codes):
            untied.append((record, layer, codes))
    originals = {init.name: init for init in model.graph.initializer}
    for record, layer, codes in untied:
        _untie_codes(model, record, layer, _stored_tensor("", record, codes, originals[record.codes]))
    for init in list(originals.values()):
        if init.name in first:
            record, values = first[init.name]
            init.CopyFrom(_stored_tensor(init.name, record, values, init))


def _stored_tensor(name: str, record: QuantizedTensor, values: np.ndarray, original: onnx.TensorProto) -> onnx.TensorProto:
    """New codes as the file stores them (:attr:`QuantizedTensor.storage`), in place of ``original``."""
    if record.storage == "float":  # a fake-quantized float weight: the new codes, dequantized
        dtype = helper.tensor_dtype_to_np_dtype(original.data_type)
        return numpy_helper.from_array(record.dequantize(values).astype(dtype), name=name)
    if record.storage == "nbits":
        return numpy_helper.from_array(_pack_nbits(numpy_helper.to_array(original), values), name=name)
    if tuple(original.dims) != values.shape or original.data_type != record.elem_type:
        raise CimguardError(f"integer weights {original.name} changed shape or type; nothing was written")
    return _code_tensor(name, record, values)


def _code_tensor(name: str, record: QuantizedTensor, values: np.ndarray) -> onnx.TensorProto:
    if record.elem_type in (TensorProto.INT4, TensorProto.UINT4):
        return helper.make_tensor(name, record.elem_type, values.shape, values.reshape(-1).tolist())
    return numpy_helper.from_array(values.astype(helper.tensor_dtype_to_np_dtype(record.elem_type)), name=name)


def _untie_codes(model: onnx.ModelProto, record: QuantizedTensor, layer: str, tensor: onnx.TensorProto) -> None:
    """Give ``layer`` its own copy of a shared integer tensor: the node reading the codes points at the copy
    (a shared ``DequantizeLinear`` is duplicated for ``layer`` first)."""
    taken = {init.name for init in model.graph.initializer} | {out for n in model.graph.node for out in n.output}

    def fresh(base: str) -> str:
        name, suffix = base, 1
        while name in taken:
            name, suffix = f"{base}.{suffix}", suffix + 1
        taken.add(name)
        return name

    copy = fresh(f"{record.codes}.{layer}")
    tensor.name = copy
    model.graph.initializer.append(tensor)
    nodes = list(model.graph.node)
    reader = next((n for n in nodes if _label(n) == record.node and record.codes in n.input), None)
    consumer = next((n for n in nodes if _label(n) == layer), None)
    if reader is None:
        raise CimguardError(f"integer weights {record.codes} feed several layers that now hold different codes, and "
                            f"node {record.node!r} that reads them is not in the file; nothing was written")
    if reader.op_type == "DequantizeLinear" and reader is not consumer:
        if consumer is None or reader.output[0] not in consumer.input:
            raise CimguardError(f"integer weights {record.codes} are shared through {record.node!r}; layer {layer!r} "
                                "cannot get its own copy; nothing was written")
        duplicate = onnx.NodeProto()
        duplicate.CopyFrom(reader)
        duplicate.name = fresh(f"{_label(reader)}.{layer}")
        duplicate.output[0] = fresh(f"{reader.output[0]}.{layer}")
        duplicate.input[0] = copy
        consumer.input[list(consumer.input).index(reader.output[0])] = duplicate.output[0]
        model.graph.node.insert(nodes.index(reader) + 1, duplicate)
        return
    reader.input[list(reader.input).index(record.codes)] = copy
