"""``cimguard inspect``: text and JSON reports, failures, bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from tests.onnx_builders import custom_op_model, gemm_model, relu_model

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_text_report_of_a_vendor_file(invoke, tmp_path):
    path = tmp_path / "squeezenet.onnx"
    path.write_bytes((LIGHT / "light_squeezenet.onnx").read_bytes())
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "IR 3, opset ai.onnx 9, producer onnx-caffe2" in out
    assert "input       data_0: float [1, 3, 224, 224]" in out
    assert "ConstantOfShape 39, Conv 26, Relu 26" in out
    assert "crossbars   26 layers, 1231552 weights" in out
    assert "ConstantOfShape node" in out and "(export writes a Constant)" in out
    assert "replaced 1 Dropout node(s) by Identity" in out
    assert "conversion  exact: max relative error" in out


def test_json_report(invoke, tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 12
    path = gemm_model(tmp_path / "gemm.onnx", weight, trans_b=0, alpha=2.0)
    result = invoke("inspect", path, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["ir_version"] == onnx.load(str(path)).ir_version
    assert report["opsets"] == {"ai.onnx": 13}
    assert report["operators"] == {"Gemm": 1}
    assert report["inputs"] == [{"name": "x", "shape": [None, 3], "dtype": "float"}]
    assert report["parameters"] == 12 + 4
    (layer,) = report["crossbar_layers"]
    assert layer["op_type"] == "Gemm" and layer["weights"] == 12 and layer["shape"] == [4, 3]
    assert layer["stored_as"] == "initializer"
    assert report["converts"] is True
    check = report["check"]
    assert check["exact"] is True and check["relative_error"] <= 1e-6
    assert check["input_shapes"] == {"x": [1, 3]}


def test_model_without_crossbar_layers_is_reported(invoke, tmp_path):
    result = invoke("inspect", relu_model(tmp_path / "relu.onnx"))
    assert result.exit_code == 0, result.output
    assert "crossbars   0 layers, 0 weights" in result.output


def test_unsupported_operator_prints_report_then_fails(invoke, tmp_path):
    result = invoke("inspect", custom_op_model(tmp_path / "custom.onnx"))
    assert "com.vendor::FancyActivation 1" in result.output
    assert "conversion  FAILED" in result.output
    assert "unsupported operator com.vendor::FancyActivation" in _error(result)


def test_not_exact_fails(invoke, tmp_path, monkeypatch):
    import cimguard.onnx.inspect as onnx_inspect

    monkeypatch.setattr(onnx_inspect, "EXACT_TOLERANCE", -1.0)
    result = invoke("inspect", relu_model(tmp_path / "relu.onnx"))
    assert "NOT exact" in result.output
    assert "is not exact" in _error(result)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "model file not found"),
        (b"", "is empty, not an ONNX model"),
        (b"\x08\x07garbage\xff", "is not a valid ONNX file"),
        (b"\x08\x07", "is not an ONNX model (no graph or no IR version)"),
    ],
)
def test_bad_files(invoke, tmp_path, content, message):
    path = tmp_path / "model.onnx"
    if content is not None:
        path.write_bytes(content)
    assert message in _error(invoke("inspect", path))


def _all_dynamic(path, default_model_path):
    """The embedded LeNet with every input and output axis symbolic ([N, C, H, W])."""
    model = onnx.load(str(default_model_path))
    for value in (*model.graph.input, *model.graph.output):
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            dim.dim_param = f"d{axis}"
    onnx.save(model, str(path))
    return path


def test_all_dynamic_input_is_reported_with_the_check_skipped_not_refused(invoke, tmp_path, default_model_path):
    path = _all_dynamic(tmp_path / "dynamic.onnx", default_model_path)
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    assert "input       image: float [?, ?, ?, ?]" in result.output
    assert "conversion  not checked: input 'image' has dynamic axes [0, 1, 2, 3]" in result.output
    assert "the conversion check needs a sample size: give --data" in result.output
    record = json.loads(invoke("inspect", path, "--json").output)
    assert record["check"] is None and "needs a sample size" in record["check_note"]
    from cimguard.schema import validate_report

    assert validate_report(record) == "inspect"


def test_all_dynamic_input_is_checked_on_data_samples(invoke, tmp_path, default_model_path):
    path = _all_dynamic(tmp_path / "dynamic.onnx", default_model_path)
    result = invoke("inspect", path, "--data", "digits")
    assert result.exit_code == 0, result.output
    assert "conversion  exact: max relative error" in result.output and "on the given samples image [8, 1, 8, 8]" \
        in result.output
    assert invoke("evaluate", path, "--samples", "0", "--max-samples", "40").exit_code == 0


def test_data_for_a_model_with_two_inputs_is_one_line(invoke, tmp_path):
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "two",
                              [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 64]) for name in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])])
    path = tmp_path / "two.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    result = invoke("inspect", path, "--data", "digits")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path} has 2 inputs; --data feeds single-input models"
