"""Indexing and ordering family (``cimguard.onnx.converters.indexing``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

X = rng().integers(0, 4, (3, 6)).astype(np.float32)  # many ties


@pytest.mark.parametrize("largest", [0, 1])
def test_top_k_ties_give_the_lower_index(largest):
    node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, largest=largest)
    assert_matches_onnxruntime(node, {"x": X}, {"k": np.array([4], np.int64)}, opset=11)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_elements_and_nd_reductions(reduction):
    indices = np.array([[1, -1], [0, 0], [2, 1]], np.int64)
    updates = rng(1).standard_normal((3, 2)).astype(np.float32)
    node = helper.make_node("ScatterElements", ["x", "i", "u"], ["y"], axis=1, reduction=reduction)
    assert_matches_onnxruntime(node, {"x": X}, {"i": indices, "u": updates}, opset=18)
    nd = helper.make_node("ScatterND", ["x", "i", "u"], ["y"], reduction=reduction)
    assert_matches_onnxruntime(nd, {"x": X}, {"i": np.array([[0, 1], [2, 5], [0, 1]], np.int64),
                                            "u": np.array([1.5, -2.0, 3.0], np.float32)}, opset=18)


def test_gather_elements_and_gather_nd_batch_dims():
    assert_matches_onnxruntime(helper.make_node("GatherElements", ["x", "i"], ["y"], axis=0), {"x": X},
                               {"i": np.array([[-1, 0, 2, 1, -3, 0]], np.int64)}, opset=13)
    data = rng(2).standard_normal((2, 3, 4)).astype(np.float32)
    node = helper.make_node("GatherND", ["x", "i"], ["y"], batch_dims=1)
    assert_matches_onnxruntime(node, {"x": data}, {"i": np.array([[[1, 2], [0, -1]], [[2, 0], [1, 3]]], np.int64)},
                               opset=13)


@pytest.mark.parametrize("op", ["CumSum", "CumProd"])
def test_cumulative_exclusive_reverse(op):
    node = helper.make_node(op, ["x", "axis"], ["y"], exclusive=1, reverse=1)
    assert_matches_onnxruntime(node, {"x": X + 1}, {"axis": np.array(1, np.int32)}, opset=26 if op == "CumProd" else 14)


def test_einsum_compress_unique_and_nonzero():
    y = rng(3).standard_normal((6, 2)).astype(np.float32)
    assert_matches_onnxruntime(helper.make_node("Einsum", ["x", "y"], ["z"], equation="ij,jk->ik"), {"x": X}, {"y": y},
                               opset=12)
    assert_matches_onnxruntime(helper.make_node("Compress", ["x", "c"], ["y"], axis=1), {"x": X},
                               {"c": np.array([1, 0, 1, 1], bool)}, opset=11)
    assert_matches_onnxruntime(helper.make_node("Unique", ["x"], ["y", "i", "inv", "n"], sorted=0), {"x": X},
                               opset=11)
    assert_matches_onnxruntime(helper.make_node("NonZero", ["x"], ["y"]), {"x": X}, opset=13)
