"""Legalisation for other exporters' constructs: model-local functions are inlined (``onnx.inliner``)
and an ``If`` whose condition is a constant becomes the branch it takes."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.usefixtures("one_thread")


def _with_local_function() -> onnx.ModelProto:
    """x -> local::Block(x, W1, b1) = Relu(Conv(x, W1, b1)) -> Flatten -> Gemm(W2) -> 10 scores."""
    block = helper.make_function(
        "local", "Block", ["x", "w", "b"], ["y"],
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
        opset_imports=[helper.make_opsetid("", 18)])
    generator = np.random.default_rng(0)
    initializers = [
        numpy_helper.from_array(generator.standard_normal((4, 1, 3, 3)).astype(np.float32), "W1"),
        numpy_helper.from_array(np.zeros(4, np.float32), "b1"),
        numpy_helper.from_array(generator.standard_normal((10, 256)).astype(np.float32) * 0.1, "W2"),
    ]
    graph = helper.make_graph(
        [helper.make_node("Block", ["x", "W1", "b1"], ["h"], domain="local"),
         helper.make_node("Flatten", ["h"], ["f"]), helper.make_node("Gemm", ["f", "W2"], ["logits"], transB=1)],
        "local_functions",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])], initializers)
    model = helper.make_model(graph, functions=[block],
                              opset_imports=[helper.make_opsetid("", 18), helper.make_opsetid("local", 1)])
    onnx.checker.check_model(model)
    return model


def _ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def test_local_functions_are_inlined_and_run_end_to_end(digits, invoke, tmp_path):
    model = _with_local_function()
    path = tmp_path / "functions.onnx"
    path.write_bytes(model.SerializeToString())
    x = digits.x_eval[:60].numpy()
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=_ort(model, x).argmax(1), x_train=digits.x_train[:200].numpy(),
             y_train=digits.y_train[:200].numpy())
    result = invoke("inspect", path)
    assert result.exit_code == 0, result.output
    assert "inlined 1 model-local function(s)" in result.output
    report = tmp_path / "evaluate.json"
    result = invoke("evaluate", "--model", path, "--data", data, "--samples", "1", "--torch-device", "cpu",
                    "--json", report)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["float_accuracy"] == 1.0
    hardened = tmp_path / "hardened.onnx"
    result = invoke("harden", path, "--data", data, "--trainer", "vanilla", "--epochs", "1", "--batch-size", "64",
                    "-o", hardened, "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    written = onnx.load(str(hardened))
    assert [f.name for f in written.functions] == ["Block"], "export writes the vendor's graph, functions included"
    new_w1 = numpy_helper.to_array(next(i for i in written.graph.initializer if i.name == "W1"))
    assert not np.array_equal(new_w1, numpy_helper.to_array(model.graph.initializer[0]))
    assert _ort(written, x).shape == (60, 10)


@pytest.mark.parametrize("condition", [True, False])
def test_if_with_a_constant_condition_becomes_its_branch(condition):
    from cimguard.onnx.legalise import legalise_model
    from cimguard.onnx.model import convert_model

    def branch(name: str, factor: float) -> onnx.GraphProto:
        return helper.make_graph(
            [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(factor, np.float32))),
             helper.make_node("Mul", ["x", "k"], [f"out_{name}"])],
            name, [], [helper.make_tensor_value_info(f"out_{name}", TensorProto.FLOAT, [2, 3])])

    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(condition))),
         helper.make_node("If", ["cond"], ["y"], then_branch=branch("then", 2.0), else_branch=branch("else", -3.0))],
        "if", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    state = legalise_model(model)
    assert "If" not in {node.op_type for node in state.model.graph.node}
    assert any("If node(s) with a constant condition" in note for note in state.notes)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    import torch

    out = convert_model(model)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(out, x * (2.0 if condition else -3.0))


def test_an_if_on_a_run_time_condition_is_refused_in_one_line():
    from cimguard.errors import CimguardError
    from cimguard.onnx.model import convert_model

    empty = helper.make_graph([helper.make_node("Identity", ["x"], ["o"])], "b", [],
                              [helper.make_tensor_value_info("o", TensorProto.FLOAT, [2])])
    graph = helper.make_graph(
        [helper.make_node("If", ["c"], ["y"], then_branch=empty, else_branch=empty)], "if",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, []), helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    with pytest.raises(CimguardError, match=r"unsupported operator If \(opset 18\)"):
        convert_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]))
