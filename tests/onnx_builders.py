"""Tiny hand-built ONNX models for tests (known weights, edge cases)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def gemm_model(path: Path, weight: np.ndarray, *, trans_b: int = 1, alpha: float = 1.0, bias: bool = True) -> Path:
    """``y = alpha * x @ op(W) + b`` with ``op`` = transpose when ``trans_b``."""
    out_features = weight.shape[0] if trans_b else weight.shape[1]
    in_features = weight.shape[1] if trans_b else weight.shape[0]
    inits = [numpy_helper.from_array(weight.astype(np.float32), "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(np.linspace(-0.1, 0.1, out_features).astype(np.float32), "b"))
        inputs.append("b")
    node = helper.make_node("Gemm", inputs, ["y"], name="fc", transB=trans_b, alpha=alpha)
    graph = helper.make_graph(
        [node],
        "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", out_features])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def relu_model(path: Path) -> Path:
    """A valid model with no crossbar-mappable layer."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "relu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def custom_op_model(path: Path) -> Path:
    """A model using an operator of a custom domain no converter knows."""
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"),
            helper.make_node("FancyActivation", ["h"], ["y"], name="fancy", domain="com.vendor"),
        ],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])],
        [weight],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.vendor", 1)]
    )
    path.write_bytes(model.SerializeToString())  # the checker rejects unknown domains; vendors ship them anyway
    return path


def two_output_model(path: Path, first: str) -> Path:
    """A digits classifier (64 features, 10 classes) whose class scores ``scores`` are its *second* output.

    ``first`` picks the first output: ``label`` (ArgMax, int64 ``[batch]``) or ``onehot`` (the
    predicted class as float ``[batch, 10]``: shaped like scores, but no weight's gradient reaches it).
    """
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (10, 64)).astype(np.float32), "W"),
             numpy_helper.from_array(np.zeros(10, np.float32), "b")]
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["scores"], name="fc", transB=1),
             helper.make_node("ArgMax", ["scores"], ["label"], name="argmax", axis=1, keepdims=0)]
    if first == "label":
        first_output = helper.make_tensor_value_info("label", TensorProto.INT64, ["batch"])
    else:
        nodes += [helper.make_node("ReduceMax", ["scores"], ["top"], name="top", axes=[1], keepdims=1),
                  helper.make_node("Equal", ["scores", "top"], ["is_top"], name="is_top"),
                  helper.make_node("Cast", ["is_top"], ["onehot"], name="onehot", to=TensorProto.FLOAT)]
        first_output = helper.make_tensor_value_info("onehot", TensorProto.FLOAT, ["batch", 10])
    graph = helper.make_graph(
        nodes, "two_outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [first_output, helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
        inits,
    )
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def half_precision_model(path: Path, elem_type: int, *, cast_inside: bool) -> Path:
    """A digits classifier (64 features, 10 classes) whose weights are float16 or bfloat16.

    ``cast_inside``: float32 input and output, the graph casts to the half type inside (a mixed-precision
    export); else the input and output are of the half type too.
    """
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(0, 0.3, (10, 64)).astype(np.float32), np.linspace(-0.1, 0.1, 10).astype(np.float32)
    inits = [helper.make_tensor(name, elem_type, value.shape, value.ravel().tolist())
             for name, value in (("W", weight), ("b", bias))]
    if cast_inside:
        nodes = [helper.make_node("Cast", ["x"], ["x_half"], name="to_half", to=elem_type),
                 helper.make_node("Gemm", ["x_half", "W", "b"], ["y_half"], name="fc", transB=1),
                 helper.make_node("Cast", ["y_half"], ["y"], name="to_float", to=TensorProto.FLOAT)]
        io_type = TensorProto.FLOAT
    else:
        nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)]
        io_type = elem_type
    graph = helper.make_graph(nodes, "half", [helper.make_tensor_value_info("x", io_type, ["batch", 64])],
                              [helper.make_tensor_value_info("y", io_type, ["batch", 10])], inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)


def split_outputs_model(path: Path) -> Path:
    """Digits scores (64 features, 10 classes) and their two halves from one ``Split``: three graph outputs,
    two of them from one node (onnx2torch returns those two as one tuple)."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (10, 64)).astype(np.float32), "W"),
             numpy_helper.from_array(np.array([5, 5], np.int64), "sizes")]
    nodes = [helper.make_node("Gemm", ["x", "W"], ["scores"], name="fc", transB=1),
             helper.make_node("Split", ["scores", "sizes"], ["low", "high"], name="split", axis=1)]
    outputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", size])
               for name, size in (("scores", 10), ("low", 5), ("high", 5))]
    graph = helper.make_graph(nodes, "split_outputs", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
                              outputs, inits)
    return _save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)
