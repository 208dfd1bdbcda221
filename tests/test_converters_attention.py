"""Opset-23 transformer family (``cimguard.onnx.converters.attention``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

Q = rng(0).standard_normal((2, 4, 3, 8)).astype(np.float32)
K = rng(1).standard_normal((2, 2, 5, 8)).astype(np.float32)
V = rng(2).standard_normal((2, 2, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("attrs", [
    dict(softcap=0.0, qk_matmul_output_mode=0),                   # what torch.onnx.export writes: no softcap
    dict(is_causal=1, scale=0.3),
    dict(softcap=2.0, qk_matmul_output_mode=2),
    dict(qk_matmul_output_mode=3),
])
def test_attention_grouped_heads(attrs):
    node = helper.make_node("Attention", ["q", "k", "v", "mask"], ["y", "", "", "qk"], **attrs)
    mask = rng(3).standard_normal((3, 5)).astype(np.float32)
    assert_matches_onnxruntime(node, {"q": Q, "k": K, "v": V}, {"mask": mask}, opset=23)


def test_attention_3d_inputs_with_past_cache_and_boolean_mask():
    q = rng(4).standard_normal((2, 3, 16)).astype(np.float32)
    k = rng(5).standard_normal((2, 3, 8)).astype(np.float32)
    v = rng(6).standard_normal((2, 3, 8)).astype(np.float32)
    past = {"pk": rng(7).standard_normal((2, 2, 4, 4)).astype(np.float32),
            "pv": rng(8).standard_normal((2, 2, 4, 4)).astype(np.float32),
            "mask": rng(9).random((3, 7)) > 0.3}
    node = helper.make_node("Attention", ["q", "k", "v", "mask", "pk", "pv"], ["y", "present_k", "present_v"],
                            q_num_heads=4, kv_num_heads=2, is_causal=1)
    assert len(assert_matches_onnxruntime(node, {"q": q, "k": k, "v": v}, past, opset=23)) == 3


@pytest.mark.parametrize("interleaved", [0, 1])
def test_rotary_embedding_partial_dimension_with_position_ids(interleaved):
    x = rng(10).standard_normal((2, 3, 5, 8)).astype(np.float32)  # [batch, heads, seq, head]
    constants = {"cos": rng(11).standard_normal((10, 2)).astype(np.float32),
                 "sin": rng(12).standard_normal((10, 2)).astype(np.float32),
                 "ids": rng(13).integers(0, 10, (2, 5))}
    node = helper.make_node("RotaryEmbedding", ["x", "cos", "sin", "ids"], ["y"], interleaved=interleaved,
                            rotary_embedding_dim=4)
    assert_matches_onnxruntime(node, {"x": x}, constants, opset=23)


@pytest.mark.parametrize("rule", ["linear", "gated", "delta", "gated_delta"])
def test_linear_attention_update_rules_with_past_state(rule):
    q = rng(14).standard_normal((2, 4, 8)).astype(np.float32)
    k = rng(15).standard_normal((2, 4, 4)).astype(np.float32) * 0.3
    v = rng(16).standard_normal((2, 4, 6)).astype(np.float32)
    constants = {"state": rng(17).standard_normal((2, 1, 4, 6)).astype(np.float32) * 0.1}
    inputs = ["q", "k", "v", "state", "", ""]
    if rule in ("gated", "gated_delta"):
        constants["decay"] = -np.abs(rng(18).standard_normal((2, 4, 1))).astype(np.float32)
        inputs[4] = "decay"
    if rule in ("delta", "gated_delta"):
        constants["beta"] = rng(19).random((2, 4, 1)).astype(np.float32)
        inputs[5] = "beta"
    node = helper.make_node("LinearAttention", inputs, ["y", "present"], update_rule=rule, q_num_heads=2,
                            kv_num_heads=1)
    assert_matches_onnxruntime(node, {"q": q, "k": k, "v": v}, constants, opset=27)


@pytest.mark.parametrize("activation", ["none", "silu"])
def test_causal_conv_with_state(activation):
    x = rng(20).standard_normal((2, 3, 5)).astype(np.float32)
    constants = {"w": rng(21).standard_normal((3, 1, 4)).astype(np.float32),
                 "b": rng(22).standard_normal(3).astype(np.float32),
                 "state": rng(23).standard_normal((2, 3, 3)).astype(np.float32)}
    node = helper.make_node("CausalConvWithState", ["x", "w", "b", "state"], ["y", "present"], activation=activation)
    assert_matches_onnxruntime(node, {"x": x}, constants, opset=27)
