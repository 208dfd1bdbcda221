"""Normalisation family (``cimguard.onnx.converters.normalization``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().standard_normal((2, 4, 3, 5)).astype(np.float32) * 3 + 1


@pytest.mark.parametrize("axis", [1, -2, -1])
def test_layer_normalization_all_three_outputs(axis):
    shape = X.shape[axis:]
    node = helper.make_node("LayerNormalization", ["x", "s", "b"], ["y", "mean", "inv"], axis=axis, epsilon=1e-3)
    ours = assert_matches_onnxruntime(node, {"x": X}, {"s": rng(1).standard_normal(shape).astype(np.float32),
                                                       "b": rng(2).standard_normal(shape).astype(np.float32)}, opset=17)
    assert len(ours) == 3


def test_layer_normalization_mean_as_the_only_graph_output():
    from tests.converter_check import converted_outputs, one_node_model, onnxruntime_outputs

    node = helper.make_node("LayerNormalization", ["x", "s"], ["y", "mean"], axis=-1)
    model = one_node_model(node, {"x": X}, {"s": np.ones(5, np.float32)}, outputs=["mean"], opset=17)
    ours = converted_outputs(model, {"x": X})
    assert len(ours) == 1
    np.testing.assert_allclose(ours[0], onnxruntime_outputs(model, {"x": X})[0], rtol=1e-5, atol=1e-6)


def test_group_rms_instance_and_mean_variance_normalization():
    scale, bias = np.linspace(0.5, 2, 4).astype(np.float32), np.linspace(-1, 1, 4).astype(np.float32)
    assert_matches_onnxruntime(helper.make_node("GroupNormalization", ["x", "s", "b"], ["y"], num_groups=2),
                               {"x": X}, {"s": scale, "b": bias}, opset=21)
    assert_matches_onnxruntime(helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-2, epsilon=1e-4),
                               {"x": X}, {"s": rng(3).standard_normal((3, 5)).astype(np.float32)}, opset=23)
    assert_matches_onnxruntime(helper.make_node("InstanceNormalization", ["x", "s", "b"], ["y"]),
                               {"x": X}, {"s": scale, "b": bias}, opset=22)
    assert_matches_onnxruntime(helper.make_node("MeanVarianceNormalization", ["x"], ["y"], axes=[0, 3]),
                               {"x": X}, opset=13)
    assert_matches_onnxruntime(helper.make_node("LpNormalization", ["x"], ["y"], axis=1, p=1), {"x": X}, opset=22)


def test_batch_normalization_training_mode_outputs():
    stats = {"s": np.linspace(0.5, 2, 4).astype(np.float32), "b": np.zeros(4, np.float32),
             "m": np.linspace(-1, 1, 4).astype(np.float32), "v": np.linspace(1, 2, 4).astype(np.float32)}
    node = helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y", "rm", "rv"], training_mode=1,
                            momentum=0.8)
    assert len(assert_matches_onnxruntime(node, {"x": X}, stats, opset=15)) == 3
