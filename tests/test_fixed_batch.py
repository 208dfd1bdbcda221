"""Files that fix a batch size other than 1: made symbolic when checked safe, refused otherwise."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cimguard.errors import CimguardError
from cimguard.onnx.model import load_model
from cimguard.onnx.runtime import onnxruntime_mismatch


def _model(path, batch: int, merge_batch: bool):
    """``x[batch, 64] -> Reshape -> Gemm(10)``; ``merge_batch`` folds the batch into the features."""
    rng = np.random.default_rng(0)
    features = 64 * batch if merge_batch else 64
    target = [1, features] if merge_batch else [batch, 64]
    inits = [numpy_helper.from_array(np.array(target, np.int64), "shape"),
             numpy_helper.from_array(rng.standard_normal((10, features)).astype(np.float32), "W")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"], name="reshape"),
             helper.make_node("Gemm", ["flat", "W"], ["y"], name="fc", transB=1)]
    rows = 1 if merge_batch else batch
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


def test_a_fixed_batch_of_four_becomes_symbolic(tmp_path):
    imported = load_model(_model(tmp_path / "b4.onnx", 4, merge_batch=False))
    assert imported.batch_mode == "symbolic" and imported.input.shape == (None, 64)
    x = torch.randn(7, 64, generator=torch.Generator().manual_seed(0))  # not a multiple of 4
    with torch.no_grad():
        assert imported.module(x).shape == (7, 10)
    # onnxruntime runs the file on chunks of 4 (the last one padded): the check still compares all 7
    assert onnxruntime_mismatch(imported.onnx_model, imported.module, {"x": x.numpy()}) <= 1e-5


def test_a_fixed_batch_folded_into_features_runs_only_at_its_own_size(tmp_path):
    imported = load_model(_model(tmp_path / "b3.onnx", 3, merge_batch=True))
    assert imported.batch_mode == "fixed" and imported.input.shape == (3, 64)
    x = torch.randn(3, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert imported.module(x).shape == (1, 10)  # the file's own behaviour is kept
        with pytest.raises(CimguardError, match="fixes the batch size to 3 .* cannot run 4 samples; re-export"):
            imported.module(torch.randn(4, 64))
