"""How cimguard's converters enter onnx2torch's registry.

Everything goes through onnx2torch's own ``add_converter``; onnx2torch is never patched.

* An operator version onnx2torch lacks is registered in the default domain, where
  ``onnx2torch.convert`` finds it like its own.
* An operator version onnx2torch converts *wrongly* (its converter computes different
  numbers than the standard for some attribute) cannot be registered twice there.  Such a
  converter is registered in cimguard's own domain (:data:`CIMGUARD_DOMAIN`, one dispatcher
  per operator), and legalisation (:func:`route_own_converters`) moves the nodes it covers
  into that domain, recording the node's default-domain opset in the attribute
  :data:`OPSET_ATTRIBUTE`.  The legalised copy is the only place such nodes exist; export
  writes the user's original file.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence

import onnx
import torch
from onnx import defs, helper
from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription, add_converter, get_converter
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OnnxMapping, OnnxToTorchModule, OperationConverterResult, get_const_value
from torch import nn

#: Custom domain of the operators only legalisation writes (never present in exported files).
CIMGUARD_DOMAIN = "cimguard"
CIMGUARD_DOMAIN_VERSION = 1
#: Attribute that carries a routed node's default-domain opset into cimguard's converter.
OPSET_ATTRIBUTE = "cimguard_opset"

Converter = Callable[[OnnxNode, OnnxGraph], OperationConverterResult]

#: Every (domain, op, version, how) cimguard registered, for ``inspect`` and the docs.
ADDED: list[tuple[str, str, int, str]] = []
#: Operators whose converter onnx2torch has but computes wrongly: op -> [(since, until, converter)].
_OWN: dict[str, list[tuple[int, int, Converter]]] = {}
#: For a routed operator whose onnx2torch converter is right for most nodes: which nodes to route.
_ROUTE_WHEN: dict[str, Callable[[onnx.NodeProto], bool]] = {}


class Unsupported(NotImplementedError):
    """A node that uses a feature cimguard does not convert (model.py turns it into a one-line error)."""


def register(op: str, version: int, converter: Converter, how: str, domain: str = "") -> None:
    """Register one converter for one operator version, unless onnx2torch already has it."""
    description = OperationDescription(domain=domain, operation_type=op, version=version)
    if description in _CONVERTER_REGISTRY:  # onnx2torch (a newer release) already has it
        return
    add_converter(operation_type=op, version=version, domain=domain)(converter)
    ADDED.append((domain, op, version, how))


def schema_versions(op: str) -> list[int]:
    """Every ``since_version`` of a default-domain operator's schema."""
    versions: set[int] = set()
    for opset in range(1, defs.onnx_opset_version() + 1):
        try:
            versions.add(defs.get_schema(op, max_inclusive_version=opset).since_version)
        except defs.SchemaError:
            continue
    return sorted(versions)


def delegate(op: str, version: int) -> Converter:
    """onnx2torch's converter of ``op`` at ``version``."""
    return get_converter(operation_type=op, version=version)


def converter(op: str, since: int = 1, how: str = "cimguard", until: int | None = None, *,
              replace: bool = False, when: Callable[[onnx.NodeProto], bool] | None = None
              ) -> Callable[[Callable], Callable]:
    """Register the decorated converter for every schema version of ``op`` in ``[since, until]``.

    The converter takes ``(node, graph)``, or ``(node, graph, version)`` when it needs the
    operator version.  Versions onnx2torch lacks go to the default domain; with
    ``replace=True`` the versions onnx2torch has (and converts wrongly) are routed to
    cimguard's own domain (see the module docstring); ``when`` limits that to the nodes it
    accepts (the others keep onnx2torch's converter).
    """
    if when is not None:
        _ROUTE_WHEN[op] = when

    def decorate(function: Callable) -> Callable:
        wants_version = len(inspect.signature(function).parameters) == 3
        for version in schema_versions(op):
            if version < since or (until is not None and version > until):
                continue
            bound = _bind(function, version) if wants_version else function
            if OperationDescription("", op, version) not in _CONVERTER_REGISTRY:
                register(op, version, bound, how)
            elif replace:
                _OWN.setdefault(op, []).append((version, version, bound))
                ADDED.append((CIMGUARD_DOMAIN, op, version, how))
        if replace and op in _OWN and OperationDescription(CIMGUARD_DOMAIN, op, CIMGUARD_DOMAIN_VERSION) not in _CONVERTER_REGISTRY:
            add_converter(operation_type=op, version=CIMGUARD_DOMAIN_VERSION, domain=CIMGUARD_DOMAIN)(_dispatch(op))
        return function

    return decorate


def _bind(function: Callable, version: int) -> Converter:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        return function(node, graph, version)

    return convert


def _own_converter(op: str, version: int) -> Converter | None:
    for since, until, function in _OWN.get(op, ()):
        if since <= version <= until:
            return function
    return None


def _dispatch(op: str) -> Converter:
    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        # Nodes moved here by an older pass (asymmetric AveragePool) carry no version: the newest.
        version = int(node.attributes.get(OPSET_ATTRIBUTE, max(until for _, until, _ in _OWN[op])))
        function = _own_converter(op, version)
        if function is None:  # only legalisation routes nodes here, and only covered versions
            raise Unsupported(f"{op} {version}: no cimguard converter")
        return function(node, graph)

    return convert


def route_own_converters(model: onnx.ModelProto) -> dict[str, int]:
    """Move the nodes whose onnx2torch converter is wrong into cimguard's domain; the count per operator."""
    opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), 1)
    moved: dict[str, int] = {}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _OWN:
            continue
        try:
            version = defs.get_schema(node.op_type, max_inclusive_version=opset).since_version
        except defs.SchemaError:
            continue
        if _own_converter(node.op_type, version) is None:
            continue
        if node.op_type in _ROUTE_WHEN and not _ROUTE_WHEN[node.op_type](node):
            continue
        node.domain = CIMGUARD_DOMAIN
        node.attribute.append(helper.make_attribute(OPSET_ATTRIBUTE, version))
        moved[node.op_type] = moved.get(node.op_type, 0) + 1
    if moved and not any(op.domain == CIMGUARD_DOMAIN for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid(CIMGUARD_DOMAIN, CIMGUARD_DOMAIN_VERSION))
    return moved


# --- building blocks for converters ------------------------------------------------


class OnnxFunction(nn.Module, OnnxToTorchModule):
    """A node computed by a plain function of its inputs (``None`` for an omitted optional input).

    onnx2torch passes omitted inputs by keyword name; here only the present inputs are
    mapped, and ``present`` puts them back in their ONNX positions.
    """

    def __init__(self, function: Callable[..., Any], present: Sequence[bool], name: str, outputs: int):
        super().__init__()
        self.function = function
        self.present = tuple(present)
        self.name = name
        self.outputs = outputs

    def forward(self, *args: torch.Tensor) -> Any:
        values = iter(args)
        full = [next(values) if here else None for here in self.present]
        result = self.function(*full)
        if self.outputs == 1:
            return result[0] if isinstance(result, tuple) else result
        # onnx2torch picks a node's output by its position among the node's outputs.
        return tuple(result[:self.outputs])

    def extra_repr(self) -> str:
        return self.name


def function_result(node: OnnxNode, function: Callable[..., Any]) -> OperationConverterResult:
    """A converter result computing ``function(*inputs)``.

    A multi-output function returns a tuple in the operator's output order (it may return
    more than the node names; legalisation routes graph outputs of multi-output nodes
    through an ``Identity``, see :func:`cimguard.onnx.legalise.single_output_graph_outputs`).
    """
    present = [bool(name) for name in node.input_values]
    while present and not present[-1]:
        present.pop()
    inputs = tuple(name for name in node.input_values[: len(present)] if name)
    module = OnnxFunction(function, present, node.operation_type, len(node.output_values))
    return OperationConverterResult(module, OnnxMapping(inputs=inputs, outputs=node.output_values))


def constant_input(node: OnnxNode, graph: OnnxGraph, index: int, what: str) -> torch.Tensor | None:
    """The value of an input that must be a constant (``None`` when omitted), or a one-line refusal."""
    if len(node.input_values) <= index or not node.input_values[index]:
        return None
    try:
        return torch.as_tensor(get_const_value(node.input_values[index], graph))
    except KeyError:
        raise Unsupported(f"{node.operation_type} with a non-constant {what} input is not supported") from None


def attribute(node: OnnxNode, name: str, default: Any) -> Any:
    """A node attribute; an empty list attribute (onnx2torch parses it as the proto) is ``[]``."""
    value = node.attributes.get(name, default)
    if isinstance(value, onnx.AttributeProto):
        return []
    return value


def checked_alias(op: str, old_version: int, check: Callable[[OnnxNode], str | None]) -> Converter:
    """onnx2torch's converter of an older version, for nodes that do not use the newer features."""
    old = delegate(op, old_version)

    def convert(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:
        problem = check(node)
        if problem:
            raise Unsupported(f"{op}: {problem}")
        return old(node, graph)

    return convert


def _signature(op: str, version: int) -> tuple:
    schema = defs.get_schema(op, max_inclusive_version=version)
    return (sorted(schema.attributes), [i.name for i in schema.inputs], [o.name for o in schema.outputs])


def register_signature_aliases() -> None:
    """Newer versions with an unchanged signature reuse the newest older converter."""
    registered: dict[str, set[int]] = {}
    for description in list(_CONVERTER_REGISTRY):
        if description.domain in ("", "ai.onnx"):
            registered.setdefault(description.operation_type, set()).add(description.version)
    for op, versions in sorted(registered.items()):
        for version in schema_versions(op):
            if version in versions or version < min(versions):
                continue
            older = max(v for v in versions if v < version)
            if _signature(op, version) != _signature(op, older):
                continue
            register(op, version, delegate(op, older), f"same signature as {older}")
            versions.add(version)
            for since, until, function in list(_OWN.get(op, ())):
                if since <= older <= until:  # the alias computes what the routed converter fixes
                    _OWN[op].append((version, version, function))
