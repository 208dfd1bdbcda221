"""`cimguard evaluate` end to end, and every bad input as a one-line error."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.onnx_builders import custom_op_model, gemm_model, relu_model


def test_default_evaluate_prints_clean_and_monte_carlo(invoke):
    result = invoke("evaluate", "--samples", "20")
    assert result.exit_code == 0, result.output
    lines = dict(
        (line.rsplit(None, 1)[0].strip(), float(line.rsplit(None, 1)[1]))
        for line in result.output.splitlines()
        if line and line.split()[-1].replace(".", "", 1).isdigit()
    )
    assert lines["clean chip accuracy"] >= 0.95
    assert lines["float model accuracy"] >= 0.95
    assert "Monte Carlo mean (20 chips, seed 0)" in lines
    for key in ("Monte Carlo std", "Monte Carlo min", "KPP 1st percentile", "KPP 10th percentile", "KPP 50th percentile"):
        assert key in lines
    # Random variation after write-verify barely moves accuracy (the paper's observation).
    assert abs(lines["Monte Carlo mean (20 chips, seed 0)"] - lines["clean chip accuracy"]) < 0.02


def test_json_report_has_every_figure_and_is_reproducible(invoke, tmp_path):
    first, second, other = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert invoke("evaluate", "--samples", "10", "--seed", "3", "--json", first).exit_code == 0
    assert invoke("evaluate", "--samples", "10", "--seed", "3", "--json", second).exit_code == 0
    assert invoke("evaluate", "--samples", "10", "--seed", "4", "--json", other).exit_code == 0
    report = json.loads(first.read_text())
    mc = report["monte_carlo"]
    assert set(mc) >= {"samples", "seed", "mean", "std", "min", "max", "percentiles", "accuracies"}
    assert set(mc["percentiles"]) == {"1", "10", "50"}
    assert len(mc["accuracies"]) == 10 and mc["samples"] == 10
    assert mc["min"] <= mc["percentiles"]["1"] <= mc["percentiles"]["50"] <= mc["max"]
    assert report["clean_accuracy"] >= 0.95
    assert report["setup"]["device"] == "gaussian" and report["setup"]["device_params"]["thg"] == 0.03
    assert json.loads(second.read_text())["monte_carlo"] == mc
    assert json.loads(other.read_text())["monte_carlo"]["accuracies"] != mc["accuracies"]


def test_thg_and_device_param_reach_the_device(invoke, tmp_path):
    out = tmp_path / "r.json"
    result = invoke("evaluate", "--samples", "5", "--thg", "0.2", "--device-param", "sigma=0.3", "--json", out)
    assert result.exit_code == 0, result.output
    params = json.loads(out.read_text())["setup"]["device_params"]
    assert params["thg"] == 0.2 and params["sigma"] == 0.3


def _error(result) -> str:
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output  # one line, no traceback
    assert lines[0].startswith("Error: ")
    return lines[0]


def test_missing_model(invoke, tmp_path):
    assert "model file not found" in _error(invoke("evaluate", "--model", tmp_path / "nope.onnx"))


def test_non_onnx_file(invoke, tmp_path):
    path = tmp_path / "notes.onnx"
    path.write_text("this is not a protobuf\n" * 10)
    assert "is not a valid ONNX file" in _error(invoke("evaluate", "--model", path))


def test_empty_file(invoke, tmp_path):
    path = tmp_path / "empty.onnx"
    path.write_bytes(b"")
    assert "is empty, not an ONNX model" in _error(invoke("evaluate", "--model", path))


def test_corrupt_onnx_file(invoke, tmp_path, default_model_path):
    path = tmp_path / "truncated.onnx"
    path.write_bytes(default_model_path.read_bytes()[:3000])
    message = _error(invoke("evaluate", "--model", path))
    assert "truncated.onnx" in message and ("not a valid ONNX file" in message or "ONNX checker" in message or "not an ONNX model" in message)


def test_unsupported_operator(invoke, tmp_path):
    message = _error(invoke("evaluate", "--model", custom_op_model(tmp_path / "custom.onnx")))
    assert "unsupported operator com.vendor::FancyActivation" in message and "'fancy'" in message


def test_model_without_mappable_layer(invoke, tmp_path):
    message = _error(invoke("evaluate", "--model", relu_model(tmp_path / "relu.onnx")))
    assert "no crossbar-mappable layer" in message


def test_data_that_does_not_fit_the_model(invoke, tmp_path):
    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((5, 7), np.float32), y=np.zeros(5, np.int64))
    message = _error(invoke("evaluate", "--data", data))
    assert "samples have shape (7,)" in message and "expects (1, 8, 8)" in message


def test_labels_outside_the_model_classes(invoke, tmp_path):
    data = tmp_path / "labels.npz"
    np.savez(data, x=np.zeros((5, 64), np.float32), y=np.array([0, 1, 2, 3, 12]))
    assert "labels range over 0..12 but the model outputs 10 classes" in _error(invoke("evaluate", "--data", data))


def test_npz_data_is_reshaped_and_evaluated(invoke, tmp_path, digits):
    data = tmp_path / "digits.npz"
    np.savez(data, x=digits.x_eval.reshape(len(digits.x_eval), 64).numpy(), y=digits.y_eval.numpy())
    result = invoke("evaluate", "--data", data, "--samples", "3")
    assert result.exit_code == 0, result.output
    assert "clean chip accuracy" in result.output


def test_unknown_device_and_bad_parameters(invoke):
    assert "unknown device 'memristor9000'" in _error(invoke("evaluate", "--device", "memristor9000"))
    assert "sigma must be >= 0" in _error(invoke("evaluate", "--device-param", "sigma=-1"))
    assert "unknown device parameter 'colour'" in _error(invoke("evaluate", "--device-param", "colour=blue"))
    assert "expects FIELD=VALUE" in _error(invoke("evaluate", "--device-param", "sigma"))
    assert "must be a float" in _error(invoke("evaluate", "--device-param", "sigma=lots"))
    assert "bits_per_device must be between 1 and 8" in _error(invoke("evaluate", "--device-param", "bits_per_device=0"))


def test_unknown_dataset(invoke):
    assert "unknown dataset 'imagenet'" in _error(invoke("evaluate", "--data", "imagenet"))


def test_existing_json_is_never_overwritten(invoke, tmp_path):
    out = tmp_path / "mine.json"
    out.write_text("precious")
    assert "already exists" in _error(invoke("evaluate", "--samples", "2", "--json", out))
    assert out.read_text() == "precious"


def test_verify_against_onnxruntime(invoke):
    result = invoke("evaluate", "--samples", "2", "--verify")
    assert result.exit_code == 0, result.output


def test_verify_detects_a_mismatch(tmp_path, default_model_path, digits, monkeypatch):
    import torch

    from cimguard.errors import CimguardError
    from cimguard.onnx.model import load_model
    from cimguard.onnx.verify import verify_against_onnxruntime

    imported = load_model(default_model_path)
    with torch.no_grad():
        next(iter(imported.weights().values())).mul_(1.5)  # the torch copy no longer matches the file
    with pytest.raises(CimguardError, match="disagrees with onnxruntime"):
        verify_against_onnxruntime(imported, digits.x_eval[:32])


def test_gemm_model_label_free(invoke, tmp_path):
    model = gemm_model(tmp_path / "g.onnx", np.random.default_rng(0).normal(size=(3, 5)).astype(np.float32))
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(40, 5)).astype(np.float32))
    result = invoke("evaluate", "--model", model, "--data", data, "--samples", "4")
    assert result.exit_code == 0, result.output
    assert "clean chip agreement" in result.output


def test_malformed_options_are_one_line(invoke):
    result = invoke("evaluate", "--samples", "-1")
    assert result.exit_code == 2
    assert result.output.strip() == "Error: Invalid value for '--samples': -1 is not in the range 0<=x<=1000000."
    result = invoke("evaluate", "--no-such-option")
    assert result.exit_code == 2 and result.output.strip() == "Error: No such option '--no-such-option'."


def test_npz_without_samples(invoke, tmp_path):
    data = tmp_path / "empty.npz"
    np.savez(data, x=np.zeros((0, 1, 8, 8), np.float32))
    assert "array 'x' holds no samples" in _error(invoke("evaluate", "--data", data))


def test_reports_are_readable_like_any_new_file(invoke, tmp_path):
    import os
    import stat

    out = tmp_path / "r.json"
    assert invoke("evaluate", "--samples", "2", "--json", out).exit_code == 0
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary left behind


def test_output_that_is_the_input_model_is_refused(invoke, tmp_path, default_model_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(default_model_path.read_bytes())
    message = _error(invoke("evaluate", "--model", model, "--samples", "2", "--json", model))
    assert "refusing to overwrite the input file" in message
    assert model.read_bytes() == default_model_path.read_bytes()
