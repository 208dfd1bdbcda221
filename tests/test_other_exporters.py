"""Models from other exporters: tf2onnx files (Keras, JAX) end to end, non-finite constants, float16/bfloat16 casts.

``tests/data/keras_digits_tf2onnx.onnx`` was written by ``models/make_tf2onnx_fixture.py`` (TensorFlow
and tf2onnx are too heavy for CI; the script's docstring has the command).  It holds what tf2onnx
writes: NHWC convolutions wrapped in Transposes, shape arithmetic, an ``ai.onnx.ml`` opset import and
a ``-inf`` constant (the start of a running ``Max``), which is legitimate: only NaN, or a non-finite
crossbar weight, is refused.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cimguard.onnx.runtime import run_onnxruntime

KERAS = Path(__file__).parent / "data" / "keras_digits_tf2onnx.onnx"
SMALL = ("--max-samples", "60")


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and sum(line.startswith("Error: ") for line in lines) == 1, result.output
    return lines[-1]


def _onnxruntime_accuracy(path: Path, digits, count: int) -> float:
    x = digits.x_eval[:count].numpy().reshape(count, 8, 8, 1).astype(np.float32)
    predicted = run_onnxruntime(onnx.load(str(path)), x).argmax(axis=1)
    return float((predicted == digits.y_eval[:count].numpy()).mean())


def _with_initializer(tmp_path: Path, name: str, change) -> Path:
    model = onnx.load(str(KERAS))
    for index, tensor in enumerate(model.graph.initializer):
        if tensor.name == name:
            value = numpy_helper.to_array(tensor).copy()
            model.graph.initializer[index].CopyFrom(numpy_helper.from_array(change(value), name))
    path = tmp_path / "changed.onnx"
    onnx.save(model, str(path))
    return path


def test_the_fixture_holds_what_tf2onnx_writes():
    model = onnx.load(str(KERAS))
    assert model.producer_name == "tf2onnx"
    assert {(op.domain, op.version) for op in model.opset_import} == {("", 15), ("ai.onnx.ml", 2)}
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    assert any(value.dtype.kind == "f" and np.isneginf(value).any() for value in constants.values())
    assert "Max" in {node.op_type for node in model.graph.node}


def test_keras_model_end_to_end(invoke, tmp_path, digits, one_thread):
    result = invoke("evaluate", KERAS, "--samples", "3", *SMALL)
    assert result.exit_code == 0, result.output
    assert "check   conversion checked against onnxruntime" in result.output
    float_line = next(line for line in result.output.splitlines() if line.startswith("float model accuracy"))
    assert float(float_line.split()[-1]) == pytest.approx(_onnxruntime_accuracy(KERAS, digits, 60), abs=5e-5)  # printed to 4 places
    assert invoke("attack", KERAS, "--samples", "0", "--iterations", "2", *SMALL).exit_code == 0

    hardened = tmp_path / "robust.onnx"
    result = invoke("harden", KERAS, "--trainer", "noise", "--epochs", "1", *SMALL, "-o", hardened)
    assert result.exit_code == 0, result.output
    written = onnx.load(str(hardened))
    # The vendor's graph, new weights: same nodes, the -inf constant kept, and onnxruntime runs it.
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in onnx.load(str(KERAS)).graph.node]
    assert any(np.isneginf(numpy_helper.to_array(t)).any() for t in written.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)
    assert 0.5 < _onnxruntime_accuracy(hardened, digits, 60) <= 1.0
    assert invoke("evaluate", hardened, "--samples", "0", *SMALL).exit_code == 0


def test_nan_anywhere_and_non_finite_crossbar_weights_stay_refused(invoke, tmp_path):
    fill = "functional_1/scores_1/Fill/value:0"
    nan_constant = _with_initializer(tmp_path, fill, lambda v: np.full_like(v, np.nan))
    error = _one_error(invoke("evaluate", nan_constant, *SMALL))
    assert f"tensor {fill!r} holds 1 non-finite value(s) (NaN)" in error

    dense = "functional_1/dense_1/Cast/ReadVariableOp:0"

    def one_inf(value):
        value[3, 2] = np.inf
        return value

    error = _one_error(invoke("evaluate", _with_initializer(tmp_path, dense, one_inf), *SMALL))
    assert f"tensor {dense!r} (the crossbar weight of node" in error and "non-finite" in error


@pytest.mark.parametrize("elem_type", [onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("cast_inside", [True, False], ids=["cast-inside", "half-io"])
def test_half_precision_files_compute_in_float32_and_export_in_their_own_type(invoke, tmp_path, elem_type,
                                                                               cast_inside, one_thread):
    from tests.onnx_builders import half_precision_model

    model = half_precision_model(tmp_path / "half.onnx", elem_type, cast_inside=cast_inside)
    result = invoke("evaluate", model, "--samples", "2", *SMALL)
    assert result.exit_code == 0, result.output
    assert "check   conversion checked against onnxruntime" in result.output
    hardened = tmp_path / "robust.onnx"
    result = invoke("harden", model, "--trainer", "noise", "--epochs", "1", *SMALL, "-o", hardened)
    assert result.exit_code == 0, result.output
    written = onnx.load(str(hardened))
    assert {t.name: t.data_type for t in written.graph.initializer} == {"W": elem_type, "b": elem_type}
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in onnx.load(str(model)).graph.node]
    assert numpy_helper.to_array(written.graph.initializer[0]).tolist() != \
        numpy_helper.to_array(onnx.load(str(model)).graph.initializer[0]).tolist()
    assert invoke("evaluate", hardened, "--samples", "0", *SMALL).exit_code == 0


def test_nan_in_a_bfloat16_constant_is_refused(invoke, tmp_path):
    from tests.onnx_builders import half_precision_model

    path = half_precision_model(tmp_path / "bf16.onnx", onnx.TensorProto.BFLOAT16, cast_inside=False)
    model = onnx.load(str(path))
    model.graph.initializer[1].CopyFrom(
        onnx.helper.make_tensor("b", onnx.TensorProto.BFLOAT16, [10], [0.0, float("nan")] + [0.0] * 8))
    onnx.save(model, str(path))
    error = _one_error(invoke("evaluate", path, *SMALL))
    assert "tensor 'b' holds 1 non-finite value(s) (NaN); the first at index (1,)" in error


BYTES = Path(__file__).parent / "data" / "keras_bytes_tf2onnx.onnx"
BYTES_DATA = Path(__file__).parent / "data" / "bytes_tokens.npz"
# The same task exported from JAX (pure jax.numpy, jax2tf, tf2onnx): models/make_jax_fixture.py.
JAX_BYTES = Path(__file__).parent / "data" / "jax_bytes_tf2onnx.onnx"


@pytest.mark.parametrize("path", [BYTES, JAX_BYTES], ids=["keras", "jax"])
def test_the_byte_token_fixtures_hold_int32_tokens_a_global_max_pool_and_an_inf_start(path):
    model = onnx.load(str(path))
    assert model.producer_name == "tf2onnx" and model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT32
    assert {(op.domain, op.version) for op in model.opset_import} == {("", 15), ("ai.onnx.ml", 2)}
    assert {"Gather", "Conv", "GlobalMaxPool", "MatMul", "Max"} <= {node.op_type for node in model.graph.node}
    assert any(np.isneginf(numpy_helper.to_array(t)).any() for t in model.graph.initializer
               if t.data_type == onnx.TensorProto.FLOAT)


@pytest.mark.parametrize("path", [BYTES, JAX_BYTES], ids=["keras", "jax"])
def test_byte_token_classifier_end_to_end(invoke, tmp_path, one_thread, path):
    data = np.load(BYTES_DATA)
    result = invoke("evaluate", path, "--data", BYTES_DATA, "--samples", "2")
    assert result.exit_code == 0, result.output
    assert "check   conversion checked against onnxruntime" in result.output
    float_line = next(line for line in result.output.splitlines() if line.startswith("float model accuracy"))
    predicted = run_onnxruntime(onnx.load(str(path)), data["x"]).argmax(axis=1)
    assert float(float_line.split()[-1]) == pytest.approx(float((predicted == data["y"]).mean()), abs=5e-5)
    assert invoke("attack", path, "--data", BYTES_DATA, "--samples", "0", "--iterations", "2").exit_code == 0
    hardened = tmp_path / "robust.onnx"
    result = invoke("harden", path, "--data", BYTES_DATA, "--trainer", "noise", "--epochs", "1", "-o", hardened)
    assert result.exit_code == 0, result.output
    # The exporter's graph with new weights: same nodes, and onnxruntime still reads int32 tokens.
    written = onnx.load(str(hardened))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in onnx.load(str(path)).graph.node]
    assert 0.5 < float((run_onnxruntime(written, data["x"]).argmax(axis=1) == data["y"]).mean()) <= 1.0
    assert invoke("evaluate", hardened, "--data", BYTES_DATA, "--samples", "0").exit_code == 0
