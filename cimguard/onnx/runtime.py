"""onnxruntime as the reference: run an ONNX model, and measure how far the converted torch module is from it.

cimguard trusts a conversion only as far as onnxruntime agrees with it (the check of every run in
:mod:`cimguard.onnx.verify`, ``inspect``, the fixed-batch rewrite in :mod:`cimguard.onnx.batch`, and the
file ``harden`` writes).  Both sides run
like with like: the torch module in float32 with TF32 off (:func:`float32_like_onnxruntime`).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from cimguard.errors import CimguardError, first_line
from cimguard.onnx.batch import fixed_batch, output_mismatch
from cimguard.onnx.legalise import casts_to
from cimguard.onnx.model import TensorSpec, output_paths, select_output
from cimguard.seeds import torch_generator

# onnxruntime has kernels from opset 7 on; older models are checked as an opset-11 copy.
_ORT_MIN_OPSET = 7
_ORT_UPGRADE_OPSET = 11

#: Agreement expected between the float32 torch module and onnxruntime running a float16 model in float16
#: (a few float16 roundings, 2^-11 each).
FLOAT16_TOLERANCE = 2e-3
#: The same for a bfloat16 model (8 significant bits: 2^-9 per rounding, e.g. of the weights export writes back).
BFLOAT16_TOLERANCE = 1e-2


class OnnxRuntimeCannotRun(CimguardError):
    """onnxruntime cannot build a session for the model (an operator or type it has no kernel for)."""


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
    if _holds_bfloat16(model):
        # onnxruntime's CPU provider has almost no bfloat16 kernels.  Its reference is then the file's float32
        # copy: every bfloat16 weight widened exactly, casts to bfloat16 made float32 (what cimguard computes).
        from cimguard.onnx.legalise import widen_half_precision

        widened = onnx.ModelProto()
        widened.CopyFrom(model)
        widen_half_precision(widened, graph_io=True)
        model = widened

    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One thread: cimguard's checks run a few samples (a check runs before every command), and starting a
    # thread pool costs more than it saves; on a busy machine far more (0.4 s against 0.03 s for the
    # shipped LeNet, measured here), and its busy-waiting threads slow the torch work that follows.
    options.intra_op_num_threads = 1
    try:
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own exception types are not importable portably
        opset = next((op.version for op in model.opset_import if op.domain in ("", "ai.onnx")), None)
        if opset is None or opset >= _ORT_MIN_OPSET:
            raise OnnxRuntimeCannotRun(f"onnxruntime cannot run the model: {first_line(exc)}") from None
    upgraded = onnx.version_converter.convert_version(model, _ORT_UPGRADE_OPSET)
    try:
        return ort.InferenceSession(upgraded.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001
        raise OnnxRuntimeCannotRun(f"onnxruntime cannot run the model: {first_line(exc)}") from None


def random_inputs(specs: Sequence[TensorSpec], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every spec (dynamic axes set to 1): normal floats, zero integers and booleans."""
    generator = torch_generator(seed)
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
    *,
    paths: Sequence[tuple[int, ...]] | None = None,
) -> float:
    """Largest difference, relative to output scale, between ``module`` and onnxruntime running ``model``.

    Every output is compared; ``weights`` (by torch name) replace the module's own
    for the torch side, which is how export checks a model with new weights.
    """
    # The torch module computes in float32 (see import_model); onnxruntime gets the file's own input types.
    args = [torch_feed(x) for x in feeds.values()]
    # Like with like: onnxruntime computes in float32 on the CPU, so the torch side does too.  On
    # CUDA, TF32 convolutions and matmuls alone differ from it by ~3e-4 of the output scale.
    with float32_like_onnxruntime(module), torch.no_grad():
        if weights is None:
            ours = module(*args)
        else:
            replaced = {name: value.detach().to("cpu", torch.float32) for name, value in weights.items()}
            ours = torch.func.functional_call(module, replaced, tuple(args), strict=False)
    ours = _per_graph_output(model, ours, paths)
    reference = run_onnxruntime_all(model, feeds)
    if len(ours) != len(reference):
        return float("inf")
    return max(output_mismatch(ref, out.cpu().numpy()) for ref, out in zip(reference, ours))


def _per_graph_output(model: onnx.ModelProto, result, paths: Sequence[tuple[int, ...]] | None) -> list:
    """The module's ``result`` as one tensor per graph output, in the file's order (onnx2torch returns one
    result per producing node: two outputs of one ``Split`` arrive as one tuple).  ``paths``: those of the
    graph the module was converted from (``ImportedModel.result_paths``); else read from ``model``."""
    try:
        return [select_output(result, path) for path in (paths if paths is not None else output_paths(model))]
    except (KeyError, IndexError, TypeError):  # outputs onnx2torch could not have converted either
        return [result] if isinstance(result, torch.Tensor) else list(result)


@contextmanager
def float32_like_onnxruntime(module: nn.Module) -> Iterator[None]:
    """Within the block ``module`` computes as onnxruntime's CPU provider does here: float32 on the CPU, no
    TF32, one thread.

    The module is moved to the CPU and back (the same parameter objects, so everything
    holding them stays valid); TF32 is switched off for the block and restored after.  One thread,
    as the onnxruntime sessions (:func:`_ort_session`): a check runs a few samples, and waking a
    thread pool for each small operator cost 0.1 s per check of the shipped LeNet on a busy 2-core
    machine, against 1 ms on one thread.
    """
    state = list(module.parameters()) + list(module.buffers())
    device = state[0].device if state else torch.device("cpu")
    threads = torch.get_num_threads()
    with _tf32_disabled():
        if device.type != "cpu":
            module.to("cpu")
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)
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


def comparison_tolerance(model: onnx.ModelProto, tolerance: float) -> float:
    """``tolerance``, widened to :data:`FLOAT16_TOLERANCE` for a model that computes in float16 (weights,
    inputs or casts inside the graph), to :data:`BFLOAT16_TOLERANCE` for one that holds bfloat16 and to
    :data:`cimguard.onnx.quantized.QUANTIZED_TOLERANCE` for a quantized one."""
    from cimguard.onnx.quantized import QUANTIZED_TOLERANCE, is_quantized

    if is_quantized(model):
        tolerance = max(tolerance, QUANTIZED_TOLERANCE)
    if _holds_bfloat16(model):
        tolerance = max(tolerance, BFLOAT16_TOLERANCE)
    half = onnx.TensorProto.FLOAT16
    uses_half = any(init.data_type == half for init in model.graph.initializer) or any(
        value.type.tensor_type.elem_type == half for value in model.graph.input) or casts_to(model, (half,))
    return max(tolerance, FLOAT16_TOLERANCE) if uses_half else tolerance


def _holds_bfloat16(model: onnx.ModelProto) -> bool:
    bf16 = onnx.TensorProto.BFLOAT16
    graph = model.graph
    return any(init.data_type == bf16 for init in graph.initializer) or any(
        value.type.tensor_type.elem_type == bf16 for value in (*graph.input, *graph.output)) or casts_to(model, (bf16,))


def onnx_feed(spec: TensorSpec, x: torch.Tensor) -> np.ndarray:
    """``x`` as onnxruntime must receive it for input ``spec`` (its own element type: float16, int64 …)."""
    numpy_type = {"float": np.float32, "float16": np.float16, "double": np.float64}.get(spec.dtype)
    array = x.detach().cpu().numpy()
    if numpy_type is None and spec.dtype.startswith(("int", "uint")):
        numpy_type = np.dtype(spec.dtype)
    return array.astype(numpy_type or np.float32)


def torch_feed(x: np.ndarray) -> torch.Tensor:
    """An onnxruntime feed as the torch module takes it (floats in float32, integers as they are)."""
    tensor = torch.from_numpy(np.ascontiguousarray(x))
    return tensor.float() if tensor.is_floating_point() else tensor
