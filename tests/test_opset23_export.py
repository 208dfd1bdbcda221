"""Today's exporter at opset 23: ``scaled_dot_product_attention`` and ``nn.RMSNorm`` become
``Attention`` and ``RMSNormalization`` nodes, and the file runs end to end (evaluate,
attack, harden, export checked in onnxruntime)."""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytestmark = pytest.mark.usefixtures("one_thread")
COMMON = ("--torch-device", "cpu", "--seed", "0", "--weight-bits", "4")


class AttentionBlock(nn.Module):
    """The 8x8 digit as 8 tokens of 8 pixels: embedding, RMSNorm, one attention block, mean, head."""

    def __init__(self, width: int = 16, heads: int = 2, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(8, width)
        self.norm = nn.RMSNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.head = nn.Linear(width, classes)
        self.heads = heads

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[0]
        h = self.embed(x.reshape(batch, 8, 8))
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(batch, 8, self.heads, -1).transpose(1, 2)

        attended = F.scaled_dot_product_attention(split(q), split(k), split(v))
        h = h + self.out(attended.transpose(1, 2).reshape(batch, 8, -1))
        return self.head(h.mean(dim=1))


@pytest.fixture(scope="module")
def opset23_file(tmp_path_factory, digits):
    """The block trained briefly on digits, exported by ``torch.onnx.export(..., opset_version=23)``."""
    torch.manual_seed(0)
    block = AttentionBlock()
    optimiser = torch.optim.Adam(block.parameters(), lr=0.01)
    generator = torch.Generator().manual_seed(0)
    for _ in range(150):
        index = torch.randint(0, len(digits.x_train), (128,), generator=generator)
        loss = F.cross_entropy(block(digits.x_train[index]), digits.y_train[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    block.eval()
    path = tmp_path_factory.mktemp("opset23") / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(block, (digits.x_eval[:2],), str(path), opset_version=23, dynamo=True,
                          dynamic_shapes=({0: torch.export.Dim("batch")},))
    return path


def _onnxruntime_logits(path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def test_the_exporter_writes_attention_and_rms_normalization(opset23_file):
    model = onnx.load(str(opset23_file))
    ops = {node.op_type for node in model.graph.node}
    assert {"Attention", "RMSNormalization"} <= ops
    assert next(op.version for op in model.opset_import if op.domain == "") == 23


def test_conversion_matches_onnxruntime(opset23_file, digits):
    from cimguard.onnx.model import load_model

    imported = load_model(opset23_file)
    x = digits.x_eval[:5].numpy()
    with torch.no_grad():
        ours = imported.module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours, _onnxruntime_logits(opset23_file, x), rtol=1e-4, atol=1e-5)
    assert {w.op_type for w in imported.mapped} >= {"Gemm"}


def test_evaluate_attack_harden_and_export(opset23_file, digits, invoke, tmp_path):
    expected = float((_onnxruntime_logits(opset23_file, digits.x_eval.numpy()).argmax(1)
                      == digits.y_eval.numpy()).mean())
    assert expected > 0.5, "the block learnt the digits"
    report = tmp_path / "evaluate.json"
    result = invoke("evaluate", "--model", opset23_file, "--data", "digits", "--samples", "2", "--json", report,
                    *COMMON)
    assert result.exit_code == 0, result.output
    assert json.loads(report.read_text())["float_accuracy"] == pytest.approx(expected)
    result = invoke("attack", "--model", opset23_file, "--data", "digits", "--max-samples", "60", "--samples", "0",
                    "--thg", "0.03", "--solver", "flwc", "--iterations", "1", *COMMON)
    assert result.exit_code == 0, result.output
    hardened = tmp_path / "hardened.onnx"
    result = invoke("harden", opset23_file, "--data", "digits", "--trainer", "vanilla", "--epochs", "1",
                    "--batch-size", "256", "-o", hardened, *COMMON)
    assert result.exit_code == 0, result.output
    original, written = onnx.load(str(opset23_file)), onnx.load(str(hardened))
    assert [n.op_type for n in written.graph.node] == [n.op_type for n in original.graph.node]
    weights = {init.name: onnx.numpy_helper.to_array(init) for init in original.graph.initializer}
    changed = [init.name for init in written.graph.initializer
               if init.name in weights and not np.array_equal(onnx.numpy_helper.to_array(init), weights[init.name])]
    assert changed, "harden wrote new crossbar weights"
    logits = _onnxruntime_logits(hardened, digits.x_eval[:8].numpy())  # onnxruntime runs the written file
    assert logits.shape == (8, 10) and np.isfinite(logits).all()
