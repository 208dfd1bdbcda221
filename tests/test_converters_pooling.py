"""Pooling family (``cimguard.onnx.converters.pooling``): cases beyond the node suite."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().standard_normal((2, 3, 9, 8)).astype(np.float32)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 3], pads=[2, 0, 1, 2], strides=[2, 2]),                 # pads beyond half the kernel
    dict(kernel_shape=[2, 3], dilations=[2, 1], ceil_mode=1, strides=[2, 2]),
    dict(kernel_shape=[3, 3], pads=[1, 1, 2, 0], storage_order=1),                 # column-major indices
])
def test_max_pool_values_and_indices(attrs):
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], **attrs)
    assert_matches_onnxruntime(node, {"x": X}, opset=12)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[3, 2], dilations=[2, 2], pads=[1, 0, 2, 1], count_include_pad=1),
    dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1, pads=[0, 1, 1, 0]),
])
def test_average_pool_dilations_and_asymmetric_pads(attrs):
    assert_matches_onnxruntime(helper.make_node("AveragePool", ["x"], ["y"], **attrs), {"x": X}, opset=22)


def test_lp_pool_and_global_pools():
    assert_matches_onnxruntime(helper.make_node("LpPool", ["x"], ["y"], kernel_shape=[2, 3], p=3, pads=[1, 0, 0, 1]),
                               {"x": X}, opset=22)
    assert_matches_onnxruntime(helper.make_node("GlobalMaxPool", ["x"], ["y"]), {"x": X}, opset=22)
    assert_matches_onnxruntime(helper.make_node("GlobalLpPool", ["x"], ["y"], p=3), {"x": X}, opset=18)


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], output_shape=[19, 18]),
    dict(strides=[2, 3], auto_pad="SAME_UPPER"),
    dict(strides=[2, 2], auto_pad="SAME_LOWER", output_padding=[1, 0]),
    dict(strides=[1, 2], pads=[0, 2, 1, 0], dilations=[2, 1]),
])
def test_conv_transpose_output_shape_auto_pad_and_asymmetric_pads(attrs):
    weight = rng(1).standard_normal((3, 2, 3, 3)).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)
    assert_matches_onnxruntime(node, {"x": X}, {"w": weight, "b": np.array([0.5, -0.5], np.float32)}, opset=22)


def test_deform_conv_with_groups_offset_groups_and_mask():
    x = rng(2).standard_normal((1, 4, 6, 5)).astype(np.float32)
    constants = {"w": rng(3).standard_normal((2, 2, 3, 3)).astype(np.float32),
                 "offset": rng(4).standard_normal((1, 2 * 2 * 9, 3, 3)).astype(np.float32),
                 "b": np.array([0.5, -0.5], np.float32),
                 "mask": rng(5).random((1, 2 * 9, 3, 3)).astype(np.float32)}
    node = helper.make_node("DeformConv", ["x", "w", "offset", "b", "mask"], ["y"], group=2, offset_group=2,
                            strides=[2, 2], pads=[1, 1, 1, 1], kernel_shape=[3, 3])
    assert_matches_onnxruntime(node, {"x": x}, constants, opset=22)
