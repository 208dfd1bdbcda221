"""ONNX import: load, check, legalise, convert to torch, and find the crossbar weights."""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx2torch import convert
from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from torch import fx, nn

import cimguard.onnx.converters  # noqa: F401 - registers the extra onnx2torch converters before any conversion
import cimguard.onnx.quantized_converters  # noqa: F401 - QuantizeLinear/DequantizeLinear/DynamicQuantizeLinear
from cimguard.checks import (
    AllocationError,
    allocation_guard,
    check_crossbar_weights,
    check_input_file,
    check_model_tensors,
    check_opsets,
)
from cimguard.errors import CimguardError, first_line
from cimguard.onnx.legalise import MAX_TENSOR_ELEMENTS, WeightOrigin, legalise_model
from cimguard.onnx.quantized import Quantization

#: ONNX operators whose constant weight input is programmed into a crossbar.
MAPPABLE_OPS: tuple[str, ...] = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class MappedWeight:
    """One weight tensor that lives on a crossbar.

    The torch tensor ``torch_name`` holds ``scale * transform(initializer)``;
    :meth:`to_onnx` undoes that so export can write the value back.
    """

    torch_name: str
    """Name of the parameter or buffer in the converted module (for ``functional_call``)."""
    initializer: str
    """Name of the ONNX initializer it came from."""
    node: str
    """Name of the ONNX node that consumes it."""
    op_type: str
    """``Conv``, ``Gemm`` or ``MatMul``."""
    shape: tuple[int, ...]
    """Shape of the torch tensor."""
    transposed: bool = False
    """True when the torch tensor is the transpose of the ONNX one (Gemm with transB=0)."""
    scale: float = 1.0
    """Factor folded into the torch tensor (Gemm's alpha)."""

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape))

    def to_onnx(self, tensor: torch.Tensor) -> np.ndarray:
        """The ONNX initializer value for a torch weight value."""
        value = tensor.detach().cpu()
        if self.scale != 1.0:
            value = value / self.scale
        if self.transposed:
            value = value.T
        return value.contiguous().numpy()


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (``None`` for a dynamic axis) and element type of a graph input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str


@dataclass
class ImportedModel:
    """A converted network and everything the rest of cimguard needs to know about it."""

    path: Path | None
    """The file it was loaded from (``None`` when built from memory)."""
    onnx_model: onnx.ModelProto
    """The model as the user supplied it; export writes new weights into a copy of it."""
    legalised: onnx.ModelProto
    """The rewritten model that was converted."""
    module: fx.GraphModule
    """The torch module (eval mode)."""
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    mapped: tuple[MappedWeight, ...]
    """The crossbar weights, in graph order."""
    notes: list[str] = field(default_factory=list)
    """What legalisation changed, for ``inspect``."""
    origins: dict[str, WeightOrigin] = field(default_factory=dict)
    """Initializers of ``legalised`` that a node of the original graph produced (export writes there)."""
    batch_mode: str = "dynamic"
    """How batches of any size run (:mod:`cimguard.onnx.batch`): ``dynamic`` (the file's own batch axis),
    ``symbolic`` (a fixed batch made symbolic), ``vmap`` or ``loop`` (a batch-1 file, one sample at a time),
    ``fixed`` (runs only on the file's own batch size; any other is a one-line error)."""
    quantization: Quantization | None = None
    """A quantized file's codes, scales and quantizers (:mod:`cimguard.onnx.quantized`); ``None`` for a float file."""
    output_index: int = field(default=0, kw_only=True)
    """Which graph output holds the class scores (``--output NAME``, :meth:`with_output`; default the first)."""
    output_paths: tuple[tuple[int, ...], ...] | None = field(default=None, repr=False, kw_only=True)
    """Where each graph output sits in the module's result (:func:`output_paths`; computed on first use)."""

    @property
    def score_output(self) -> TensorSpec:
        """The graph output cimguard scores: the class scores (logits or probabilities)."""
        return self.outputs[self.output_index]

    def with_output(self, name: str | None) -> "ImportedModel":
        """This model with graph output ``name`` as the class scores (``None``: the first); same module."""
        if name is None:
            return dataclasses.replace(self, output_index=0)
        names = [spec.name for spec in self.outputs]
        if name not in names:
            where = str(self.path) if self.path else "the model"
            raise CimguardError(f"{where} has no output {name!r}; its outputs are {', '.join(map(repr, names))}")
        return dataclasses.replace(self, output_index=names.index(name))

    @property
    def result_paths(self) -> tuple[tuple[int, ...], ...]:
        """Where each graph output sits in what the module returns (:func:`output_paths` of the converted graph)."""
        if self.output_paths is None:
            self.output_paths = output_paths(self.legalised)
        return self.output_paths

    def scores(self, output: Any) -> Any:
        """The class-score output out of what the torch module returned (one tensor, or several)."""
        return select_output(output, self.result_paths[self.output_index])

    @property
    def input(self) -> TensorSpec:
        """The single input (evaluation and attacks need exactly one)."""
        if len(self.inputs) != 1:
            names = ", ".join(spec.name for spec in self.inputs)
            raise CimguardError(f"the model has {len(self.inputs)} inputs ({names}); cimguard evaluates single-input models")
        return self.inputs[0]

    def weights(self) -> dict[str, torch.Tensor]:
        """The current value of every mapped weight, by torch name."""
        state = dict(self.module.named_parameters()) | dict(self.module.named_buffers())
        return {m.torch_name: state[m.torch_name] for m in self.mapped}


# Protobuf's hard limit; larger files need external data.
_MAX_MODEL_BYTES = 2 * 1024**3
# One tensor may hold at most this many bytes (MAX_TENSOR_ELEMENTS float32 values), checked before reading it.
_MAX_TENSOR_BYTES = MAX_TENSOR_ELEMENTS * 4


def read_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and validate an ONNX file, with one-line errors for every way it can be wrong."""
    path = check_input_file(path, "model file")
    size = path.stat().st_size
    if size == 0:
        raise CimguardError(f"{path} is empty, not an ONNX model")
    if size > _MAX_MODEL_BYTES:
        raise CimguardError(f"{path} is larger than 2 GiB; protobuf cannot read it")
    try:
        model = onnx.load_model_from_string(path.read_bytes())
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CimguardError(f"{path} is not a valid ONNX file ({first_line(exc)})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise CimguardError(f"{path} is not an ONNX model (no graph or no IR version)")
    check_opsets(model, str(path))
    _check_tensor_sizes(model, path)
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CimguardError(f"{path} fails the ONNX checker: {first_line(exc)}") from None
    check_model_tensors(_all_tensors(model.graph), str(path))
    return model


def _all_tensors(graph: onnx.GraphProto):
    """Every tensor stored in a graph: initializers and tensor attributes, subgraphs included."""
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _check_tensor_sizes(model: onnx.ModelProto, path: Path) -> None:
    for tensor in _all_tensors(model.graph):
        if any(d < 0 for d in tensor.dims):
            raise CimguardError(f"{path}: tensor {tensor.name!r} has a negative dimension {tuple(tensor.dims)}")
        elements = int(np.prod(tensor.dims, dtype=np.float64)) if tensor.dims else 1
        if elements > MAX_TENSOR_ELEMENTS:
            raise CimguardError(
                f"{path}: tensor {tensor.name!r} has {elements} elements, more than the limit of {MAX_TENSOR_ELEMENTS}"
            )
        itemsize = _itemsize(tensor, path)
        if elements * itemsize > _MAX_TENSOR_BYTES:
            raise CimguardError(
                f"{path}: tensor {tensor.name!r} needs {elements * itemsize} bytes, more than the limit of "
                f"{_MAX_TENSOR_BYTES} bytes (1 GiB) per tensor"
            )


def _itemsize(tensor: onnx.TensorProto, path: Path) -> int:
    """Bytes per element of ``tensor``'s declared type; an unknown type is the file's error, in one line."""
    if not tensor.data_type:
        return 1
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
    except (KeyError, ValueError, TypeError):
        raise CimguardError(f"{path}: tensor {tensor.name!r} has an unknown element type {tensor.data_type}") from None


def _load_external_data(model: onnx.ModelProto, path: Path) -> None:
    """Load tensors stored in side files, refusing any location outside the model's folder."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_tensor, uses_external_data

    folder = path.resolve().parent
    for tensor in _all_tensors(model.graph):
        if not uses_external_data(tensor):
            continue
        info = ExternalDataInfo(tensor)
        location = Path(info.location or "")
        target = (folder / location).resolve()
        if not info.location or location.is_absolute() or not target.is_relative_to(folder):
            raise CimguardError(
                f"{path}: tensor {tensor.name!r} stores its data at {info.location!r}, outside the model's folder; refusing"
            )
        if not target.is_file():
            raise CimguardError(f"{path}: external data file {info.location!r} for tensor {tensor.name!r} not found")
        expected = int(np.prod(tensor.dims, dtype=np.int64)) * _itemsize(tensor, path)
        offset = int(info.offset or 0)
        length = int(info.length) if info.length is not None else target.stat().st_size - offset
        if offset < 0 or length < 0 or offset + length > target.stat().st_size or length != expected:
            raise CimguardError(
                f"{path}: external data for tensor {tensor.name!r} does not fit {info.location!r} "
                f"(offset {offset}, length {length}, tensor needs {expected} bytes)"
            )
        load_external_data_for_tensor(tensor, str(folder))
        # The data now lives in the proto; drop the reference so nothing reads the side file again.
        tensor.data_location = onnx.TensorProto.DEFAULT
        del tensor.external_data[:]


def load_model(path: str | Path) -> ImportedModel:
    """Load an ONNX file and convert it to torch (cross-check it with
    :func:`cimguard.onnx.verify.verify_against_onnxruntime`)."""
    path = Path(path)
    return import_model(read_onnx(path), path=path)


def import_model(original: onnx.ModelProto, *, path: Path | None = None, require_mapped: bool = True) -> ImportedModel:
    """Convert an in-memory ONNX model (see :func:`load_model`).

    ``require_mapped=False`` accepts networks with no crossbar layer (conformance
    tests, ``inspect``); everything else in cimguard needs at least one.
    """
    where = str(path) if path else "the model"
    state = legalise_model(original)
    legal = state.model
    _check_operators(legal, where)
    notes = list(state.notes)
    module = _convert(legal, where, notes)
    legal, module, batch_mode = _any_batch_size(legal, module, where, notes)
    mapped = find_mapped_weights(legal, module)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    check_crossbar_weights({m.initializer: (m.node, tensors[m.torch_name]) for m in mapped}, where)
    if not mapped and require_mapped:
        raise CimguardError(
            f"{where} has no crossbar-mappable layer (Conv, Gemm or MatMul with a constant weight)"
        )
    initializer_names = {init.name for init in legal.graph.initializer}
    # Element types as the file declares them (legalisation computes half precision in float32; data and
    # onnxruntime's feeds follow the file).
    declared = {v.name: tensor_spec(v).dtype for v in (*original.graph.input, *original.graph.output)}
    inputs = tuple(_declared(tensor_spec(v), declared) for v in legal.graph.input if v.name not in initializer_names)
    outputs = tuple(_declared(tensor_spec(v), declared) for v in legal.graph.output)
    if batch_mode not in ("dynamic", "fixed"):  # every batch size runs now
        inputs = tuple(TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype) for spec in inputs)
        outputs = tuple(TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype) for spec in outputs)
    return ImportedModel(path, original, legal, module, inputs, outputs, mapped, notes,
                         dict(state.origins), batch_mode, state.quantization)


def convert_model(original: onnx.ModelProto, where: str = "the model") -> fx.GraphModule:
    """Legalise and convert only: the torch module of ``original`` as the file's batch size gives it.

    No crossbar mapping and no batch rewriting; the node conformance suite
    (``tests/test_node_suite.py``) checks the converters through it.
    """
    legal = legalise_model(original).model
    _check_operators(legal, where)
    return _convert(legal, where)


def _declared(spec: TensorSpec, declared: dict[str, str]) -> TensorSpec:
    return dataclasses.replace(spec, dtype=declared.get(spec.name, spec.dtype))


def _convert(legal: onnx.ModelProto, where: str, notes: list[str] | None = None) -> fx.GraphModule:
    """onnx2torch on a legalised model: an eval-mode float32 module with frozen parameters, or a one-line error.

    ``notes`` (when given) learns that float16/float64 weights are computed in float32.
    """
    # onnx2torch's modules (Slice) warn at run time, on every new input shape, about behaviour that
    # is exact for the models it converts (non-tuple indexing, truncated slice bounds); cimguard
    # checks conversions against onnxruntime, so these warnings only clutter the user's terminal.
    # Installed at every conversion: the same filter replaces itself, and code that resets the
    # warning filters (pytest does per test) gets it back with the next model.
    warnings.filterwarnings("ignore", category=UserWarning, module=r"onnx2torch\.")
    try:
        # ... and the converter warns too while converting.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = convert(legal)
    except NotImplementedError as exc:
        raise CimguardError(f"{where}: unsupported ONNX construct{_failing_node(exc)}: {first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types; the user needs one line
        raise CimguardError(f"{where}: conversion to torch failed{_failing_node(exc)}: "
                            f"{type(exc).__name__}: {first_line(exc)}") from None
    module.eval()
    cimguard.onnx.quantized_converters.fuse_quantize_dequantize(module)  # a quantized file's activation pairs
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in (*module.parameters(), *module.buffers())):
        # Crossbars, devices and solvers compute in float32; the export writes the file's own dtype back.
        module.float()
        if notes is not None:
            notes.append("float16/float64 weights are computed in float32 (export writes the original type back)")
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _failing_node(exc: BaseException) -> str:
    """`` at node 'NAME' (OP)`` for the node onnx2torch was converting when ``exc`` was raised."""
    tb = exc.__traceback__
    node = None
    while tb is not None:  # the innermost frame of onnx2torch's conversion loop holds the node
        candidate = tb.tb_frame.f_locals.get("onnx_node")
        if candidate is not None and hasattr(candidate, "operation_type"):
            node = candidate
        tb = tb.tb_next
    if node is None:
        return ""
    return f" at node {node.name or '<unnamed>'!r} ({node.operation_type})"


def _any_batch_size(legal: onnx.ModelProto, module: fx.GraphModule, where: str,
                    notes: list[str]) -> tuple[onnx.ModelProto, fx.GraphModule, str]:
    """Make a file exported with a fixed batch run on any batch (see :mod:`cimguard.onnx.batch`)."""
    from cimguard.onnx import batch as batching

    size = batching.fixed_batch(legal)
    if size is None:
        return legal, module, batching.DYNAMIC
    spec = tensor_spec(next(v for v in legal.graph.input if v.name not in {i.name for i in legal.graph.initializer}))
    sample_shape = spec.shape[1:]
    if (any(d is None for d in sample_shape) or not spec.dtype.startswith(("float", "double"))
            or size > batching.MAX_FIXED_BATCH
            or math.prod(sample_shape) * batching.check_count(size) > MAX_TENSOR_ELEMENTS):
        # Too large to try (the later input checks say why) or not a float batch: as the file says.
        notes.append(f"fixed batch {size} kept: {batching.BATCH_MODE_TEXT[batching.FIXED]}")
        return legal, module, batching.keep_fixed(module, size)
    x = batching.check_inputs(sample_shape, batching.check_count(size))
    rewrite = batching.symbolic_batch(legal, size)
    try:
        candidate = _convert(rewrite.model, where)
    except CimguardError:
        candidate = None
    try:
        # The trial runs an untrusted graph: a memory bomb is refused before it allocates, and the
        # file then keeps its fixed batch (the run-time probe names the node at fault).
        with allocation_guard(where):
            if candidate is not None and batching.batch_preserved(module, candidate, x, size):
                notes.append(f"fixed batch {size} made symbolic: input, outputs and {rewrite.reshapes} Reshape "
                             f"shape(s); checked against {'one sample at a time' if size == 1 else f'batches of {size}'}")
                return rewrite.model, candidate, batching.SYMBOLIC
            mode = batching.run_per_sample(module, x) if size == 1 else batching.keep_fixed(module, size)
    except (AllocationError, RuntimeError, ValueError, IndexError, TypeError):
        # The graph does not run on the trial input: keep the file's own batch and let the
        # run-time probe (checks.probe_model) refuse it in one line, naming what fails.
        mode = batching.keep_fixed(module, size)
    if mode == batching.FIXED:
        notes.append(f"fixed batch {size} kept: {batching.BATCH_MODE_TEXT[mode]}")
        return legal, module, mode
    how = "vectorised with torch.func.vmap" if mode == batching.VMAP else "in a loop (vmap does not apply)"
    notes.append(f"fixed batch 1 not provably symbolic ({rewrite.reshapes} Reshape shape(s) tried): "
                 f"runs one sample at a time, {how}")
    return legal, module, mode


#: Element types torch stores but has no arithmetic kernels for (add, compare, max... fail at run time).
_NO_ARITHMETIC = {onnx.TensorProto.UINT16: "uint16", onnx.TensorProto.UINT32: "uint32",
                  onnx.TensorProto.UINT64: "uint64"}


def _check_element_types(model: onnx.ModelProto, where: str) -> None:
    values = [*model.graph.input, *model.graph.output, *model.graph.value_info]
    types = [(v.name, v.type.tensor_type.elem_type) for v in values]
    types += [(t.name, t.data_type) for t in model.graph.initializer]
    for name, elem_type in types:
        if elem_type in _NO_ARITHMETIC:
            user = next((n for n in model.graph.node if name in n.input or name in n.output), None)
            label = f"{user.op_type} node {user.name or '<unnamed>'!r}" if user is not None else "the graph"
            raise CimguardError(f"{where}: unsupported element type {_NO_ARITHMETIC[elem_type]} at {label} "
                                f"(tensor {name!r}): torch has no arithmetic for it")


def _check_operators(model: onnx.ModelProto, where: str) -> None:
    _check_element_types(model, where)
    opsets = {op.domain or "": op.version for op in model.opset_import}
    for node in model.graph.node:
        domain = node.domain if node.domain != "ai.onnx" else ""
        version = opsets.get(domain)
        if version is None:
            raise CimguardError(f"{where}: node {node.name or node.op_type} uses domain {domain!r} with no opset import")
        try:
            get_converter(domain=domain, operation_type=node.op_type, version=version)
        except NotImplementedError:
            label = f"{domain}::{node.op_type}" if domain else node.op_type
            raise CimguardError(
                f"{where}: unsupported operator {label} (opset {version}) at node {node.name or '<unnamed>'!r}"
            ) from None


def find_mapped_weights(model: onnx.ModelProto, module: fx.GraphModule) -> tuple[MappedWeight, ...]:
    """Match every Conv/Gemm/MatMul with a constant weight to its tensor in ``module``."""
    initializers = {init.name for init in model.graph.initializer}
    onnx_graph = OnnxGraph(model.graph)
    fx_nodes = {n.target: n for n in module.graph.nodes if n.op == "call_module"}
    mapped: list[MappedWeight] = []
    for unique_name, node in onnx_graph.nodes.items():
        proto = node.proto
        if proto.op_type not in MAPPABLE_OPS or len(proto.input) < 2 or proto.input[1] not in initializers:
            continue
        fx_node = fx_nodes.get(unique_name)
        if fx_node is None:
            continue
        submodule = module.get_submodule(unique_name)
        weight_name = proto.input[1]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in proto.attribute}
        if isinstance(submodule, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            entry = MappedWeight(f"{unique_name}.weight", weight_name, proto.name or unique_name, "Conv", tuple(submodule.weight.shape))
        elif isinstance(submodule, nn.Linear):
            entry = MappedWeight(
                f"{unique_name}.weight",
                weight_name,
                proto.name or unique_name,
                "Gemm",
                tuple(submodule.weight.shape),
                transposed=not attrs.get("transB", 0),
                scale=float(attrs.get("alpha", 1.0)),
            )
        else:
            # Generic MatMul / Gemm: the weight is an fx get_attr on the initializer buffer.
            if len(fx_node.args) < 2 or getattr(fx_node.args[1], "op", None) != "get_attr":
                continue
            target = fx_node.args[1].target
            tensor = module.get_buffer(target)
            if not tensor.is_floating_point() or tensor.dim() < 2:
                continue
            entry = MappedWeight(target, weight_name, proto.name or unique_name, proto.op_type, tuple(tensor.shape))
        mapped.append(entry)
    return tuple(mapped)


_ONNX_TYPES = {v: k for k, v in onnx.TensorProto.DataType.items()}


def tensor_spec(value: onnx.ValueInfoProto) -> TensorSpec:
    """An ONNX graph input or output as a :class:`TensorSpec` (unknown axes are ``None``)."""
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dims, _ONNX_TYPES.get(tensor_type.elem_type, "UNDEFINED").lower())


def shape_text(spec: TensorSpec) -> str:
    """``[?, 1, 8, 8]``: the declared shape, ``?`` for a symbolic or unknown axis."""
    return "[" + ", ".join("?" if d is None else str(d) for d in spec.shape) + "]"




def output_paths(model: onnx.ModelProto) -> tuple[tuple[int, ...], ...]:
    """For each graph output of ``model``, the indices that pick it out of what its onnx2torch module returns.

    onnx2torch returns one result per distinct producing node (a single node's result alone), and a node
    with several outputs returns them all, so ``outputs[k]`` of the file is not always ``result[k]``.
    """
    onnx_graph = OnnxGraph(model.graph)
    producers = []
    for value in onnx_graph.output_values:
        node, index = onnx_graph.value_as_node_output(value)
        producers.append((node, index))
    distinct = list(dict.fromkeys(node for node, _ in producers))
    return tuple(
        ((distinct.index(node),) if len(distinct) > 1 else ()) + ((index,) if len(node.output_values) > 1 else ())
        for node, index in producers
    )


def select_output(output: Any, path: tuple[int, ...]) -> Any:
    """``output[i][j]...`` along ``path`` (:func:`output_paths`)."""
    for index in path:
        output = output[index]
    return output
