"""Each operator that used to convert without complaint and compute other numbers, wrapped in a
small classifier: ``cimguard evaluate`` now gives onnxruntime's accuracy (1.00 against
onnxruntime's own labels) or refuses in one line; it never prints another number."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

SAMPLES = 60


def _ort(model: onnx.ModelProto, x: np.ndarray) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})


def _classifier(nodes, initializers, x: np.ndarray, batch: int | str = "N") -> onnx.ModelProto:
    """``x [batch,1,8,8]`` -> the nodes (ending in ``feat``) -> Flatten -> Gemm -> 10 class scores."""

    def build(extra_nodes, extra_inits, output, shape):
        graph = helper.make_graph(
            [*nodes, *extra_nodes], "silent",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 1, 8, 8])],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, shape)],
            [*initializers, *extra_inits])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 8
        return model

    probe = build([], [], "feat", None)
    del probe.graph.output[0].type.tensor_type.shape.dim[:]
    probe.graph.output[0].type.tensor_type.ClearField("shape")
    features = int(np.prod(_ort(probe, x)[0].shape[1:]))
    weight = np.random.default_rng(0).standard_normal((10, features)).astype(np.float32)
    head = [helper.make_node("Flatten", ["feat"], ["flat"]),
            helper.make_node("Gemm", ["flat", "W"], ["logits"], transB=1)]
    return build(head, [numpy_helper.from_array(weight, "W")], "logits", [batch, 10])


def _const(name: str, values, dtype=np.float32) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def _resize(mode: str, coordinates: str, nearest: str = "round_prefer_floor", scale: float = 1.5, **extra):
    node = helper.make_node("Resize", ["x", "", "scales"], ["feat"], mode=mode,
                            coordinate_transformation_mode=coordinates, nearest_mode=nearest, **extra)
    return [node], [_const("scales", [1, 1, scale, scale])]


CASES = {
    "layer_norm_mean_output": (
        [helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=-1),
         helper.make_node("Add", ["y", "mean"], ["ym"]), helper.make_node("Mul", ["ym", "inv"], ["feat"])],
        [_const("s", np.linspace(0.5, 1.5, 8)), _const("b", np.linspace(-1, 1, 8))]),
    "resize_nearest_ceil": _resize("nearest", "half_pixel", "ceil"),
    "resize_nearest_round_prefer_ceil": _resize("nearest", "half_pixel", "round_prefer_ceil"),
    "resize_nearest_asymmetric": _resize("nearest", "asymmetric"),
    "resize_nearest_align_corners": _resize("nearest", "align_corners"),
    "resize_cubic_exclude_outside": _resize("cubic", "half_pixel", scale=0.75, exclude_outside=1),
    "split_num_outputs_uneven": (
        [helper.make_node("Split", ["x"], ["a", "b", "c"], axis=3, num_outputs=3),
         helper.make_node("Concat", ["c", "a", "b"], ["feat"], axis=3)], []),
    "isinf_detect_negative_only": (
        [helper.make_node("Reciprocal", ["x"], ["r"]),
         helper.make_node("IsInf", ["r"], ["inf"], detect_positive=0),
         helper.make_node("Cast", ["inf"], ["f"], to=TensorProto.FLOAT), helper.make_node("Add", ["f", "x"], ["feat"])],
        []),
    "conv_transpose_output_shape": (
        [helper.make_node("ConvTranspose", ["x", "w"], ["feat"], strides=[2, 2], output_shape=[18, 18])],
        [_const("w", np.random.default_rng(1).standard_normal((1, 2, 3, 3)))]),
    "top_k_ties": (
        [helper.make_node("Flatten", ["x"], ["fx"]), helper.make_node("TopK", ["fx", "k"], ["v", "i"]),
         helper.make_node("Cast", ["i"], ["feat"], to=TensorProto.FLOAT)],
        [_const("k", [6], np.int64)]),
    "batch_norm_training_mode": (
        [helper.make_node("BatchNormalization", ["x", "s1", "b1", "m1", "v1"], ["feat", "rm", "rv"], training_mode=1)],
        [_const("s1", [1.5]), _const("b1", [0.1]), _const("m1", [0.0]), _const("v1", [1.0])]),
}

#: Cases cimguard refuses in one line.  A training-mode BatchNormalization normalises with the
#: statistics of the batch, so the file fixes the batch onnxruntime labelled; cimguard cannot show
#: that its samples are independent, and refuses to run it on other batch sizes.
REFUSED = frozenset({"batch_norm_training_mode"})


@pytest.mark.parametrize("name", sorted(CASES))
def test_evaluate_matches_onnxruntime_or_refuses(name, digits, invoke, tmp_path):
    nodes, initializers = CASES[name]
    x = digits.x_eval[:SAMPLES].numpy()
    # Batch-statistics normalisation depends on the batch: the file fixes the one onnxruntime labels.
    batch = SAMPLES if name == "batch_norm_training_mode" else "N"
    model = _classifier(nodes, initializers, x, batch)
    onnx.checker.check_model(model)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    labels = _ort(model, x)[0].argmax(1)
    data = tmp_path / "data.npz"
    np.savez(data, x=x, y=labels)
    report = tmp_path / "report.json"
    result = invoke("evaluate", "--model", path, "--data", data, "--samples", "1", "--torch-device", "cpu",
                    "--json", report)
    if result.exit_code != 0:
        assert name in REFUSED, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
        assert "Traceback" not in result.output
        return
    assert json.loads(report.read_text())["float_accuracy"] == 1.0, result.output
