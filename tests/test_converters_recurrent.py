"""Recurrent family (``cimguard.onnx.converters.recurrent``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from tests.converter_check import assert_matches_onnxruntime, rng

STEPS, BATCH, FEATURES, HIDDEN = 4, 3, 5, 6


def _weights(op: str, directions: int) -> dict[str, np.ndarray]:
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]
    out = {"w": rng(1).standard_normal((directions, gates * HIDDEN, FEATURES)).astype(np.float32) * 0.5,
           "r": rng(2).standard_normal((directions, gates * HIDDEN, HIDDEN)).astype(np.float32) * 0.5,
           "b": rng(3).standard_normal((directions, 2 * gates * HIDDEN)).astype(np.float32) * 0.1,
           "lengths": np.array([4, 2, 3], np.int32),
           "h0": rng(4).standard_normal((directions, BATCH, HIDDEN)).astype(np.float32)}
    if op == "LSTM":
        out["c0"] = rng(5).standard_normal((directions, BATCH, HIDDEN)).astype(np.float32)
        out["p"] = rng(6).standard_normal((directions, 3 * HIDDEN)).astype(np.float32)
    return out


@pytest.mark.parametrize("op", ["RNN", "GRU", "LSTM"])
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
def test_recurrent_layers_with_lengths_and_initial_states(op, direction):
    directions = 2 if direction == "bidirectional" else 1
    constants = _weights(op, directions)
    inputs = ["x", "w", "r", "b", "lengths", "h0"] + (["c0", "p"] if op == "LSTM" else [])
    outputs = ["y", "y_h"] + (["y_c"] if op == "LSTM" else [])
    attrs = dict(hidden_size=HIDDEN, direction=direction)
    if op == "GRU":
        attrs["linear_before_reset"] = 1
    x = rng(0).standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32)
    assert_matches_onnxruntime(helper.make_node(op, inputs, outputs, **attrs), {"x": x}, constants, opset=14)


def test_lstm_batch_first_layout_and_clip():
    """onnxruntime has no ``layout=1``: compared with its ``layout=0`` on the transposed input."""
    from tests.converter_check import converted_outputs, one_node_model

    constants = _weights("LSTM", 1)
    del constants["lengths"], constants["h0"], constants["c0"], constants["p"]
    x = rng(0).standard_normal((STEPS, BATCH, FEATURES)).astype(np.float32)
    node = helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "y_h"], hidden_size=HIDDEN, clip=0.5)
    y, y_h = assert_matches_onnxruntime(node, {"x": x}, constants, opset=14)
    batch_first = helper.make_node("LSTM", ["x", "w", "r", "b"], ["y", "y_h"], hidden_size=HIDDEN, layout=1, clip=0.5)
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))
    ours = converted_outputs(one_node_model(batch_first, {"x": xt}, constants, opset=14), {"x": xt})
    np.testing.assert_allclose(ours[0], y.transpose(2, 0, 1, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ours[1], y_h.transpose(1, 0, 2), rtol=1e-5, atol=1e-6)
