"""Every setup checks the torch conversion against onnxruntime before any number; a mismatch names the node.

The check is on by default (CLI, ``cimguard.setup``/``build_setup``, ``compare_sweeps``), runs on the
probe samples, and ``--no-verify`` / ``verify=False`` skip it, which the header and the report say.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import cimguard.api
from cimguard.api import build_setup, load
from cimguard.errors import CimguardError
from cimguard.onnx.model import load_model
from cimguard.onnx.runtime import OnnxRuntimeCannotRun, onnx_feed
from cimguard.onnx.verify import first_differing_node

SMALL = ("--samples", "2", "--max-samples", "40")
#: The embedded LeNet's first ReLU, as onnx2torch names its module and as the ONNX file names the node.
RELU_MODULE, RELU_NODE = "features/features/1/Relu", "/features/features.1/Relu"


def _tampered(path=None):
    """The embedded LeNet with one converted node computing the wrong function (a converter bug)."""
    imported = load_model(path) if path is not None else load()
    imported.module.add_module(RELU_MODULE, torch.nn.Tanh())
    return imported


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1 and result.output.strip().splitlines()[-1] == lines[0], result.output
    return lines[0]


def test_a_wrong_conversion_is_refused_naming_the_first_node_that_differs():
    with pytest.raises(CimguardError) as caught:
        build_setup(_tampered(), "digits", torch_device="cpu")
    message = str(caught.value)
    assert "\n" not in message
    assert "disagrees with onnxruntime on the first 8 samples" in message
    assert f"node {RELU_NODE!r} (Relu) is the first whose output" in message
    assert "--no-verify" in message


def test_verify_false_runs_it_and_says_so():
    setup = build_setup(_tampered(), "digits", torch_device="cpu", verify=False, max_samples=40)
    assert setup.conversion_check is None
    assert setup.conversion_record == {"verified": False, "samples": None, "relative_error": None, "tolerance": None}
    assert "NOT checked" in setup.conversion_label


def test_a_correct_conversion_is_checked_on_the_probe_samples(setup):
    check = setup.conversion_check
    assert check is not None and check.exact and check.relative_error < 1e-5
    assert setup.conversion_record["verified"] is True and setup.conversion_record["samples"] == 8


def test_first_differing_node_is_none_when_nothing_differs():
    imported = load()
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    feeds = {imported.input.name: onnx_feed(imported.input, x)}
    assert first_differing_node(imported.legalised, imported.module, feeds, 1e-4) is None
    tampered = _tampered()
    found = first_differing_node(tampered.legalised, tampered.module, feeds, 1e-4)
    assert (found.node, found.op_type) == (RELU_NODE, "Relu") and found.error > 1e-3


def test_cli_refuses_a_wrong_conversion_and_no_verify_is_in_header_and_report(invoke, monkeypatch, tmp_path):
    monkeypatch.setattr(cimguard.api, "load_model", lambda path: _tampered(path))
    for command in (["evaluate", *SMALL], ["attack", "--samples", "0", "--iterations", "1", "--max-samples", "40"],
                    ["harden", "--trainer", "noise", "--epochs", "1", "--max-samples", "40", "-o", tmp_path / "h.onnx"]):
        error = _one_error(invoke(*command))
        assert f"node {RELU_NODE!r} (Relu) is the first whose output" in error, command
    assert not (tmp_path / "h.onnx").exists()
    out = tmp_path / "e.json"
    result = invoke("evaluate", *SMALL, "--no-verify", "--json", out)
    assert result.exit_code == 0, result.output
    assert "check   conversion NOT checked against onnxruntime (--no-verify)" in result.output
    assert json.loads(out.read_text())["provenance"]["conversion_check"]["verified"] is False


def test_cli_header_and_report_show_the_check(invoke, tmp_path):
    out = tmp_path / "e.json"
    result = invoke("evaluate", *SMALL, "--json", out)
    assert result.exit_code == 0, result.output
    assert "check   conversion checked against onnxruntime on 8 samples: max error" in result.output
    check = json.loads(out.read_text())["provenance"]["conversion_check"]
    assert check["verified"] is True and check["samples"] == 8 and 0 <= check["relative_error"] <= check["tolerance"]


def test_when_onnxruntime_cannot_run_the_file_the_run_is_refused(invoke, monkeypatch):
    def cannot(model):
        raise OnnxRuntimeCannotRun("onnxruntime cannot run the model: no kernel for FancyOp")

    monkeypatch.setattr("cimguard.onnx.runtime._ort_session", cannot)
    error = _one_error(invoke("evaluate", *SMALL))
    assert "no kernel for FancyOp, so the conversion cannot be checked" in error and "--no-verify" in error
    assert invoke("evaluate", *SMALL, "--no-verify").exit_code == 0


def _resize_classifier(path, mode: str, nearest_mode: str) -> None:
    """A digits classifier with a Resize inside (modes whose conversion was once silently wrong)."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(np.array([-1, 1, 8, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array([1, 1, 1.5, 1.5], np.float32), "scales"),
             numpy_helper.from_array(rng.normal(0, 0.1, (10, 144)).astype(np.float32), "W")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["image"]),
             helper.make_node("Resize", ["image", "", "scales"], ["big"], name="resize", mode=mode,
                              nearest_mode=nearest_mode, coordinate_transformation_mode="asymmetric"),
             helper.make_node("Flatten", ["big"], ["flat"]),
             helper.make_node("Gemm", ["flat", "W"], ["scores"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())


@pytest.mark.parametrize("nearest_mode", ["ceil", "round_prefer_ceil", "floor"])
def test_a_formerly_silent_operator_either_matches_onnxruntime_or_is_refused(invoke, tmp_path, nearest_mode):
    path = tmp_path / f"resize_{nearest_mode}.onnx"
    _resize_classifier(path, "nearest", nearest_mode)
    result = invoke("evaluate", path, *SMALL)
    if result.exit_code == 0:
        assert "check   conversion checked against onnxruntime" in result.output
    else:
        error = _one_error(result)
        assert "'resize' (Resize) is the first whose output" in error or "unsupported" in error, error
