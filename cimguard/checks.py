"""Checks where data enters cimguard: files, tensors, archives, model I/O and the first forward pass.

Every check raises :class:`CimguardError` with one line that names the file, array,
tensor or field at fault.  They run once, where the data comes in (model loading,
data loading, device configs, the solver core), so nothing downstream ever computes a
number from NaN, Inf, a bad shape or an allocation the input asked for.
"""

from __future__ import annotations

import errno
import math
import os
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import onnx
import torch

from cimguard.errors import CimguardError, first_line
from cimguard.onnx.legalise import MAX_TENSOR_ELEMENTS

#: The most elements one tensor (a weight, an input array, a value made at run time) may have.
MAX_ELEMENTS = MAX_TENSOR_ELEMENTS
#: Samples probed under :func:`allocation_guard` before any evaluation (run-time memory bombs scale with them).
PROBE_SAMPLES = 8


# -- files ------------------------------------------------------------------------------------------


def check_input_file(path: str | Path, what: str) -> Path:
    """``path`` as a readable regular file, or one line naming what is wrong (all exit status 1)."""
    path = Path(path)
    try:
        status = path.stat()
    except FileNotFoundError:
        raise CimguardError(f"{what} not found: {path}") from None
    except OSError as exc:
        raise CimguardError(f"{what} {_short(path)} cannot be read: {exc.strerror or exc}") from None
    import stat

    if not stat.S_ISREG(status.st_mode):
        raise CimguardError(f"{what} {path} is not a file")
    if not os.access(path, os.R_OK):
        raise CimguardError(f"{what} {path} is not readable (permission denied)")
    return path


def os_error_message(exc: OSError) -> str:
    """One line for an I/O failure (disk full, file too large, name too long), naming the file."""
    reason = exc.strerror or (os.strerror(exc.errno) if exc.errno else type(exc).__name__)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on the device"
    elif exc.errno == errno.EFBIG:
        reason = "file too large (file-size limit reached)"
    name = f" {_short(exc.filename)}" if exc.filename else ""
    return f"I/O error{name}: {reason}"


def _short(path: Any, limit: int = 120) -> str:
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}…{text[-limit // 4:]} ({len(text)} characters)"


# -- tensors and arrays -----------------------------------------------------------------------------


def _first_index(mask: np.ndarray) -> tuple[int, ...]:
    flat = int(np.flatnonzero(mask.reshape(-1))[0])
    return tuple(int(i) for i in np.unravel_index(flat, mask.shape)) if mask.ndim else ()


def check_finite(values: np.ndarray | torch.Tensor, what: str, *, allow_inf: bool = False) -> None:
    """Refuse NaN and ±Inf (only NaN with ``allow_inf``), with their count and the first index."""
    if isinstance(values, torch.Tensor):
        if not values.is_floating_point() and not values.is_complex():
            return
        bad_tensor = torch.isnan(values.detach()) if allow_inf else ~torch.isfinite(values.detach())
        if not bool(bad_tensor.any()):
            return
        bad = bad_tensor.cpu().numpy()
    else:
        values = np.asarray(values)
        if values.dtype.kind not in "fc":
            return
        bad = np.isnan(values) if allow_inf else ~np.isfinite(values)
        if not bad.any():
            return
    kind = "NaN" if allow_inf else "NaN or ±Inf"
    raise CimguardError(f"{what} holds {int(bad.sum())} non-finite value(s) ({kind}); "
                        f"the first at index {_first_index(bad)}")


def check_float_array(array: np.ndarray, what: str, *, dtype: np.dtype = np.dtype(np.float32)) -> None:
    """Numbers a model can take as ``dtype``: real, finite, and within its range (no overflow when cast)."""
    if array.dtype.kind == "c":
        raise CimguardError(f"{what} is complex ({array.dtype}); cimguard needs real numbers "
                            "(it never drops the imaginary part silently)")
    if array.dtype.kind == "b":
        raise CimguardError(f"{what} is bool; cimguard needs numbers (convert it to 0/1 floats first)")
    if array.dtype.kind not in "fiu":
        raise CimguardError(f"{what} must be numeric, got {array.dtype}")
    check_finite(array, what)
    limit = float(np.finfo(dtype).max) if np.dtype(dtype).kind == "f" else None
    if limit is not None and array.dtype.kind == "f" and np.dtype(array.dtype).itemsize > np.dtype(dtype).itemsize:
        over = np.abs(array) > limit
        if over.any():
            raise CimguardError(f"{what} holds {int(over.sum())} value(s) beyond the {np.dtype(dtype).name} range "
                                f"(±{limit:.4g}), which would become ±Inf; the first at index {_first_index(over)}")


# -- npz archives -------------------------------------------------------------------------------------


def read_npz(path: str | Path, what: str = "data file") -> dict[str, np.ndarray]:
    """Every array of an ``.npz`` archive, after checking what each member declares before allocating it.

    The zip directory and each ``.npy`` header are read first: object arrays (which
    only the unpickler can read), shapes over :data:`MAX_ELEMENTS` and members whose
    size disagrees with their header (zip bombs, truncated data) are refused; CRC
    errors and broken compression are one line too.
    """
    path = check_input_file(path, what)
    if not zipfile.is_zipfile(path):
        hint = " (a .npy file? save several arrays with numpy.savez)" if path.read_bytes()[:6] == b"\x93NUMPY" else ""
        raise CimguardError(f"{path} is not a .npz archive{hint}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as archive:
            members = [info for info in archive.infolist() if info.filename.endswith(".npy")]
            for info in members:
                _check_npy_member(path, archive, info)
            for info in members:
                with archive.open(info) as member:
                    arrays[info.filename[:-4]] = np.lib.format.read_array(member, allow_pickle=False)
    except CimguardError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, ValueError, EOFError, NotImplementedError) as exc:
        reason = first_line(exc)
        raise CimguardError(f"{path} is a corrupt .npz archive ({reason[:200]})") from None
    return arrays


def _check_npy_member(path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    key = info.filename[:-4]
    with archive.open(info) as member:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=10_000)
        else:  # 2.0 and 3.0 share the header layout (3.0 only allows UTF-8 field names)
            shape, _, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=10_000)
        header_bytes = member.tell()
    if dtype.hasobject:
        raise CimguardError(f"{path}: array {key!r} holds Python objects (dtype object); "
                            "cimguard never runs the unpickler on data files")
    elements = math.prod(shape)
    if elements > MAX_ELEMENTS:
        raise CimguardError(f"{path}: array {key!r} declares shape {tuple(shape)} ({elements} elements), "
                            f"more than the limit of {MAX_ELEMENTS}")
    expected = header_bytes + elements * dtype.itemsize
    if info.file_size != expected:
        raise CimguardError(f"{path}: array {key!r} declares {elements * dtype.itemsize} bytes of data but the "
                            f"archive member holds {info.file_size - header_bytes} bytes")


# -- models -------------------------------------------------------------------------------------------


def check_model_tensors(tensors, where: str) -> None:
    """No floating-point constant of a model (initializers, Constant values) may hold NaN.

    ±Inf is a legitimate constant (the initial value of a running ``Max``, a mask of ``-inf``);
    crossbar weights, which must be finite, are checked once they are known
    (:func:`check_crossbar_weights`).
    """
    from onnx import numpy_helper

    for tensor in tensors:
        if tensor.raw_data and tensor.data_type not in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
            expected = math.prod(tensor.dims) * itemsize
            if len(tensor.raw_data) != expected:
                raise CimguardError(f"{where}: tensor {tensor.name!r} declares shape {tuple(tensor.dims)} "
                                    f"({expected} bytes) but holds {len(tensor.raw_data)} bytes")
        if tensor.data_type not in _FLOAT_TYPES:
            continue
        try:
            values = numpy_helper.to_array(tensor)
        except ValueError as exc:
            raise CimguardError(f"{where}: tensor {tensor.name!r} does not hold its declared shape "
                                f"{tuple(tensor.dims)} ({str(exc)[:120]})") from None
        if values.dtype.kind not in "fc":  # bfloat16 arrives as an ml_dtypes type numpy cannot test
            values = values.astype(np.float32)
        # ±Inf is a legitimate constant (the start of a running Max); only crossbar weights must be finite.
        check_finite(values, f"{where}: tensor {tensor.name!r}", allow_inf=True)


def check_crossbar_weights(weights: Mapping[str, tuple[str, torch.Tensor]], where: str) -> None:
    """Every crossbar weight (``{initializer: (node, tensor)}``) is finite: a device cannot hold ±Inf."""
    for name, (node, tensor) in weights.items():
        check_finite(tensor, f"{where}: tensor {name!r} (the crossbar weight of node {node!r})")


#: ONNX element types whose values can be NaN or ±Inf.
_FLOAT_TYPES = frozenset({onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
                          onnx.TensorProto.BFLOAT16, onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128})

#: Model input types cimguard can feed: floats (evaluation data is cast to them) and integer token ids.
FLOAT_INPUTS = ("float", "float16", "double", "bfloat16")
INTEGER_INPUTS = ("int32", "int64")


def check_opsets(model, where: str) -> None:
    """Refuse opsets newer than the installed ``onnx`` knows (their semantics are not defined here)."""
    newest = onnx.defs.onnx_opset_version()
    for opset in model.opset_import:
        if opset.domain in ("", "ai.onnx") and opset.version > newest:
            raise CimguardError(f"{where} imports ONNX opset {opset.version}, newer than the newest this onnx "
                                f"knows ({newest}); re-export it at opset {newest} or lower")


def check_input_spec(spec, where: str) -> None:
    """A model input cimguard can feed: a supported element type and positive (or dynamic) dimensions."""
    if spec.dtype not in FLOAT_INPUTS + INTEGER_INPUTS:
        raise CimguardError(f"{where}: input {spec.name!r} is {spec.dtype}; cimguard feeds float, float16, bfloat16 "
                            "or double inputs, or int32/int64 token ids")
    for axis, size in enumerate(spec.shape):
        if size is not None and size <= 0:
            raise CimguardError(f"{where}: input {spec.name!r} declares dimension {size} on axis {axis}; "
                                "dimensions must be positive (or dynamic)")


def check_declared_dims(value_info, where: str) -> None:
    """Declared input dimensions (zero or negative ones included) before :class:`TensorSpec` hides them."""
    for axis, dim in enumerate(value_info.type.tensor_type.shape.dim):
        if dim.HasField("dim_value") and dim.dim_value <= 0:
            raise CimguardError(f"{where}: input {value_info.name!r} declares dimension {dim.dim_value} on axis "
                                f"{axis}; dimensions must be positive (or dynamic)")


#: Said with every refusal of the class-score output.
_PICK_ANOTHER = "--output NAME (harden: --score-output NAME; output= in Python) picks another output"


def check_output_spec(spec, where: str, others: int = 0) -> None:
    """The class-score output must be declared ``[batch, classes]`` floats (when its rank and type are declared)."""
    hint = f"; {_PICK_ANOTHER}" if others else ""
    if spec.shape and len(spec.shape) != 2:
        raise CimguardError(f"{where}: output {spec.name!r} has shape {_dims(spec.shape)}; cimguard needs the class "
                            f"scores as [batch, classes]{hint}")
    if spec.dtype not in ("float", "float16", "double", "bfloat16", "undefined"):
        raise CimguardError(f"{where}: output {spec.name!r} is {spec.dtype}, not class scores (floating-point "
                            f"logits or probabilities){hint}")


def check_logits(output: Any, spec, batch: int, where: str) -> None:
    """What the model returned for a probe batch: finite ``[batch, classes]`` logits with two classes or more."""
    if not isinstance(output, torch.Tensor):
        raise CimguardError(f"{where}: output {spec.name!r} is a {type(output).__name__}, not a tensor")
    shape = tuple(output.shape)
    if output.dim() != 2 or shape[0] != batch:
        raise CimguardError(f"{where}: output {spec.name!r} has shape {list(shape)} for {batch} samples; cimguard "
                            f"needs the class scores as [batch, classes] ({_PICK_ANOTHER})")
    if shape[1] < 2:
        raise CimguardError(f"{where}: output {spec.name!r} has {shape[1]} class; accuracy needs two or more")
    if not output.is_floating_point():
        raise CimguardError(f"{where}: output {spec.name!r} is {output.dtype}, not floating-point logits")
    check_finite(output, f"{where}: output {spec.name!r} on the first {batch} samples")


def _dims(shape) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


# -- run-time allocations -----------------------------------------------------------------------------


class AllocationError(CimguardError):
    """A tensor the model would make at run time is larger than :data:`MAX_ELEMENTS`."""


def _shape_elements(shape: Any) -> int | None:
    try:
        return math.prod(int(d) for d in shape)
    except (TypeError, ValueError):
        return None


def _requested_elements(func: Any, args: tuple, kwargs: Mapping[str, Any]) -> int | None:
    """Elements an ATen call will produce, computed from its arguments *before* it runs (``None``: unknown)."""
    aten = torch.ops.aten
    packet = getattr(func, "overloadpacket", None)
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if packet in (aten.full, aten.empty, aten.zeros, aten.ones, aten.rand, aten.randn, aten.empty_strided):
        return _shape_elements(args[0] if args else kwargs.get("size", ()))
    if packet in (aten.new_full, aten.new_empty, aten.new_zeros, aten.new_ones, aten.new_empty_strided):
        return _shape_elements(args[1] if len(args) > 1 else kwargs.get("size", ()))
    if packet is aten.expand and tensors and len(args) > 1:
        source = tuple(tensors[0].shape)
        target = [int(d) for d in args[1]]
        offset = len(target) - len(source)
        return _shape_elements([source[i - offset] if d == -1 and i >= offset else d for i, d in enumerate(target)])
    if packet is aten.repeat and tensors and len(args) > 1:
        repeats = _shape_elements(args[1])
        return None if repeats is None else tensors[0].numel() * repeats
    if packet is aten.arange:
        numbers = [float(a) for a in args if isinstance(a, (int, float))]
        if numbers:
            start, end, step = (0.0, numbers[0], 1.0) if len(numbers) == 1 else (*numbers[:2], numbers[2] if len(numbers) > 2 else 1.0)
            return int(abs((end - start) / step)) if step else None
    if packet in (aten.mm, aten.bmm, aten.matmul, aten.addmm, aten.baddbmm) and len(tensors) >= 2:
        a, b = tensors[-2], tensors[-1]
        if a.dim() >= 1 and b.dim() >= 2:
            try:
                batch = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
            except RuntimeError:
                return None
            rows = a.shape[-2] if a.dim() >= 2 else 1
            return math.prod(batch) * rows * b.shape[-1]
        return None
    if len(tensors) >= 2 and torch.Tag.pointwise in getattr(func, "tags", ()):
        try:
            return math.prod(torch.broadcast_shapes(*(t.shape for t in tensors)))
        except RuntimeError:
            return None
    return None


@contextmanager
def allocation_guard(where: str, limit: int = MAX_ELEMENTS) -> Iterator[None]:
    """Refuse, before it allocates, any tensor of more than ``limit`` elements made by torch inside the block.

    Catches run-time memory bombs: ``ConstantOfShape``/``Expand`` whose shape comes
    from the input, constant products far larger than their declared value_info.
    """
    from torch.utils._python_dispatch import TorchDispatchMode

    class _Guard(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            elements = _requested_elements(func, args, kwargs)
            if elements is not None and elements > limit:
                raise AllocationError(
                    f"{where}: running the model would allocate a tensor of {elements} elements "
                    f"({getattr(func, '__name__', func)}), more than the limit of {limit}; the model computes "
                    "a size from its input or a constant larger than it declares"
                )
            return func(*args, **kwargs)

    with _Guard():
        yield


def run_probe(module_call, where: str, model=None) -> Any:
    """``module_call()`` under :func:`allocation_guard`; a failure of the model itself is one line naming it.

    When ``model`` (the ONNX proto) is given, ONNX's strict shape inference names the node at fault.
    """
    try:
        with allocation_guard(where), torch.no_grad():
            return module_call()
    except CimguardError:
        raise
    except (RuntimeError, ValueError, IndexError, TypeError) as exc:
        reason = first_line(exc)
        reason = f"{type(exc).__name__}: {reason[:300]}"
        if model is not None:
            try:
                onnx.shape_inference.infer_shapes(model, strict_mode=True)
            except Exception as inference:  # noqa: BLE001 - any inference failure is the better explanation
                text = str(inference).replace("[ShapeInferenceError] Inference error(s): ", "").strip()
                reason = f"{text.splitlines()[0][:300]}; torch says {reason}"
        raise CimguardError(f"{where}: the model fails on the input ({reason})") from None


# -- configs ------------------------------------------------------------------------------------------


def check_finite_fields(config: Any, field_docs: Mapping[str, str]) -> None:
    """Refuse NaN everywhere and ±Inf in any float field whose docstring does not give ``inf`` a meaning."""
    import dataclasses

    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        values = value if isinstance(value, (tuple, list)) else (value,)
        for number in values:
            if not isinstance(number, float) or math.isfinite(number):
                continue
            documented = "inf" in field_docs.get(item.name, "").replace("infer", "")
            if math.isnan(number) or not documented:
                raise CimguardError(f"{item.name} must be a finite number, got {number}")


# -- a model about to be evaluated --------------------------------------------------------------------


def check_model_io(imported, where: str) -> None:
    """The single input is one cimguard can feed and the class-score output (``--output``; default the first)
    is declared as ``[batch, classes]`` floats."""
    spec = imported.input
    for value in imported.legalised.graph.input:
        if value.name == spec.name:
            check_declared_dims(value, where)
    check_input_spec(spec, where)
    if imported.outputs:
        check_output_spec(imported.score_output, where, others=len(imported.outputs) - 1)


def probe_model(crossbar, x: torch.Tensor, where: str) -> None:
    """Run the first samples through the chip under :func:`allocation_guard` and check the logits.

    Memory bombs, outputs that are not ``[batch, classes]`` and models that produce
    NaN from finite inputs are refused here, before any accuracy is computed.
    """
    spec = crossbar.imported.score_output if crossbar.imported.outputs else None
    output = run_probe(lambda: crossbar.logits(x), where, crossbar.imported.legalised)
    check_logits(output, spec or _Unnamed(), len(x), where)
    _check_scores_follow_weights(crossbar, x[:1], spec or _Unnamed(), where)


def _check_scores_follow_weights(crossbar, x: torch.Tensor, spec, where: str) -> None:
    """Class scores change with the crossbar weights: an output no weight's gradient reaches (a predicted
    label cast to floats, a constant) would give solvers and trainers nothing to work on."""
    with torch.enable_grad():
        weights = {name: value.detach().requires_grad_(True) for name, value in crossbar.perturbed_weights().items()}
        output = crossbar.logits_for_weights(x, weights)
    if not output.requires_grad:
        raise CimguardError(f"{where}: output {spec.name!r} does not depend on any crossbar weight (no gradient "
                            f"reaches them), so it cannot be the class scores; {_PICK_ANOTHER}")


class _Unnamed:
    name = "<class scores>"


# -- saved perturbations ------------------------------------------------------------------------------

#: The metadata ``attack --replay`` reads, and the JSON types each may have (``None``: may be null).
_PERTURBATION_FIELDS: dict[str, tuple[type, ...]] = {
    "thg": (int, float, type(None)),
    "box": (str,),
    "model": (str, type(None)),
    "model_sha256": (str, type(None)),
    "data": (str,),
    "device": (str,),
    "device_params": (list,),
    "device_file": (str, type(None)),
    "weight_bits": (int,),
    "label_free": (bool,),
    "max_samples": (int, type(None)),
    "output": (str, type(None)),
}


def check_perturbation_metadata(meta: Mapping[str, Any], path: Path) -> None:
    """The metadata of a saved perturbation: ``thg`` present (a finite number >= 0, or null for the device's own box), every other field well typed."""
    if "thg" not in meta:
        raise CimguardError(f"{path}: the metadata has no thg (the write-verify threshold the ΔW was found at)")
    for key, types in _PERTURBATION_FIELDS.items():
        if key not in meta:
            continue
        value = meta[key]
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if key == "device_params" and not wrong:
            wrong = not all(isinstance(item, str) for item in value)
        if wrong:
            kinds = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CimguardError(f"{path}: metadata field {key} must be {kinds}, got {value!r}")
    if meta.get("max_samples") is not None and meta["max_samples"] < 1:
        raise CimguardError(f"{path}: metadata max_samples must be >= 1 or null, got {meta['max_samples']!r}")
    box = meta.get("box", "thg")
    if box not in ("thg", "device"):
        raise CimguardError(f"{path}: metadata box must be 'thg' or 'device', got {box!r}")
    if (meta["thg"] is None) != (box == "device"):
        raise CimguardError(f"{path}: metadata thg must be null exactly when box is 'device', got thg {meta['thg']!r}")
    if meta["thg"] is not None:
        thg = float(meta["thg"])
        if not math.isfinite(thg) or thg < 0:
            raise CimguardError(f"{path}: metadata thg must be a finite number >= 0, got {meta['thg']!r}")


def config_text(config: Any) -> str:
    """``field=value, …`` of a config dataclass, for messages that blame its values."""
    import dataclasses

    return ", ".join(f"{item.name}={getattr(config, item.name)!r}" for item in dataclasses.fields(config))
