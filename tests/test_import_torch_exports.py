"""Networks exported from torch today: legacy exporter at opsets 11, 13 and 17, and the
default (dynamo) exporter at opset 18+, all with a dynamic batch axis.

Each file must convert, map every Conv/Linear/MatMul weight, and agree with onnxruntime
(and with the torch network it came from) at two batch sizes.
"""

from __future__ import annotations

import warnings

import onnx
import pytest
import torch
from torch import nn

from cimguard.onnx.batch import output_mismatch
from cimguard.onnx.model import load_model
from cimguard.onnx.runtime import run_onnxruntime
from cimguard.onnx.verify import verify_against_onnxruntime

TOLERANCE = 1e-4
BATCH_SIZES = (1, 3)


class SmallNet(nn.Module):
    """Conv, BatchNorm, pooling (ceil mode), GELU, Linear, Dropout and a bare MatMul weight."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.fc = nn.Linear(16 * 2 * 2, 32)
        self.drop = nn.Dropout(0.25)
        self.proj = nn.Parameter(torch.randn(32, 10) / 6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = nn.functional.max_pool2d(x, 2)
        x = nn.functional.gelu(self.conv2(x))
        x = nn.functional.avg_pool2d(x, 2, ceil_mode=True)
        x = self.drop(torch.flatten(x, 1))
        return torch.tanh(self.fc(x)) @ self.proj


def _network() -> nn.Module:
    torch.manual_seed(0)
    net = SmallNet()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        net.bn.running_mean.uniform_(-0.5, 0.5)
        net.bn.running_var.uniform_(0.5, 2.0)
    return net.eval()


EXPORTS = [
    pytest.param(("legacy", 11), id="legacy-opset11"),
    pytest.param(("legacy", 13), id="legacy-opset13"),
    pytest.param(("legacy", 17), id="legacy-opset17"),
    pytest.param(("dynamo", None), id="dynamo-default", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def network():
    return _network()


@pytest.fixture(scope="module", params=EXPORTS)
def exported(request, network, tmp_path_factory):
    kind, opset = request.param
    path = tmp_path_factory.mktemp("torch_exports") / f"{kind}-{opset}.onnx"
    x = torch.randn(2, 3, 12, 12)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if kind == "legacy":
            torch.onnx.export(network, (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"],
                              output_names=["logits"], dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
        else:
            torch.onnx.export(network, (x,), str(path), dynamo=True,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}}, verbose=False)
    return kind, path


def test_exported_file_is_what_we_think(exported):
    kind, path = exported
    model = onnx.load(str(path))
    opset = next(op.version for op in model.opset_import if op.domain in ("", "ai.onnx"))
    if kind == "dynamo":
        assert opset >= 18
        # it uses operator versions plain onnx2torch lacks, added by cimguard.onnx.converters
        from cimguard.onnx.converters import ADDED

        added = {(op, version) for domain, op, version, _ in ADDED if domain == ""}
        used = {(n.op_type, onnx.defs.get_schema(n.op_type, max_inclusive_version=opset).since_version)
                for n in model.graph.node}
        assert used & added
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert not dims[0].HasField("dim_value"), "batch axis must be dynamic"


@pytest.mark.parametrize("batch", BATCH_SIZES)
def test_converts_and_matches(exported, network, batch):
    _, path = exported
    imported = load_model(path)
    assert [m.op_type for m in imported.mapped].count("Conv") == 2
    assert len(imported.mapped) == 4  # conv1, conv2, fc, proj
    assert imported.input.shape[0] is None
    generator = torch.Generator().manual_seed(batch)
    x = torch.randn(batch, 3, 12, 12, generator=generator)
    error = verify_against_onnxruntime(imported, x, tolerance=TOLERANCE).relative_error
    assert error <= TOLERANCE
    with torch.no_grad():
        ours = imported.module(x).numpy()
        theirs = network(x).numpy()
    assert ours.shape == (batch, 10)
    assert output_mismatch(theirs, ours) <= TOLERANCE
    assert output_mismatch(run_onnxruntime(imported.onnx_model, x.numpy()), theirs) <= TOLERANCE
