"""ONNX import: load, check, legalise, convert to torch, and find the crossbar weights."""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from google.protobuf.message import DecodeError
from onnx2torch import convert
from onnx2torch.node_converters import get_converter
from onnx2torch.onnx_graph import OnnxGraph
from torch import fx, nn

import cimguard.converters  # noqa: F401 - registers the extra onnx2torch converters before any conversion
from cimguard.checks import AllocationError, allocation_guard, check_input_file, check_model_tensors, check_opsets
from cimguard.errors import CimguardError
from cimguard.legalise import MAX_TENSOR_ELEMENTS, WeightOrigin, legalise_model

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
    """How batches of any size run (:mod:`cimguard.batch`): ``dynamic`` (the file's own batch axis),
    ``symbolic`` (a fixed batch made symbolic), ``vmap`` or ``loop`` (a batch-1 file, one sample at a time),
    ``fixed`` (runs only on the file's own batch size; any other is a one-line error)."""

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
        raise CimguardError(f"{path} is not a valid ONNX file ({_first_line(exc)})") from None
    if model.ir_version <= 0 or not model.HasField("graph") or len(model.graph.node) == 0:
        raise CimguardError(f"{path} is not an ONNX model (no graph or no IR version)")
    check_opsets(model, str(path))
    _check_tensor_sizes(model, path)
    _load_external_data(model, path)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise CimguardError(f"{path} fails the ONNX checker: {_first_line(exc)}") from None
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


def load_model(path: str | Path, *, verify_with: torch.Tensor | None = None) -> ImportedModel:
    """Load an ONNX file and convert it to torch.

    Args:
        path: the ``.onnx`` file.
        verify_with: inputs to run through both the converted model and
            onnxruntime; a mismatch raises :class:`CimguardError`.
    """
    path = Path(path)
    original = read_onnx(path)
    imported = import_model(original, path=path)
    if verify_with is not None:
        verify_against_onnxruntime(imported, verify_with)
    return imported


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
    if not mapped and require_mapped:
        raise CimguardError(
            f"{where} has no crossbar-mappable layer (Conv, Gemm or MatMul with a constant weight)"
        )
    initializer_names = {init.name for init in legal.graph.initializer}
    inputs = tuple(_spec(v) for v in legal.graph.input if v.name not in initializer_names)
    outputs = tuple(_spec(v) for v in legal.graph.output)
    if batch_mode not in ("dynamic", "fixed"):  # every batch size runs now
        inputs = tuple(TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype) for spec in inputs)
        outputs = tuple(TensorSpec(spec.name, (None, *spec.shape[1:]), spec.dtype) for spec in outputs)
    return ImportedModel(path, original, legal, module, inputs, outputs, mapped, notes,
                         dict(state.origins), batch_mode)


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
        raise CimguardError(f"{where}: unsupported ONNX construct: {_first_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many types; the user needs one line
        raise CimguardError(f"{where}: conversion to torch failed: {type(exc).__name__}: {_first_line(exc)}") from None
    module.eval()
    if any(t.is_floating_point() and t.dtype != torch.float32 for t in (*module.parameters(), *module.buffers())):
        # Crossbars, devices and solvers compute in float32; the export writes the file's own dtype back.
        module.float()
        if notes is not None:
            notes.append("float16/float64 weights are computed in float32 (export writes the original type back)")
    for p in module.parameters():
        p.requires_grad_(False)
    return module


def _any_batch_size(legal: onnx.ModelProto, module: fx.GraphModule, where: str,
                    notes: list[str]) -> tuple[onnx.ModelProto, fx.GraphModule, str]:
    """Make a file exported with a fixed batch run on any batch (see :mod:`cimguard.batch`)."""
    from cimguard import batch as batching

    size = batching.fixed_batch(legal)
    if size is None:
        return legal, module, batching.DYNAMIC
    spec = _spec(next(v for v in legal.graph.input if v.name not in {i.name for i in legal.graph.initializer}))
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


def _check_operators(model: onnx.ModelProto, where: str) -> None:
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


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor_type.shape.dim)
    return TensorSpec(value.name, dims, _ONNX_TYPES.get(tensor_type.elem_type, "UNDEFINED").lower())


def run_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    """Run ``model`` on ``x`` with onnxruntime's CPU provider; returns the first output.

    onnxruntime implements opsets from 7 on; an older model is run as a copy upgraded
    with ONNX's version converter (the model itself is not changed).
    """
    session = _ort_session(model)
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def run_onnxruntime_all(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run ``model`` with onnxruntime on named inputs; returns every output.

    A file that fixes its batch size (``torch.onnx.export``'s default writes batch 1) is
    run on chunks of that size, the last one padded with copies of the first sample
    (the padding's outputs are dropped), so any number of samples can be checked.
    """
    from cimguard.batch import fixed_batch

    session = _ort_session(model)
    size = fixed_batch(model)
    count = len(next(iter(feeds.values()))) if len(feeds) == 1 else None
    if size is None or count is None or count == size:
        return list(session.run(None, feeds))
    name, x = next(iter(feeds.items()))
    chunks = []
    for start in range(0, count, size):
        part = x[start : start + size]
        if len(part) < size:
            part = np.concatenate([part, np.repeat(x[:1], size - len(part), axis=0)])
        chunks.append(session.run(None, {name: part}))
    return [np.concatenate([chunk[k] for chunk in chunks])[:count] for k in range(len(chunks[0]))]


def _import_onnxruntime():
    """onnxruntime, imported so that it writes nothing under the user's home.

    On import, onnxruntime creates a telemetry device id and database under
    ``$XDG_CACHE_HOME`` (default ``~/.cache/Microsoft/DeveloperTools``).  cimguard
    writes only the outputs the user names, so the import happens with
    ``XDG_CACHE_HOME`` pointing at a private temporary folder, removed at exit.
    """
    import sys

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    import atexit
    import os
    import shutil
    import tempfile

    scratch = tempfile.mkdtemp(prefix="cimguard-ort-")
    atexit.register(shutil.rmtree, scratch, True)
    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = scratch
    try:
        import onnxruntime
    finally:
        if previous is None:
            del os.environ["XDG_CACHE_HOME"]
        else:
            os.environ["XDG_CACHE_HOME"] = previous
    return onnxruntime


def _ort_session(model: onnx.ModelProto):
    ort = _import_onnxruntime()

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types are not importable portably
        opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
        if opset is None or opset >= _ORT_MIN_OPSET:
            raise CimguardError(f"onnxruntime cannot run the model: {_first_line(exc)}") from None
    upgraded = onnx.version_converter.convert_version(model, _ORT_UPGRADE_OPSET)
    try:
        return ort.InferenceSession(upgraded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise CimguardError(f"onnxruntime cannot run the model: {_first_line(exc)}") from None


# onnxruntime has kernels from opset 7 on; older models are checked as an opset-11 copy.
_ORT_MIN_OPSET = 7
_ORT_UPGRADE_OPSET = 11


def output_mismatch(reference: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's output scale."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-6)
    return float(np.abs(reference - actual).max(initial=0.0)) / scale


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every spec (dynamic axes set to 1): normal floats, zero integers and booleans."""
    generator = torch.Generator().manual_seed(seed)
    feeds = {}
    for spec in specs:
        shape = tuple(d if d is not None else 1 for d in spec.shape)
        if spec.dtype in ("float", "float16", "double", "bfloat16"):
            dtype = {"float16": np.float16, "double": np.float64}.get(spec.dtype, np.float32)
            feeds[spec.name] = torch.randn(shape, generator=generator).numpy().astype(dtype)
        elif spec.dtype == "bool" or spec.dtype.startswith(("int", "uint")):
            feeds[spec.name] = np.zeros(shape, dtype=np.dtype(spec.dtype))
        else:
            raise CimguardError(f"cannot make a random input for {spec.name!r} of type {spec.dtype}")
    return feeds


def onnxruntime_mismatch(
    model: onnx.ModelProto,
    module: nn.Module,
    feeds: dict[str, np.ndarray],
    weights: Mapping[str, torch.Tensor] | None = None,
) -> float:
    """Largest difference, relative to output scale, between ``module`` and onnxruntime running ``model``.

    Every output is compared; ``weights`` (by torch name) replace the module's own
    for the torch side, which is how export checks a model with new weights.
    """
    # The torch module computes in float32 (see import_model); onnxruntime gets the file's own input types.
    args = [_torch_feed(x) for x in feeds.values()]
    # Like with like: onnxruntime computes in float32 on the CPU, so the torch side does too.  On
    # CUDA, TF32 convolutions and matmuls alone differ from it by ~3e-4 of the output scale.
    with float32_like_onnxruntime(module), torch.no_grad():
        if weights is None:
            ours = module(*args)
        else:
            replaced = {name: value.detach().to("cpu", torch.float32) for name, value in weights.items()}
            ours = torch.func.functional_call(module, replaced, tuple(args), strict=False)
    ours = [ours] if isinstance(ours, torch.Tensor) else list(ours)
    reference = run_onnxruntime_all(model, feeds)
    if len(ours) != len(reference):
        return float("inf")
    return max(output_mismatch(ref, out.cpu().numpy()) for ref, out in zip(reference, ours))


@contextmanager
def float32_like_onnxruntime(module: nn.Module) -> Iterator[None]:
    """Within the block ``module`` computes as onnxruntime's CPU provider does: float32 on the CPU, no TF32.

    The module is moved to the CPU and back (the same parameter objects, so everything
    holding them stays valid); TF32 is switched off for the block and restored after.
    """
    state = list(module.parameters()) + list(module.buffers())
    device = state[0].device if state else torch.device("cpu")
    with _tf32_disabled():
        if device.type != "cpu":
            module.to("cpu")
        try:
            yield
        finally:
            if device.type != "cpu":
                module.to(device)


@contextmanager
def _tf32_disabled() -> Iterator[None]:
    """TF32 off for cuBLAS matmuls and cuDNN convolutions, through whichever torch API the user's settings use."""
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    try:  # the legacy flags; torch refuses to read them once its fp32_precision API has been used
        saved = (matmul.allow_tf32, cudnn.allow_tf32)
    except RuntimeError:
        saved = None
    if saved is not None:
        matmul.allow_tf32, cudnn.allow_tf32 = False, False
        try:
            yield
        finally:
            matmul.allow_tf32, cudnn.allow_tf32 = saved
        return
    precision = (matmul.fp32_precision, cudnn.conv.fp32_precision)
    matmul.fp32_precision, cudnn.conv.fp32_precision = "ieee", "ieee"
    try:
        yield
    finally:
        matmul.fp32_precision, cudnn.conv.fp32_precision = precision


def verify_against_onnxruntime(imported: ImportedModel, x: torch.Tensor, tolerance: float = 1e-4) -> float:
    """Compare the torch model with onnxruntime on ``x``; raise on mismatch, return the relative error."""
    error = onnxruntime_mismatch(imported.onnx_model, imported.module, {imported.input.name: onnx_feed(imported.input, x)})
    tolerance = comparison_tolerance(imported.onnx_model, tolerance)
    if not error <= tolerance:
        raise CimguardError(
            f"the converted model disagrees with onnxruntime: max |difference| is {error:.3g} of the output scale "
            f"(tolerance {tolerance:g})"
        )
    return error


#: Agreement expected between the float32 torch module and onnxruntime running a float16 model in float16
#: (a few float16 roundings, 2^-11 each).
FLOAT16_TOLERANCE = 2e-3


def comparison_tolerance(model: onnx.ModelProto, tolerance: float) -> float:
    """``tolerance``, widened to :data:`FLOAT16_TOLERANCE` for a model that computes in float16."""
    half = onnx.TensorProto.FLOAT16
    uses_half = any(init.data_type == half for init in model.graph.initializer) or any(
        value.type.tensor_type.elem_type == half for value in model.graph.input)
    return max(tolerance, FLOAT16_TOLERANCE) if uses_half else tolerance


def onnx_feed(spec: TensorSpec, x: torch.Tensor) -> np.ndarray:
    """``x`` as onnxruntime must receive it for input ``spec`` (its own element type: float16, int64 …)."""
    numpy_type = {"float": np.float32, "float16": np.float16, "double": np.float64}.get(spec.dtype)
    array = x.detach().cpu().numpy()
    if numpy_type is None and spec.dtype.startswith(("int", "uint")):
        numpy_type = np.dtype(spec.dtype)
    return array.astype(numpy_type or np.float32)


def _torch_feed(x: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    return tensor.float() if tensor.is_floating_point() else tensor


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]
