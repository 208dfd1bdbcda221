"""Recurrent layers: ``RNN``, ``GRU`` (``linear_before_reset``) and ``LSTM`` (peepholes,
``input_forget``), forward, reverse and bidirectional, ``layout`` 0 and 1, ``clip``,
sequence lengths, initial states, and the activations Sigmoid, Tanh and Relu.  A step loop
that follows the equations of the ONNX specification."""

from __future__ import annotations

import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, attribute, converter, function_result

_ACTIVATIONS = {"Sigmoid": torch.sigmoid, "Tanh": torch.tanh, "Relu": torch.relu}
_DEFAULTS = {"RNN": ["Tanh"], "GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"]}


def _recurrent(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    op = node.operation_type
    attrs = node.attributes
    direction = attrs.get("direction", "forward")
    directions = 2 if direction == "bidirectional" else 1
    names = attribute(node, "activations", None) or _DEFAULTS[op] * directions
    if attribute(node, "activation_alpha", None) or attribute(node, "activation_beta", None):
        raise Unsupported(f"{op} with activation_alpha/beta is not supported")
    unknown = [n for n in names if n not in _ACTIVATIONS]
    if unknown:
        raise Unsupported(f"{op} activation {unknown[0]} is not supported")
    functions = [_ACTIVATIONS[n] for n in names]
    per = len(_DEFAULTS[op])
    clip = attrs.get("clip")
    layout = int(attrs.get("layout", 0))
    linear_before_reset = bool(attrs.get("linear_before_reset", 0))
    input_forget = bool(attrs.get("input_forget", 0))
    outputs = len(node.output_values)
    gates = {"RNN": 1, "GRU": 3, "LSTM": 4}[op]

    def clipped(x: torch.Tensor) -> torch.Tensor:
        return x if clip is None else torch.clamp(x, -float(clip), float(clip))

    def run(x, w, r, b=None, lengths=None, h0=None, c0=None, p=None):
        if layout == 1:
            x = x.transpose(0, 1)
            h0 = None if h0 is None else h0.transpose(0, 1)
            c0 = None if c0 is None else c0.transpose(0, 1)
        steps, batch = x.shape[:2]
        hidden = r.shape[-1]
        ys = torch.zeros((steps, directions, batch, hidden), dtype=x.dtype, device=x.device)
        last_h, last_c = [], []
        for d in range(directions):
            f = functions[d * per:(d + 1) * per]
            wd, rd = w[d], r[d]
            bd = b[d] if b is not None else torch.zeros(2 * gates * hidden, dtype=x.dtype, device=x.device)
            wb, rb = bd[: gates * hidden], bd[gates * hidden:]
            h = h0[d] if h0 is not None else torch.zeros((batch, hidden), dtype=x.dtype, device=x.device)
            c = c0[d] if c0 is not None else torch.zeros((batch, hidden), dtype=x.dtype, device=x.device)
            pd = p[d] if p is not None else torch.zeros(3 * hidden, dtype=x.dtype, device=x.device)
            reverse = direction == "reverse" or d == 1
            seq = lengths.long() if lengths is not None else torch.full((batch,), steps, device=x.device)
            for step in range(steps):
                t = step
                if reverse:
                    # each sequence runs backwards from its own last element
                    t_rows = (seq - 1 - step)
                else:
                    t_rows = torch.full((batch,), t, device=x.device)
                active = (t_rows >= 0) & (t_rows < seq)
                xt = x[t_rows.clamp(0, steps - 1), torch.arange(batch, device=x.device)]
                gx = xt @ wd.T + wb
                if op == "RNN":
                    new_h, new_c = f[0](clipped(gx + h @ rd.T + rb)), c
                elif op == "GRU":
                    zx, rx, hx = gx.chunk(3, dim=-1)
                    rz, rr, rh = rd.chunk(3, dim=0)
                    bz, br, bh = rb.chunk(3)
                    z = f[0](clipped(zx + h @ rz.T + bz))
                    reset = f[0](clipped(rx + h @ rr.T + br))
                    if linear_before_reset:
                        candidate = f[1](clipped(hx + reset * (h @ rh.T + bh)))
                    else:
                        candidate = f[1](clipped(hx + (reset * h) @ rh.T + bh))
                    new_h, new_c = (1 - z) * candidate + z * h, c
                else:
                    gates_all = gx + h @ rd.T + rb
                    i, o, fg, cc = gates_all.chunk(4, dim=-1)
                    pi, po, pf = pd.chunk(3)
                    i = f[0](clipped(i + pi * c))
                    fg = f[0](clipped(fg + pf * c))
                    if input_forget:
                        fg = 1 - i
                    cand = f[1](clipped(cc))
                    new_c = fg * c + i * cand
                    o = f[0](clipped(o + po * new_c))
                    new_h = o * f[2](new_c)
                mask = active.reshape(-1, 1)
                h = torch.where(mask, new_h, h)
                c = torch.where(mask, new_c, c)
                out_t = t_rows.clamp(0, steps - 1)
                rows = torch.arange(batch, device=x.device)
                ys[out_t, d, rows] = torch.where(mask, new_h, ys[out_t, d, rows])
            last_h.append(h)
            last_c.append(c)
        y_h = torch.stack(last_h)
        y_c = torch.stack(last_c)
        if layout == 1:
            ys = ys.permute(2, 0, 1, 3)
            y_h, y_c = y_h.transpose(0, 1), y_c.transpose(0, 1)
        results = (ys, y_h, y_c)[:outputs]
        return results if outputs > 1 else results[0]

    return function_result(node, run)


for _op in ("RNN", "GRU", "LSTM"):
    converter(_op, 7, "step loop", replace=True)(_recurrent)
