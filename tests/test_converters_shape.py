"""Shape, cast, activation and reduction families (``cimguard.onnx.converters.shape``,
``activations``, ``reduce``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().standard_normal((2, 3, 7)).astype(np.float32) * 3


@pytest.mark.parametrize("count", [2, 3, 4])
def test_split_num_outputs_uneven_last_part(count):
    outputs = [f"y{i}" for i in range(count)]
    ours = assert_matches_onnxruntime(helper.make_node("Split", ["x"], outputs, axis=2, num_outputs=count), {"x": X},
                                      opset=18)
    assert [o.shape[2] for o in ours][-1] < ours[0].shape[2]


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad_modes_with_axes_and_negative_pads(mode):
    node = helper.make_node("Pad", ["x", "pads", "value", "axes"], ["y"], mode=mode)
    constants = {"pads": np.array([2, -1, 1, 1], np.int64), "value": np.array(1.5, np.float32),
                 "axes": np.array([2, 1], np.int64)}
    assert_matches_onnxruntime(node, {"x": X}, constants, opset=19)


def test_clip_with_omitted_bounds_and_bounds_at_run_time():
    assert_matches_onnxruntime(helper.make_node("Clip", ["x", "", "high"], ["y"]), {"x": X},
                               {"high": np.array(0.5, np.float32)}, opset=13)
    assert_matches_onnxruntime(helper.make_node("Clip", ["x", "low"], ["y"]),
                               {"x": X, "low": np.array(-0.5, np.float32)}, opset=13)


@pytest.mark.parametrize("to", [TensorProto.INT32, TensorProto.INT8, TensorProto.FLOAT16, TensorProto.BOOL])
def test_cast_and_cast_like(to):
    assert_matches_onnxruntime(helper.make_node("Cast", ["x"], ["y"], to=to), {"x": X}, opset=21)
    like = np.zeros(1, helper.tensor_dtype_to_np_dtype(to))
    assert_matches_onnxruntime(helper.make_node("CastLike", ["x", "like"], ["y"]), {"x": X}, {"like": like}, opset=21)


@pytest.mark.parametrize("op", ["Trilu", "DepthToSpace", "SpaceToDepth", "Flatten"])
def test_layout_operators(op):
    x = rng(1).standard_normal((1, 8, 4, 6)).astype(np.float32)
    node, constants = {
        "Trilu": (helper.make_node("Trilu", ["x", "k"], ["y"], upper=0), {"k": np.array(-1, np.int64)}),
        "DepthToSpace": (helper.make_node("DepthToSpace", ["x"], ["y"], blocksize=2, mode="DCR"), {}),
        "SpaceToDepth": (helper.make_node("SpaceToDepth", ["x"], ["y"], blocksize=2), {}),
        "Flatten": (helper.make_node("Flatten", ["x"], ["y"], axis=-4), {}),
    }[op]
    assert_matches_onnxruntime(node, {"x": x}, constants, opset=14)


@pytest.mark.parametrize("op", ["Mish", "Selu", "Shrink", "ThresholdedRelu", "Sinh", "Cosh", "Asinh", "Atanh",
                                "Hardmax", "HardSigmoid", "Celu"])
def test_activations_with_attributes(op):
    attrs = {"Selu": dict(alpha=2.0, gamma=0.5), "Shrink": dict(lambd=1.0, bias=0.5), "ThresholdedRelu": dict(alpha=0.7),
             "Hardmax": dict(axis=1), "HardSigmoid": dict(alpha=0.3, beta=0.4), "Celu": dict(alpha=1.5)}.get(op, {})
    x = np.clip(X / 4, -0.95, 0.95) if op == "Atanh" else X
    assert_matches_onnxruntime(helper.make_node(op, ["x"], ["y"], **attrs), {"x": x}, opset=22)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceSum", "ReduceL2", "ReduceLogSumExp", "ReduceProd", "ReduceMean"])
@pytest.mark.parametrize("axes", [None, [-1, 0], []])
def test_reductions_with_axes_as_inputs(op, axes):
    inputs = ["x"] if axes is None else ["x", "axes"]
    constants = {} if axes is None else {"axes": np.array(axes, np.int64)}
    node = helper.make_node(op, inputs, ["y"], keepdims=0, noop_with_empty_axes=int(axes == []))
    assert_matches_onnxruntime(node, {"x": X / 3}, constants, opset=18)


def test_bitwise_and_bit_shift():
    a = rng(2).integers(0, 200, (4, 5)).astype(np.uint8)
    b = rng(3).integers(0, 4, (4, 5)).astype(np.uint8)
    assert_matches_onnxruntime(helper.make_node("BitwiseXor", ["a", "b"], ["y"]), {"a": a, "b": b}, opset=18)
    assert_matches_onnxruntime(helper.make_node("BitShift", ["a", "b"], ["y"], direction="LEFT"), {"a": a, "b": b},
                               opset=11)
