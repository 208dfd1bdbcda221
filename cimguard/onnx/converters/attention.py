"""Transformer and sequence-model operators: ``Attention`` (opset 23: grouped heads, 3D or 4D
inputs, masks, past key/value caches, causal, sliding window, softcap, scale),
``RotaryEmbedding`` (interleaved or not, partial rotary dimension, position ids), and opset 27's
``LinearAttention`` and ``CausalConvWithState``.  Written against the ONNX specification (its
function bodies and reference implementation)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, converter, function_result


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean mask (True: attend) as an additive bias (0 / -inf); a float mask as it is."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, -math.inf)
    return mask.to(dtype)


def _frontier(q_len: int, kv_len: int, offset, device) -> torch.Tensor:
    """``i + offset - j`` for every (query i, key j); per batch when ``offset`` is a tensor."""
    i = torch.arange(q_len, device=device).reshape(q_len, 1)
    j = torch.arange(kv_len, device=device).reshape(1, kv_len)
    if isinstance(offset, torch.Tensor):
        return (i + offset.reshape(-1, 1, 1)) - j
    return (i + int(offset)) - j


def _with_batch_axis(bias: torch.Tensor, per_batch: bool) -> torch.Tensor:
    return bias.reshape(bias.shape[0], 1, *bias.shape[-2:]) if per_batch else bias


@converter("Attention", 23, "new")
def _attention(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    attrs = node.attributes
    causal = bool(attrs.get("is_causal", 0))
    q_heads = attrs.get("q_num_heads")
    kv_heads = attrs.get("kv_num_heads")
    scale_attr = attrs.get("scale")
    softcap = attrs.get("softcap")
    mode = int(attrs.get("qk_matmul_output_mode", 0))
    left = int(attrs.get("left_window_size", -1))
    right = int(attrs.get("right_window_size", -1))

    def attention(q, k, v, mask=None, past_key=None, past_value=None, nonpad_kv_seqlen=None):
        three_d = q.dim() == 3
        if three_d:
            if q_heads is None or kv_heads is None:
                raise Unsupported("Attention with 3D inputs needs q_num_heads and kv_num_heads")
            b = q.shape[0]
            q = q.reshape(b, q.shape[1], int(q_heads), -1).transpose(1, 2)
            k = k.reshape(b, k.shape[1], int(kv_heads), -1).transpose(1, 2)
            v = v.reshape(b, v.shape[1], int(kv_heads), -1).transpose(1, 2)
        dtype = q.dtype
        scale = float(scale_attr) if scale_attr is not None else 1.0 / math.sqrt(q.shape[-1])
        root = math.sqrt(scale)  # both operands scaled by sqrt(scale), as the specification computes
        if past_key is not None:
            k = torch.cat([past_key, k], dim=2)
        if past_value is not None:
            v = torch.cat([past_value, v], dim=2)
        present_k, present_v = k, v
        q_len, kv_len = q.shape[2], k.shape[2]
        bias = torch.zeros((q_len, kv_len), dtype=dtype, device=q.device)
        if mask is not None and mask.shape[-1] < kv_len:  # shorter masks: padded with "do not attend"
            pad = (*mask.shape[:-1], kv_len - mask.shape[-1])
            fill = torch.zeros(pad, dtype=torch.bool, device=mask.device) if mask.dtype == torch.bool else \
                torch.full(pad, -math.inf, dtype=mask.dtype, device=mask.device)
            mask = torch.cat([mask, fill], dim=-1)
        if past_key is None and nonpad_kv_seqlen is not None:
            offset = nonpad_kv_seqlen.reshape(-1).long() - q_len
        else:
            offset = past_key.shape[2] if past_key is not None else 0
        per_batch = isinstance(offset, torch.Tensor)
        if causal:
            base = bias if mask is None else _additive(mask, dtype)
            if left >= 0 or right >= 0:
                base = bias + base
            allowed = _frontier(q_len, kv_len, offset, q.device) >= 0
            causal_bias = torch.zeros(allowed.shape, dtype=dtype, device=q.device).masked_fill(~allowed, -math.inf)
            bias = base + _with_batch_axis(causal_bias, per_batch)
        elif mask is not None:
            bias = bias + _additive(mask, dtype)
        if left >= 0 or right >= 0:
            diff = _frontier(q_len, kv_len, offset, q.device)
            allowed = torch.ones(diff.shape, dtype=torch.bool, device=q.device)
            if left >= 0:
                allowed &= diff <= left
            if right >= 0:
                allowed &= -diff <= right
            window = torch.zeros(allowed.shape, dtype=dtype, device=q.device).masked_fill(~allowed, -math.inf)
            bias = bias + _with_batch_axis(window, per_batch)
        if nonpad_kv_seqlen is not None:
            valid = torch.arange(kv_len, device=q.device)[None, :] < nonpad_kv_seqlen.reshape(-1, 1)
            padding = torch.zeros(valid.shape, dtype=dtype, device=q.device).masked_fill(~valid, -math.inf)
            bias = bias + padding.reshape(-1, 1, 1, kv_len)
        heads, kv = q.shape[1], k.shape[1]
        if heads != kv and heads % kv == 0:
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
        scores = (q * root) @ (k * root).transpose(-1, -2)
        if softcap is not None and float(softcap) > 0:  # exporters write softcap=0 for "none"
            scores = float(softcap) * torch.tanh(scores / float(softcap))
        qk = scores
        with_bias = scores + bias
        if mode == 2:
            qk = with_bias
        row_max = with_bias.amax(dim=-1, keepdim=True)
        safe = torch.where(torch.isneginf(row_max), torch.zeros_like(row_max), row_max)
        weights = torch.exp(with_bias - safe)
        total = weights.sum(dim=-1, keepdim=True)
        weights = weights / torch.where(total == 0, torch.ones_like(total), total)
        masked_rows = torch.isneginf(bias.amax(dim=-1, keepdim=True))
        weights = torch.where(masked_rows, torch.zeros_like(weights), weights)
        if mode == 3:
            qk = weights
        out = weights.to(dtype) @ v
        if three_d:
            out = out.transpose(1, 2).reshape(out.shape[0], out.shape[2], -1)
        return out, present_k, present_v, qk.to(dtype)

    return function_result(node, attention)


@converter("RotaryEmbedding", 23, "new")
def _rotary(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    interleaved = bool(node.attributes.get("interleaved", 0))
    rotary_dim = int(node.attributes.get("rotary_embedding_dim", 0))
    heads = node.attributes.get("num_heads")

    def rotary(x, cos, sin, position_ids=None):
        shape = x.shape
        if x.dim() == 3:  # [batch, seq, hidden] -> [batch, seq, heads, head]
            x = x.reshape(shape[0], shape[1], int(heads), -1)
        else:  # [batch, heads, seq, head] -> [batch, seq, heads, head]
            x = x.transpose(1, 2)
        if position_ids is not None:
            cos, sin = cos[position_ids], sin[position_ids]
        dim = rotary_dim or x.shape[-1]
        rotate, keep = x[..., :dim], x[..., dim:]
        cos = cos[..., : dim // 2].unsqueeze(2)
        sin = sin[..., : dim // 2].unsqueeze(2)
        if interleaved:
            x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
        else:
            x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2:]
        r1 = x1 * cos - x2 * sin
        r2 = x1 * sin + x2 * cos
        if interleaved:
            rotated = torch.stack([r1, r2], dim=-1).reshape(rotate.shape)
        else:
            rotated = torch.cat([r1, r2], dim=-1)
        y = torch.cat([rotated, keep], dim=-1)
        return y.reshape(shape) if len(shape) == 3 else y.transpose(1, 2)

    return function_result(node, rotary)


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """``[B, T, H*D]`` -> ``[B, H, T, D]``."""
    b, t, hd = x.shape
    return x.reshape(b, t, heads, hd // heads).transpose(1, 2)


@converter("LinearAttention", 27, "linear, gated, delta and gated-delta updates")
def _linear_attention(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    attrs = node.attributes
    rule = attrs.get("update_rule", "gated_delta")
    q_heads, kv_heads = attrs.get("q_num_heads"), attrs.get("kv_num_heads")
    scale_attr = attrs.get("scale")
    if rule not in ("linear", "gated", "delta", "gated_delta") or not q_heads or not kv_heads:
        raise Unsupported(f"LinearAttention update_rule {rule!r} without q_num_heads/kv_num_heads is not supported")
    gating, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")

    def linear_attention(q, k, v, past_state=None, decay=None, beta=None):
        b, t, _ = q.shape
        d_k, d_v = q.shape[-1] // int(q_heads), v.shape[-1] // int(kv_heads)
        group = int(q_heads) // int(kv_heads)
        q4, k4, v4 = _heads(q, int(q_heads)).float(), _heads(k, int(kv_heads)).float(), _heads(v, int(kv_heads)).float()
        if decay is not None:
            decay4 = (decay.reshape(b, t, int(kv_heads), 1).transpose(1, 2) if decay.shape[-1] == int(kv_heads)
                      else _heads(decay, int(kv_heads))).float()
        if beta is not None:
            beta4 = beta.reshape(b, t, beta.shape[-1], 1).transpose(1, 2).float()
        state = past_state.float().clone() if past_state is not None else \
            torch.zeros((b, int(kv_heads), d_k, d_v), dtype=torch.float32, device=q.device)
        scale = float(scale_attr) if scale_attr else 1.0 / math.sqrt(d_k)
        outputs = []
        for i in range(t):  # the recurrence of the specification, one step at a time
            k_t, v_t = k4[:, :, i, :], v4[:, :, i, :]
            if gating:
                state = state * torch.exp(decay4[:, :, i, :])[..., None]
            if delta:
                retrieved = torch.einsum("bhdm,bhd->bhm", state, k_t)
                v_t = beta4[:, :, i, :] * (v_t - retrieved)
            state = state + k_t[..., :, None] * v_t[..., None, :]
            read = state if group == 1 else state.repeat_interleave(group, dim=1)
            outputs.append(scale * torch.einsum("bhd,bhdm->bhm", q4[:, :, i, :], read))
        out = torch.stack(outputs, dim=2).transpose(1, 2).reshape(b, t, int(q_heads) * d_v)
        return out.to(q.dtype), state.to(past_state.dtype if past_state is not None else q.dtype)

    return function_result(node, linear_attention)


@converter("CausalConvWithState", 27, "new")
def _causal_conv(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    activation = node.attributes.get("activation", "none")
    if activation not in ("none", "silu", "swish"):
        raise Unsupported(f"CausalConvWithState activation {activation!r} is not supported")

    def causal_conv(x, weight, bias=None, past_state=None):
        batch, channels, _ = x.shape
        k = weight.shape[2]
        pad = past_state if past_state is not None else \
            torch.zeros((batch, channels, k - 1), dtype=x.dtype, device=x.device)
        padded = torch.cat([pad.to(x.dtype), x], dim=2)
        out = F.conv1d(padded, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), groups=channels)
        if activation != "none":
            out = out * torch.sigmoid(out)
        return out, padded[:, :, padded.shape[2] - (k - 1):]

    return function_result(node, causal_conv)
