"""Sampling and linear-algebra families (``cimguard.onnx.converters.sampling``, ``linear_algebra``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().standard_normal((2, 3, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("mode", ["linear", "nearest", "cubic"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_modes_and_padding(mode, padding):
    grid = rng(1).uniform(-1.2, 1.2, (2, 4, 3, 2)).astype(np.float32)
    node = helper.make_node("GridSample", ["x", "grid"], ["y"], mode=mode, padding_mode=padding, align_corners=1)
    assert_matches_onnxruntime(node, {"x": X}, {"grid": grid}, opset=22)


def test_affine_grid_col2im_and_center_crop_pad():
    theta = rng(2).standard_normal((2, 2, 3)).astype(np.float32)
    assert_matches_onnxruntime(helper.make_node("AffineGrid", ["theta", "size"], ["y"], align_corners=0),
                               {"theta": theta}, {"size": np.array([2, 3, 4, 5], np.int64)}, opset=20)
    columns = rng(3).standard_normal((1, 2 * 4, 12)).astype(np.float32)  # 2 channels, 2x2 blocks, 3x4 positions
    node = helper.make_node("Col2Im", ["x", "image", "block"], ["y"], pads=[1, 0, 1, 0], strides=[2, 1])
    assert_matches_onnxruntime(node, {"x": columns}, {"image": np.array([5, 5], np.int64),
                                                      "block": np.array([2, 2], np.int64)}, opset=18)
    assert_matches_onnxruntime(helper.make_node("CenterCropPad", ["x", "shape"], ["y"], axes=[2, 3]), {"x": X},
                               {"shape": np.array([3, 9], np.int64)}, opset=18)


def test_det_matmul_integer_and_qlinear_matmul():
    assert_matches_onnxruntime(helper.make_node("Det", ["x"], ["y"]), {"x": X[:, :, :4, :4]}, opset=22)
    a = rng(4).integers(0, 255, (3, 4)).astype(np.uint8)
    b = rng(5).integers(-100, 100, (4, 2)).astype(np.int8)
    node = helper.make_node("MatMulInteger", ["a", "b", "az", "bz"], ["y"])
    assert_matches_onnxruntime(node, {"a": a}, {"b": b, "az": np.array(12, np.uint8), "bz": np.array(-3, np.int8)},
                               opset=10)
    constants = {"as": np.array(0.02, np.float32), "az": np.array(100, np.uint8), "b": rng(6).integers(0, 255, (4, 2)).astype(np.uint8),
                 "bs": np.array(0.05, np.float32), "bz": np.array(120, np.uint8), "ys": np.array(0.1, np.float32),
                 "yz": np.array(128, np.uint8)}
    node = helper.make_node("QLinearMatMul", ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], ["y"])
    assert_matches_onnxruntime(node, {"a": a}, constants, opset=21)
