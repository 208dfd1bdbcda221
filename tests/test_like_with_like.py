"""Checks against onnxruntime compare like with like: weights computed on CUDA (TF32) still export.

CI has no GPU, so TF32 is emulated: with TF32 allowed, CUDA rounds the operands of convolutions
and matmuls to TF32's 10 mantissa bits.  The torch side of the check must compute as onnxruntime
does (float32 on the CPU, TF32 off), or a hardened model is refused for rounding alone.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from cimguard.onnx.batch import output_mismatch
from cimguard.onnx.export import export_onnx
from cimguard.onnx.model import load_model
from cimguard.onnx.runtime import onnxruntime_mismatch, random_inputs, run_onnxruntime_all

TOLERANCE = 1e-4  # the tolerance of export and --verify


def tf32_round(tensor: torch.Tensor) -> torch.Tensor:
    """Round float32 values to TF32 (10 explicit mantissa bits, round to nearest)."""
    mantissa, exponent = torch.frexp(tensor)
    return torch.ldexp(torch.round(mantissa * 2**11) / 2**11, exponent)


class TF32Emulation(TorchFunctionMode):
    """Convolutions and matmuls as CUDA computes them while TF32 is allowed (torch's flags)."""

    CONVOLUTIONS = {"conv1d", "conv2d", "conv3d"}
    MATMULS = {"linear", "matmul", "mm", "addmm", "bmm"}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        tf32 = (name in self.CONVOLUTIONS and torch.backends.cudnn.allow_tf32) or (
            name in self.MATMULS and torch.backends.cuda.matmul.allow_tf32)
        if tf32:
            args = tuple(tf32_round(a) if isinstance(a, torch.Tensor) and a.is_floating_point() else a for a in args)
        return func(*args, **(kwargs or {}))


@pytest.fixture()
def tf32_allowed():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    with TF32Emulation():
        yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _old_check(model, module, feeds, weights) -> float:
    """The check before the fix: the module as it runs on its device, against onnxruntime."""
    with torch.no_grad():
        ours = torch.func.functional_call(module, weights, (torch.from_numpy(next(iter(feeds.values()))),), strict=False)
    return output_mismatch(run_onnxruntime_all(model, feeds)[0], ours.numpy())


def test_tf32_rounding_failed_the_old_check_and_passes_the_new_one(default_model_path, tf32_allowed, tmp_path):
    imported = load_model(default_model_path)
    generator = torch.Generator().manual_seed(0)
    # hardened weights as training on CUDA leaves them: any float32 values
    weights = {name: (w + 0.01 * w.abs().max() * torch.randn(w.shape, generator=generator))
               for name, w in imported.weights().items()}
    feeds = {imported.input.name: torch.rand((64, *imported.input.shape[1:]), generator=generator).numpy()}
    from cimguard.onnx.export import with_weights

    exported_model = with_weights(imported, weights)
    assert _old_check(exported_model, imported.module, feeds, weights) > TOLERANCE  # refused for rounding alone
    assert onnxruntime_mismatch(exported_model, imported.module, feeds, weights) <= TOLERANCE
    path = export_onnx(imported, weights, tmp_path / "hardened.onnx", check_inputs=torch.from_numpy(feeds[imported.input.name]))
    assert path.is_file()
    # the flags are back as the user set them
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32


def test_the_check_still_catches_a_real_mismatch(default_model_path):
    imported = load_model(default_model_path)
    weights = {name: w * 1.01 for name, w in imported.weights().items()}
    feeds = random_inputs(imported.inputs)
    error = onnxruntime_mismatch(imported.onnx_model, imported.module, feeds, weights)
    assert error > TOLERANCE and np.isfinite(error)
