"""Extra onnx2torch converters: the operator versions onnx2torch 1.5.15 lacks.

Everything here is registered through onnx2torch's own registry
(``onnx2torch.node_converters.registry.add_converter``); onnx2torch itself is never
patched.  Importing this module registers the converters once; ``cimguard.onnx.model``
imports it before any conversion.

Three kinds of additions:

* **aliases**: a newer operator version whose schema has the same inputs, outputs and
  attributes as the newest version onnx2torch converts (the change only widened the
  element types, e.g. ``Reshape`` 19/21, ``Conv`` 22, ``Identity`` 19) reuses that
  converter;
* **checked aliases**: a newer version that added an input or attribute (``Pad`` 18,
  ``Resize`` 18/19, ``Split`` 18, ``Cast`` 19) reuses the old converter when the node
  does not use the new feature, and is refused otherwise;
* **new converters**: ``Reduce*`` 18 (axes became an input), ``AveragePool`` 19/22 and
  asymmetric padding (``cimguard.legal::AveragePool``, see :mod:`cimguard.onnx.legalise`),
  ``Gelu`` 20.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from onnx import defs
from onnx2torch.node_converters.reduce import OnnxReduceStaticAxes
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import (
    OnnxMapping,
    OnnxToTorchModule,
    OperationConverterResult,
    get_const_value,
    onnx_mapping_from_node,
)
from torch import nn

#: Custom domain of the operators that legalisation writes for constructs onnx2torch
#: cannot express (only ever present in the legalised copy, never in exported files).
CIMGUARD_DOMAIN = "cimguard"
CIMGUARD_DOMAIN_VERSION = 1

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

#: Every (op, version) this module added, for ``inspect`` and the docs.
ADDED: list[tuple[str, str, int, str]] = []


def _register(op: str, version: int, converter: Converter, how: str, domain: str = "") -> None:
    description = OperationDescription(domain=domain, operation_type=op, version=version)
    if description in _CONVERTER_REGISTRY:  # onnx2torch (a newer release) already has it
        return
    add_converter(operation_type=op, version=version, domain=domain)(converter)
    ADDED.append((domain, op, version, how))


def _schema_versions(op: str) -> list[int]:
    versions: set[int] = set()
    for opset in range(1, defs.onnx_opset_version() + 1):
        try:
            versions.add(defs.get_schema(op, max_inclusive_version=opset).since_version)
        except defs.SchemaError:
            continue
    return sorted(versions)


def _signature(op: str, version: int) -> tuple:
    schema = defs.get_schema(op, max_inclusive_version=version)
    return (sorted(schema.attributes), [i.name for i in schema.inputs], [o.name for o in schema.outputs])


def _delegate(op: str, version: int) -> Converter:
    return get_converter(operation_type=op, version=version)


# --- checked aliases ---------------------------------------------------------------


def _checked_alias(op: str, old_version: int, check: Callable[[OnnxNode], str | None]) -> Converter:
    old = _delegate(op, old_version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        problem = check(node)
        if problem:
            raise NotImplementedError(f"{op}: {problem}")
        return old(node, graph)

    return convert


def _pad_check(node: OnnxNode) -> str | None:
    if len(node.input_values) > 3 and node.input_values[3]:
        return "the 'axes' input (opset 18) is not supported"
    if node.attributes.get("mode", "constant") == "wrap":
        return "mode 'wrap' is not supported"
    return None


def _resize_check(node: OnnxNode) -> str | None:
    attrs = node.attributes
    if attrs.get("antialias", 0):
        return "antialias=1 is not supported"
    if attrs.get("axes") is not None:
        return "the 'axes' attribute is not supported"
    if attrs.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        return "keep_aspect_ratio_policy other than 'stretch' is not supported"
    if attrs.get("coordinate_transformation_mode") == "half_pixel_symmetric":
        return "coordinate_transformation_mode 'half_pixel_symmetric' is not supported"
    return None


def _split_check(node: OnnxNode) -> str | None:
    count = node.attributes.get("num_outputs")
    if count is not None and count != len(node.output_values):
        return "num_outputs differs from the number of outputs"
    return None


def _no_check(node: OnnxNode) -> str | None:  # noqa: ARG001 - same signature as the checks
    return None


# --- new converters ----------------------------------------------------------------


def _reduce_18(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    """``Reduce*`` from opset 18 on: the axes are an (optional) input instead of an attribute."""
    keepdims = node.attributes.get("keepdims", 1)
    noop = node.attributes.get("noop_with_empty_axes", 0)
    axes: list[int] | None = None
    if len(node.input_values) > 1 and node.input_values[1]:
        try:
            axes = [int(a) for a in torch.as_tensor(get_const_value(node.input_values[1], graph)).flatten().tolist()]
        except KeyError:
            raise NotImplementedError(f"{node.operation_type} with non-constant axes is not supported") from None
    if not axes and noop:
        return OperationConverterResult(nn.Identity(), OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))
    module = OnnxReduceStaticAxes(operation_type=node.operation_type, axes=axes or None, keepdims=keepdims)
    return OperationConverterResult(module, OnnxMapping(inputs=node.input_values[:1], outputs=node.output_values))


def _gelu(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    approximate = node.attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise NotImplementedError(f"Gelu approximate={approximate!r} is not supported")
    return OperationConverterResult(nn.GELU(approximate=approximate), onnx_mapping_from_node(node))


class OnnxAveragePool(nn.Module, OnnxToTorchModule):
    """ONNX ``AveragePool`` with the semantics onnxruntime implements, for any padding.

    Torch's pooling only pads symmetrically; ONNX allows ``pads`` that differ at the
    two ends and, with ``count_include_pad=0`` (the default), divides each window by
    the number of *real* input elements in it.  Here the input is padded explicitly
    and each window sum is divided by the window sum of a mask that marks the
    elements to count, which is exact for asymmetric pads and ``ceil_mode``.
    """

    def __init__(self, kernel: Sequence[int], strides: Sequence[int], pads: Sequence[int], ceil_mode: bool,
                 count_include_pad: bool):
        super().__init__()
        self.kernel = tuple(int(k) for k in kernel)
        self.strides = tuple(int(s) for s in strides)
        rank = len(self.kernel)
        self.begin = tuple(int(p) for p in pads[:rank])
        self.end = tuple(int(p) for p in pads[rank:])
        self.ceil_mode = ceil_mode
        self.count_include_pad = count_include_pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank = len(self.kernel)
        spatial = x.shape[-rank:]
        extra = []
        for size, k, s, b, e in zip(spatial, self.kernel, self.strides, self.begin, self.end):
            span = int(size) + b + e - k
            out = (math.ceil(span / s) if self.ceil_mode else span // s) + 1
            if self.ceil_mode and (out - 1) * s >= int(size) + b:
                out -= 1  # ONNX/torch rule: the last window must start inside input or left pad
            extra.append(max((out - 1) * s + k - (int(size) + b + e), 0))
        # F.pad wants the last dimension first.
        torch_pads: list[int] = []
        mask_pads: list[int] = []
        for b, e, more in reversed(list(zip(self.begin, self.end, extra))):
            torch_pads += [b, e + more]
            mask_pads += [b, e + more]
        pool = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[rank]
        sums = pool(F.pad(x, torch_pads), self.kernel, self.strides)
        ones = torch.ones((1, 1, *spatial), dtype=x.dtype, device=x.device)
        if self.count_include_pad:
            # Padding counts, the ceil-mode overhang beyond the pads does not.
            inner = [int(size) + b + e for size, b, e in zip(spatial, self.begin, self.end)]
            mask = F.pad(torch.ones((1, 1, *inner), dtype=x.dtype, device=x.device),
                         [p for more in reversed(extra) for p in (0, more)])
        else:
            mask = F.pad(ones, mask_pads)
        counts = pool(mask, self.kernel, self.strides)
        return sums / counts


def _average_pool(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    attrs = node.attributes
    kernel = list(attrs["kernel_shape"])
    rank = len(kernel)
    if rank not in (1, 2, 3):
        raise NotImplementedError(f"AveragePool with spatial rank {rank} is not supported")
    if any(d != 1 for d in attrs.get("dilations", [1] * rank)):
        raise NotImplementedError("AveragePool with dilations is not supported")
    if attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise NotImplementedError("AveragePool with auto_pad SAME_* needs static shapes (legalisation makes pads explicit)")
    pads = list(attrs.get("pads", [0] * 2 * rank)) if attrs.get("auto_pad", "NOTSET") == "NOTSET" else [0] * 2 * rank
    module = OnnxAveragePool(kernel, list(attrs.get("strides", [1] * rank)), pads, bool(attrs.get("ceil_mode", 0)),
                             bool(attrs.get("count_include_pad", 0)))
    return OperationConverterResult(module, onnx_mapping_from_node(node))


class OnnxReshapeAllowZero(nn.Module, OnnxToTorchModule):
    """``Reshape`` with ``allowzero=1``: a 0 in the shape is a zero-sized axis, not "copy this axis"."""

    def forward(self, x: torch.Tensor, shape: torch.Tensor) -> torch.Tensor:
        return torch.reshape(x, [int(d) for d in shape.tolist()])


def _reshape(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
    if node.attributes.get("allowzero", 0) == 1:
        return OperationConverterResult(OnnxReshapeAllowZero(), onnx_mapping_from_node(node))
    return _delegate("Reshape", 14)(node, graph)


# --- registration ------------------------------------------------------------------

_REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
               "ReduceProd", "ReduceSumSquare")


def _register_all() -> None:
    for op in _REDUCE_OPS:
        _register(op, 18, _reduce_18, "axes input")
    for version in (20,):
        for op in ("ReduceMax", "ReduceMin"):
            _register(op, version, _reduce_18, "axes input")
    _register("ReduceSum", 18, _delegate("ReduceSum", 13), "same as 13")
    for version in (19, 22):
        _register("AveragePool", version, _average_pool, "exact padding")
    _register("AveragePool", CIMGUARD_DOMAIN_VERSION, _average_pool, "asymmetric padding", domain=CIMGUARD_DOMAIN)
    _register("Gelu", 20, _gelu, "new")
    for version in (19, 21, 23, 24, 25):
        _register("Reshape", version, _reshape, "Reshape 14 plus allowzero=1")
    for version in (18, 19, 21, 23, 24, 25):
        _register("Pad", version, _checked_alias("Pad", 13, _pad_check), "Pad 13 without axes/wrap")
    for version in (18, 19):
        _register("Resize", version, _checked_alias("Resize", 13, _resize_check), "Resize 13 with default new attributes")
    _register("Split", 18, _checked_alias("Split", 13, _split_check), "Split 13")
    for version in (19, 21, 23, 24, 25):
        # 'saturate' only affects float8 targets, which torch conversion does not produce.
        _register("Cast", version, _checked_alias("Cast", 13, _no_check), "Cast 13 (saturate: float8 only)")
    _register_signature_aliases()


def _register_signature_aliases() -> None:
    """Newer versions with an unchanged signature reuse the newest older converter."""
    registered: dict[str, set[int]] = {}
    for description in list(_CONVERTER_REGISTRY):
        if description.domain in ("", "ai.onnx"):
            registered.setdefault(description.operation_type, set()).add(description.version)
    for op, versions in sorted(registered.items()):
        for version in _schema_versions(op):
            if version in versions or version < min(versions):
                continue
            older = max(v for v in versions if v < version)
            if _signature(op, version) != _signature(op, older):
                continue
            _register(op, version, _delegate(op, older), f"same signature as {older}")
            versions.add(version)


_register_all()
