"""Rewrite an ONNX graph into the form onnx2torch converts.

Legalisation works on a copy; the model the user loaded is never modified, because
export writes weights back into it.  The passes, in order:

1. ``drop_initializer_inputs``: IR < 4 files list every weight as a graph input too.
2. ``remove_training_nodes``: ``Dropout`` is the identity in inference.
2b. ``quantized_forms``: quantized files (QOperator, dynamic, QDQ) in QDQ arithmetic, their integer
   weights dequantized into float initializers with the codes recorded (:mod:`cimguard.onnx.quantized`).
3. ``normalise_opset``: a default-domain opset whose operators onnx2torch lacks
   (opset 6 files, for instance) is upgraded with ONNX's version converter to the
   first of :data:`OPSET_TARGETS` at which every operator converts.  Opsets are only
   ever raised, never lowered.
4. ``infer_shapes``: ONNX shape inference (with data propagation), run while the
   model is still small (before folding materialises weights).
5. ``fold_constants``: ``Constant`` and ``ConstantOfShape`` nodes, and every node whose
   inputs are all constant (a weight computed by a subgraph: ``Transpose`` of a stored
   matrix, ``Unsqueeze`` of a scale...), become initializers, so onnx2torch sees them as
   tensors and the crossbar mapping finds the weight.  Each folded tensor remembers the
   node that produced it (:class:`WeightOrigin`) so export can write it back there.
   Tensor sizes are checked before anything is materialised (untrusted files).
6. ``explicit_padding``: ``auto_pad=SAME_*`` becomes explicit ``pads`` where the input
   shape is static (onnx2torch does not implement SAME padding).
7. ``reshape_allowzero``: ``allowzero=1`` is dropped where the constant shape has no
   zero (onnx2torch refuses the flag; for such shapes it changes nothing).
8. ``asymmetric_average_pool``: an ``AveragePool`` whose pads differ at the two ends
   (common in Caffe2 exports) moves to cimguard's own operator domain, whose converter
   (:mod:`cimguard.onnx.converters`) reproduces onnxruntime exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper

from cimguard.errors import CimguardError

#: Largest tensor (elements) that a file may store or that folding may create.
MAX_TENSOR_ELEMENTS = 2**28
#: Largest total size (bytes) of the tensors folding may create for one model.
MAX_FOLDED_BYTES = 8 * 1024**3
#: Default-domain opsets tried, in order, when the model's own opset lacks converters.
OPSET_TARGETS: tuple[int, ...] = (11, 13, 17)

#: Operators never folded: random, or with subgraphs, or training-only.
_NEVER_FOLD = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli",
    "If", "Loop", "Scan", "Dropout", "SequenceConstruct", "SequenceEmpty", "Optional",
})
#: Operators whose output can be far larger than their inputs; their output shape must
#: be known (and within limits) before they are folded.
_GENERATORS = frozenset({"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "EyeLike"})


@dataclass(frozen=True)
class WeightOrigin:
    """Where a tensor that legalisation turned into an initializer lives in the original file."""

    kind: str
    """``constant`` (a Constant node), ``constant_of_shape`` or ``folded`` (any other node)."""
    node: str
    """Name of the producing node in the original graph (its output name if unnamed)."""
    op_type: str
    """The producing node's operator."""


@dataclass
class Legalised:
    """The legalised copy plus what was changed."""

    model: onnx.ModelProto
    notes: list[str] = field(default_factory=list)
    """One line per change, for ``cimguard inspect``."""
    origins: dict[str, WeightOrigin] = field(default_factory=dict)
    """For each initializer that a node of the original graph produced, that node."""
    quantization: Any = None
    """A quantized file's :class:`cimguard.onnx.quantized.Quantization` (``None``: a float file)."""


Pass = Callable[[Legalised], None]


def drop_initializer_inputs(state: Legalised) -> None:
    """Remove initializers from the graph inputs (IR < 4 lists weights as inputs)."""
    model = state.model
    initializer_names = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializer_names]
    dropped = len(model.graph.input) - len(kept)
    if dropped:
        del model.graph.input[:]
        model.graph.input.extend(kept)
        state.notes.append(f"IR {model.ir_version}: removed {dropped} initializers listed as graph inputs")
    if model.ir_version < 4:
        # From IR 4 on, initializers need not be graph inputs; the checker enforces it before.
        state.notes.append(f"IR {model.ir_version} -> 4")
        model.ir_version = 4


def fold_constants(state: Legalised) -> None:
    """Turn constant nodes and all-constant subgraphs into initializers."""
    model = state.model
    graph = model.graph
    opset = _default_opset(model)
    initializers = {init.name: init for init in graph.initializer}
    graph_outputs = {value.name for value in graph.output}
    shapes = {name: shape for name, shape in _value_shapes(model).items() if None not in shape}
    folded: dict[str, np.ndarray] = {}
    cache: dict[str, np.ndarray] = {}
    total_bytes = 0
    kept: list[onnx.NodeProto] = []
    counts: dict[str, int] = {}

    def value(name: str) -> np.ndarray:
        if name in folded:
            return folded[name]
        if name not in cache:
            cache[name] = numpy_helper.to_array(initializers[name])
        return cache[name]

    for node in graph.node:
        default_domain = node.domain in ("", "ai.onnx")
        inputs = [name for name in node.input if name]
        constant_inputs = all(name in folded or name in initializers for name in inputs)
        if (
            not default_domain
            or not node.output
            or node.op_type in _NEVER_FOLD
            or not constant_inputs
            or any(out in graph_outputs for out in node.output)
            or any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for attr in node.attribute)
        ):
            kept.append(node)
            continue
        label = node.name or node.output[0]
        shape = _generator_shape(node, value) if node.op_type == "ConstantOfShape" else shapes.get(node.output[0])
        if shape is None and (node.op_type in _GENERATORS or (not inputs and node.op_type != "Constant")):
            kept.append(node)  # its size is unknown before running it: leave it to run time
            continue
        if shape is not None:
            _check_elements(shape, f"node {label!r} ({node.op_type})")
        try:
            outputs = _evaluate(node, value, opset)
        except CimguardError:
            raise
        except Exception:  # noqa: BLE001 - leave what we cannot evaluate to the converter
            kept.append(node)
            continue
        if outputs is None:
            kept.append(node)
            continue
        for name, array in zip(node.output, outputs):
            if not name:
                continue
            _check_elements(array.shape, f"node {label!r} ({node.op_type})")
            total_bytes += array.nbytes
            if total_bytes > MAX_FOLDED_BYTES:
                raise CimguardError(
                    f"folding constant subgraphs would create more than {MAX_FOLDED_BYTES / 1024**3:g} GiB of tensors "
                    f"(at node {label!r}); refusing"
                )
            folded[name] = array
            kind = {"Constant": "constant", "ConstantOfShape": "constant_of_shape"}.get(node.op_type, "folded")
            state.origins[name] = WeightOrigin(kind, label, node.op_type)
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    if not folded:
        return
    del graph.node[:]
    graph.node.extend(kept)
    _drop_unused_initializers(model)
    for name, array in folded.items():
        _append_initializer(graph, name, array)
    summary = ", ".join(f"{count} {op}" for op, count in sorted(counts.items()))
    state.notes.append(f"folded {sum(counts.values())} constant nodes into initializers ({summary})")


def _evaluate(node: onnx.NodeProto, value: Callable[[str], np.ndarray], opset: int) -> list[np.ndarray] | None:
    """Compute a constant node's outputs (``None``: not representable as plain tensors)."""
    if node.op_type == "Constant":
        return _constant_value(node)
    if node.op_type == "ConstantOfShape":
        shape = tuple(int(d) for d in value(node.input[0]).reshape(-1))
        fill = np.zeros(1, np.float32)
        for attr in node.attribute:
            if attr.name == "value":
                fill = numpy_helper.to_array(attr.t).reshape(-1)
        return [np.full(shape, fill[0], dtype=fill.dtype)]
    if node.op_type == "Identity":
        return [value(node.input[0])]
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    single = helper.make_graph(
        [node], "fold",
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in dict.fromkeys(inputs)],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name],
    )
    evaluator = ReferenceEvaluator(helper.make_model(single, opset_imports=[helper.make_opsetid("", opset)]))
    results = evaluator.run(None, {name: value(name) for name in dict.fromkeys(inputs)})
    if not all(isinstance(r, np.ndarray) for r in results):
        return None
    return [np.asarray(r) for r in results]


def _constant_value(node: onnx.NodeProto) -> list[np.ndarray] | None:
    if len(node.attribute) != 1:
        return None
    attr = node.attribute[0]
    if attr.name == "value":
        return [numpy_helper.to_array(attr.t)]
    scalars = {
        "value_float": lambda: np.array(attr.f, dtype=np.float32),
        "value_floats": lambda: np.array(list(attr.floats), dtype=np.float32),
        "value_int": lambda: np.array(attr.i, dtype=np.int64),
        "value_ints": lambda: np.array(list(attr.ints), dtype=np.int64),
    }
    return [scalars[attr.name]()] if attr.name in scalars else None


def _generator_shape(node: onnx.NodeProto, value: Callable[[str], np.ndarray]) -> tuple[int, ...] | None:
    try:
        return tuple(int(d) for d in value(node.input[0]).reshape(-1))
    except Exception:  # noqa: BLE001 - malformed shape tensors are left to the converter's error
        return None


def _check_elements(shape: tuple[int, ...], what: str) -> None:
    if any(d < 0 for d in shape):
        raise CimguardError(f"{what} has a negative dimension {tuple(shape)}; the file is malformed")
    elements = math.prod(shape)
    if elements > MAX_TENSOR_ELEMENTS:
        raise CimguardError(
            f"{what} would create a tensor of {elements} elements (shape {tuple(shape)}), "
            f"more than the limit of {MAX_TENSOR_ELEMENTS}; refusing"
        )


def _append_initializer(graph: onnx.GraphProto, name: str, array: np.ndarray) -> None:
    """Add a tensor with one copy of its data (``numpy_helper.from_array`` + ``append`` make two)."""
    if array.dtype == object or array.dtype.kind in "SU":
        graph.initializer.append(numpy_helper.from_array(array, name=name))
        return
    tensor = graph.initializer.add()
    tensor.name = name
    tensor.data_type = onnx.helper.np_dtype_to_tensor_dtype(array.dtype)
    tensor.dims.extend(array.shape)
    tensor.raw_data = np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tobytes()


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
    used = {name for node in model.graph.node for name in node.input}
    used |= _subgraph_inputs(model.graph)
    used |= {value.name for value in model.graph.output}
    for init in [init for init in model.graph.initializer if init.name not in used]:
        model.graph.initializer.remove(init)


def _subgraph_inputs(graph: onnx.GraphProto) -> set[str]:
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                names |= {name for n in sub.node for name in n.input}
                names |= _subgraph_inputs(sub)
    return names


def remove_training_nodes(state: Legalised) -> None:
    """``Dropout`` in inference is the identity; onnx2torch lacks Dropout 7 and keeps a module for it."""
    used = {name for node in state.model.graph.node for name in node.input}
    used |= {value.name for value in state.model.graph.output}
    changed = 0
    for node in state.model.graph.node:
        if node.op_type != "Dropout" or node.domain not in ("", "ai.onnx"):
            continue
        if len(node.output) > 1 and node.output[1] and node.output[1] in used:
            continue  # the mask is consumed: leave it to the converter
        data = node.input[0]
        del node.input[:]
        node.input.append(data)
        del node.output[1:]
        del node.attribute[:]
        node.op_type = "Identity"
        changed += 1
    if changed:
        state.notes.append(f"replaced {changed} Dropout node(s) by Identity (inference)")


def normalise_opset(state: Legalised) -> None:
    """Upgrade the default-domain opset when onnx2torch lacks converters at the model's own."""
    from cimguard.onnx.converters import CIMGUARD_DOMAIN  # noqa: F401 - registers the extra converters

    model = state.model
    current = _default_opset(model)
    missing = _unconvertible(model, current)
    if not missing:
        return
    for target in OPSET_TARGETS:
        if target <= current:
            continue
        try:
            converted = onnx.version_converter.convert_version(model, target)
            converted.ir_version = max(converted.ir_version, onnx.helper.find_min_ir_version_for(
                [helper.make_opsetid(op.domain, op.version) for op in converted.opset_import if op.domain in ("", "ai.onnx")]))
            onnx.checker.check_model(converted)
        except Exception:  # noqa: BLE001 - the converter cannot upgrade this model; try the next target
            continue
        if not _unconvertible(converted, target):
            state.model = converted
            ops = ", ".join(sorted(missing))
            state.notes.append(f"opset {current} -> {target} with the ONNX version converter (no converters for {ops} at {current})")
            return


def _unconvertible(model: onnx.ModelProto, version: int) -> set[str]:
    from onnx2torch.node_converters import get_converter

    missing = set()
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type in ("Constant", "ConstantOfShape"):
            continue  # constants are folded into initializers later and need no converter
        if node.op_type == "Pad" and version < 11 and any(a.name == "value" and a.f != 0 for a in node.attribute):
            missing.add("Pad")  # onnx2torch's Pad 2 converter ignores the 'value' attribute
            continue
        try:
            get_converter(operation_type=node.op_type, version=version)
        except NotImplementedError:
            missing.add(f"{node.op_type}")
    return missing


def infer_shapes(state: Legalised) -> None:
    """Run ONNX shape inference; converters need the ranks it provides."""
    try:
        state.model = onnx.shape_inference.infer_shapes(state.model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; conversion reports real problems
        pass


_PADDED_OPS = ("Conv", "ConvTranspose", "MaxPool", "AveragePool", "LpPool")


def explicit_padding(state: Legalised) -> None:
    """``auto_pad=SAME_UPPER/SAME_LOWER`` becomes explicit ``pads`` (static input shapes only)."""
    shapes = _value_shapes(state.model)
    initializers = {init.name: tuple(init.dims) for init in state.model.graph.initializer}
    changed = 0
    for node in state.model.graph.node:
        if node.op_type not in _PADDED_OPS or node.op_type == "ConvTranspose" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        mode = attrs.get("auto_pad", b"NOTSET")
        mode = mode.decode() if isinstance(mode, bytes) else mode
        if mode not in ("SAME_UPPER", "SAME_LOWER"):
            continue
        shape = shapes.get(node.input[0])
        if node.op_type == "Conv":
            kernel = attrs.get("kernel_shape") or list(initializers.get(node.input[1], ()))[2:]
        else:
            kernel = attrs.get("kernel_shape")
        if not shape or not kernel or any(d is None for d in shape[2:]):
            continue
        rank = len(kernel)
        strides = attrs.get("strides", [1] * rank)
        dilations = attrs.get("dilations", [1] * rank)
        begin, end = [], []
        for size, k, s, d in zip(shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            begin.append(small if mode == "SAME_UPPER" else large)
            end.append(large if mode == "SAME_UPPER" else small)
        kept = [a for a in node.attribute if a.name not in ("auto_pad", "pads")]
        del node.attribute[:]
        node.attribute.extend(kept)
        node.attribute.append(helper.make_attribute("pads", begin + end))
        changed += 1
    if changed:
        state.notes.append(f"made SAME padding explicit on {changed} node(s)")


def _value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    shapes = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        if value.type.tensor_type.HasField("shape"):
            shapes[value.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in value.type.tensor_type.shape.dim)
    return shapes


def reshape_allowzero(state: Legalised) -> None:
    """Drop ``allowzero=1`` from Reshape nodes whose constant shape has no zero (it changes nothing there)."""
    initializers = {init.name: init for init in state.model.graph.initializer}
    changed = 0
    for node in state.model.graph.node:
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        flag = [a for a in node.attribute if a.name == "allowzero" and a.i == 1]
        shape = initializers.get(node.input[1])
        if not flag or shape is None or (numpy_helper.to_array(shape) == 0).any():
            continue
        node.attribute.remove(flag[0])
        changed += 1
    if changed:
        state.notes.append(f"dropped allowzero=1 from {changed} Reshape node(s) whose shape has no zero")


def asymmetric_average_pool(state: Legalised) -> None:
    """Move AveragePool nodes with asymmetric pads to cimguard's domain (exact converter)."""
    from cimguard.onnx.converters import CIMGUARD_DOMAIN, CIMGUARD_DOMAIN_VERSION

    changed = 0
    for node in state.model.graph.node:
        if node.op_type != "AveragePool" or node.domain not in ("", "ai.onnx"):
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pads = list(attrs.get("pads", []))
        half = len(pads) // 2
        if pads[:half] == pads[half:]:
            continue
        node.domain = CIMGUARD_DOMAIN
        changed += 1
    if changed:
        if not any(op.domain == CIMGUARD_DOMAIN for op in state.model.opset_import):
            state.model.opset_import.append(helper.make_opsetid(CIMGUARD_DOMAIN, CIMGUARD_DOMAIN_VERSION))
        state.notes.append(f"{changed} AveragePool node(s) with asymmetric pads use cimguard's exact converter")


def inline_local_functions(state: Legalised) -> None:
    """Model-local functions (written by some exporters) are inlined with ``onnx.inliner``."""
    if not len(state.model.functions):
        return
    import onnx.inliner

    count = len(state.model.functions)
    try:
        state.model = onnx.inliner.inline_local_functions(state.model)
    except Exception as exc:  # noqa: BLE001 - the inliner raises many types; the user needs one line
        raise CimguardError(f"the model's local functions cannot be inlined: {type(exc).__name__}: {exc}") from None
    state.notes.append(f"inlined {count} model-local function(s)")


def fold_constant_if(state: Legalised) -> None:
    """An ``If`` whose condition is a constant is replaced by the nodes of the branch it takes."""
    graph = state.model.graph
    initializers = {init.name: init for init in graph.initializer}
    constants = {node.output[0]: node for node in graph.node if node.op_type == "Constant" and node.output}
    changed = 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        condition = _constant_condition(node, initializers, constants) if node.op_type == "If" else None
        if condition is None:
            nodes.append(node)
            continue
        branch = next(a.g for a in node.attribute if a.name == ("then_branch" if condition else "else_branch"))
        if branch.input or any(attr.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
                               for n in branch.node for attr in n.attribute):
            nodes.append(node)
            continue
        graph.initializer.extend(branch.initializer)
        nodes.extend(branch.node)
        for out, inner in zip(node.output, branch.output):
            nodes.append(helper.make_node("Identity", [inner.name], [out]))
        changed += 1
    if changed:
        del graph.node[:]
        graph.node.extend(nodes)
        state.notes.append(f"replaced {changed} If node(s) with a constant condition by the branch taken")


def _constant_condition(node: onnx.NodeProto, initializers: dict, constants: dict) -> bool | None:
    name = node.input[0]
    if name in initializers:
        value = numpy_helper.to_array(initializers[name])
    elif name in constants:
        values = _constant_value(constants[name])
        if not values:
            return None
        value = values[0]
    else:
        return None
    return bool(np.asarray(value).reshape(-1)[0]) if np.asarray(value).size == 1 else None


def single_output_graph_outputs(state: Legalised) -> None:
    """A graph output produced by a node with several outputs goes through an ``Identity``.

    onnx2torch returns a node's whole output tuple for a graph output it produces, which is
    wrong when the graph lists only some of that node's outputs (e.g. only ``Mean`` of a
    ``LayerNormalization``) or lists them in another order.
    """
    graph = state.model.graph
    outputs = {value.name for value in graph.output}
    extra: list[onnx.NodeProto] = []
    for node in graph.node:
        if len(node.output) < 2:
            continue
        for index, name in enumerate(node.output):
            if name in outputs:
                inner = f"{name}__cimguard_output"
                node.output[index] = inner
                for other in graph.node:  # other consumers read the renamed value
                    for position, used in enumerate(other.input):
                        if used == name:
                            other.input[position] = inner
                extra.append(helper.make_node("Identity", [inner], [name]))
    if extra:
        graph.node.extend(extra)


def own_converters(state: Legalised) -> None:
    """Nodes that onnx2torch converts wrongly go to cimguard's converters (see ``converters.registry``)."""
    from cimguard.onnx.converters import route_own_converters

    moved = route_own_converters(state.model)
    if moved:
        summary = ", ".join(f"{count} {op}" for op, count in sorted(moved.items()))
        state.notes.append(f"converted by cimguard's own converters (not onnx2torch's): {summary}")


def quantized_forms(state: Legalised) -> None:
    """QOperator and dynamic quantization become QDQ arithmetic; dequantized constant weights become
    float initializers whose codes are recorded (:mod:`cimguard.onnx.quantized`)."""
    from cimguard.onnx.quantized import legalise_quantized

    state.quantization, notes = legalise_quantized(state.model)
    state.notes.extend(notes)


#: Element types computed in float32 (crossbars, devices and solvers compute in float32; export writes the
#: file's own type back).
_HALF_TYPES = (onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)


def casts_to(model: onnx.ModelProto, elem_types: tuple[int, ...]) -> bool:
    """Whether a ``Cast`` of the main graph converts to one of ``elem_types``."""
    return any(node.op_type == "Cast" and any(a.name == "to" and a.i in elem_types for a in node.attribute)
               for node in model.graph.node)


def widen_half_precision(model: onnx.ModelProto, *, graph_io: bool) -> tuple[int, int]:
    """In ``model`` (changed in place): float16 and bfloat16 initializers become float32 (exactly: every
    half-precision number is a float32), ``Cast`` to float16/bfloat16 casts to float32, and internal value
    types follow; graph inputs and outputs too when ``graph_io``.  Returns (initializers, casts) changed."""
    widened = 0
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.data_type in _HALF_TYPES:
            value = numpy_helper.to_array(tensor).astype(np.float32)
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(value, tensor.name))
            widened += 1
    casts = 0
    for node in model.graph.node:
        if node.op_type == "Cast" and node.domain in ("", "ai.onnx"):
            for attr in node.attribute:
                if attr.name == "to" and attr.i in _HALF_TYPES:
                    attr.i = onnx.TensorProto.FLOAT
                    casts += 1
    values = [*model.graph.value_info] + ([*model.graph.input, *model.graph.output] if graph_io else [])
    for value in values:
        if value.type.tensor_type.elem_type in _HALF_TYPES:
            value.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
    return widened, casts


def compute_in_float32(state: Legalised) -> None:
    """bfloat16 weights and casts to half precision inside the graph compute in float32.

    The graph's inputs and outputs are declared float32 too, so that type inference stays consistent
    (an input of half precision may meet a cast that now gives float32); ``ImportedModel`` keeps the
    file's declared types for its inputs and outputs, and data is fed as the file declares it.
    """
    graph = state.model.graph
    if not any(init.data_type == onnx.TensorProto.BFLOAT16 for init in graph.initializer) and not casts_to(
            state.model, _HALF_TYPES):
        return  # nothing computes in half precision inside: the file's own types stay
    widened, casts = widen_half_precision(state.model, graph_io=True)
    if widened:
        state.notes.append(f"{widened} float16/bfloat16 initializer(s) computed in float32 (export writes their "
                           "own type back)")
    if casts:
        state.notes.append(f"{casts} Cast(s) to float16/bfloat16 compute in float32")


#: The passes, in order.
PASSES: tuple[Pass, ...] = (
    inline_local_functions,
    drop_initializer_inputs,
    remove_training_nodes,
    quantized_forms,
    normalise_opset,
    infer_shapes,
    fold_constants,
    compute_in_float32,
    explicit_padding,
    reshape_allowzero,
    asymmetric_average_pool,
    fold_constant_if,
    single_output_graph_outputs,
    own_converters,
)


def legalise_model(model: onnx.ModelProto) -> Legalised:
    """Legalise a copy of ``model``; the result records every change and where folded weights came from."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    state = Legalised(copy)
    for step in PASSES:
        step(state)
    return state


def _default_opset(model: onnx.ModelProto) -> int:
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx"):
            return op.version
    return 1
