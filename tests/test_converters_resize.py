"""Resize family (``cimguard.onnx.converters.resize``): modes and attributes beyond the node suite."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().standard_normal((1, 2, 5, 7)).astype(np.float32)


@pytest.mark.parametrize("mode,coordinates,nearest", [
    ("nearest", "half_pixel", "ceil"), ("nearest", "pytorch_half_pixel", "round_prefer_ceil"),
    ("nearest", "align_corners", "floor"), ("nearest", "asymmetric", "round_prefer_floor"),
    ("linear", "half_pixel_symmetric", None), ("linear", "align_corners", None), ("cubic", "asymmetric", None),
])
def test_resize_by_scales(mode, coordinates, nearest):
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinates)
    if nearest:
        attrs["nearest_mode"] = nearest
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], **attrs)
    # align_corners with a scale that gives a fractional output length: see the test below.
    scales = [1, 1, 2.0, 1.0] if coordinates == "align_corners" else [1, 1, 1.7, 0.6]
    assert_matches_onnxruntime(node, {"x": X}, {"scales": np.array(scales, np.float32)}, opset=19)


def test_align_corners_with_a_fractional_output_length_follows_the_reference():
    """``scales`` 1.7 of 5 rows: the reference implementation (whose outputs the node suite stores)
    divides by ``5 * 1.7 - 1``, onnxruntime by ``8 - 1``; cimguard follows the reference."""
    from onnx.reference import ReferenceEvaluator

    from tests.converter_check import converted_outputs, one_node_model

    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="linear",
                            coordinate_transformation_mode="align_corners")
    model = one_node_model(node, {"x": X}, {"scales": np.array([1, 1, 1.7, 0.6], np.float32)}, opset=19)
    expected = ReferenceEvaluator(model).run(None, {"x": X})[0]
    np.testing.assert_allclose(converted_outputs(model, {"x": X})[0], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
def test_resize_sizes_on_axes_with_aspect_ratio_policy(policy):
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="linear", axes=[3, 2],
                            keep_aspect_ratio_policy=policy)
    assert_matches_onnxruntime(node, {"x": X}, {"sizes": np.array([11, 4], np.int64)}, opset=19)


def test_resize_cubic_antialias_and_exclude_outside():
    node = helper.make_node("Resize", ["x", "", "scales"], ["y"], mode="cubic", antialias=1, exclude_outside=1,
                            cubic_coeff_a=-0.5)
    assert_matches_onnxruntime(node, {"x": X}, {"scales": np.array([1, 1, 0.6, 0.45], np.float32)}, opset=19)


def test_tf_crop_and_resize_with_extrapolation():
    node = helper.make_node("Resize", ["x", "roi", "", "sizes"], ["y"], mode="linear",
                            coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=7.0)
    roi = np.array([0, 0, -0.2, 0.1, 1, 1, 0.9, 1.3], np.float32)
    assert_matches_onnxruntime(node, {"x": X}, {"roi": roi, "sizes": np.array([1, 2, 6, 6], np.int64)}, opset=19)
