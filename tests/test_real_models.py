"""The models people bring: torchvision ResNet-18 and MobileNetV2 and a small transformer classifier,
exported by today's default ``torch.onnx.export`` with no dynamic axes (batch 1 baked in).

Each fixed-batch file must run ``evaluate``, ``attack --solver flwc,pgd`` and ``harden`` through
the CLI and give exactly the numbers of the same network exported with a dynamic batch axis.
Random weights, 32×32 inputs, a few samples, 2-bit weights and tiny budgets keep it fast.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import pytest
import torch
from torch import nn

pytestmark = pytest.mark.slow


class TransformerClassifier(nn.Module):
    """A linear embedding, a 2-layer ``nn.TransformerEncoder`` and a linear head (mean over tokens)."""

    def __init__(self, features: int = 8, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.embed = nn.Linear(features, width)
        layer = nn.TransformerEncoderLayer(width, 4, 64, dropout=0.0, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)
        # Left untrained on purpose: TransformerEncoder deep-copies one layer, so the exporter stores
        # each of its weights once for both layers, and harden must untie them on export.

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


def _networks():
    import torchvision

    torch.manual_seed(0)
    return {
        "resnet18": (torchvision.models.resnet18(weights=None, num_classes=10).eval(), (3, 32, 32)),
        "mobilenet_v2": (torchvision.models.mobilenet_v2(weights=None, num_classes=10).eval(), (3, 32, 32)),
        "transformer": (TransformerClassifier().eval(), (16, 8)),
    }


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``{name: (fixed.onnx, dynamic.onnx, data.npz)}``, exported once per test module."""
    folder = tmp_path_factory.mktemp("real_models")
    files = {}
    for name, (network, sample) in _networks().items():
        x = torch.randn(2, *sample, generator=torch.Generator().manual_seed(1))
        fixed, dynamic = folder / f"{name}.onnx", folder / f"{name}_dynamic.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (x[:1],), str(fixed))  # today's default: dynamo exporter, batch 1 baked in
            # The reference: the same network with a dynamic batch axis (an example of 2: torch.export
            # specialises axes of size 1).  The legacy exporter is 4x faster for the CNNs.
            if name == "transformer":
                torch.onnx.export(network, (x,), str(dynamic), dynamic_shapes=({0: torch.export.Dim("batch")},))
            else:
                torch.onnx.export(network, (x,), str(dynamic), dynamo=False, input_names=["x"],
                                  dynamic_axes={"x": {0: "batch"}})
        rng = np.random.default_rng(0)
        data = folder / f"{name}.npz"
        np.savez(data, x=rng.standard_normal((6, *sample)).astype(np.float32), y=rng.integers(0, 10, 6),
                 x_train=rng.standard_normal((8, *sample)).astype(np.float32), y_train=rng.integers(0, 10, 8))
        files[name] = (fixed, dynamic, data)
    return files


MODELS = ("resnet18", "mobilenet_v2", "transformer")
EXPECTED_MODE = {"resnet18": "symbolic", "mobilenet_v2": "symbolic", "transformer": "vmap"}
COMMON = ("--weight-bits", "2", "--torch-device", "cpu", "--seed", "3")


@pytest.mark.parametrize("name", MODELS)
def test_fixed_batch_file_converts_and_inspect_says_how_it_runs(exported, invoke, name, recwarn):
    fixed, dynamic, _ = exported[name]
    dims = onnx.load(str(fixed)).graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1, "the default exporter bakes batch 1 into the file"
    result = invoke("inspect", fixed, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["batch"] == EXPECTED_MODE[name]
    assert report["check"]["exact"]
    kinds = {layer["op_type"] for layer in report["crossbar_layers"]}
    if name == "transformer":
        # attention in-projections and MLP blocks are MatMul weights, out-projections and heads Gemm
        assert kinds == {"MatMul", "Gemm"} and len(report["crossbar_layers"]) == 10
    else:
        assert "Conv" in kinds and "Gemm" in kinds
    if name == "transformer":  # the cheap model for the checks that do not depend on the network
        assert json.loads(invoke("inspect", dynamic, "--json").output)["batch"] == "dynamic"
        text = invoke("inspect", fixed).output
        assert "batch       vmap: the file fixes batch 1; cimguard runs one sample at a time" in text
        assert "warn" not in text.lower()  # onnx2torch's warnings stay out of the terminal
        # the dynamic export slices its attention heads: onnx2torch's Slice warns at run time unless filtered
        result = invoke("evaluate", "--model", dynamic, "--data", exported[name][2], "--samples", "1", *COMMON)
        assert result.exit_code == 0 and "warn" not in result.output.lower()
        assert not [w for w in recwarn if "onnx2torch" in w.filename], [str(w.message) for w in recwarn]


def _json_run(invoke, tmp_path, tag: str, *args) -> dict:
    out = tmp_path / f"{tag}.json"
    result = invoke(*args, "--json", out)
    assert result.exit_code == 0, result.output
    return json.loads(out.read_text())


@pytest.mark.parametrize("name", MODELS)
def test_evaluate_attack_harden_give_the_numbers_of_a_dynamic_batch_export(exported, invoke, tmp_path, name):
    fixed, dynamic, data = exported[name]
    numbers = {}
    for tag, model in (("fixed", fixed), ("dynamic", dynamic)):
        evaluated = _json_run(invoke, tmp_path, f"{tag}-evaluate", "evaluate", "--model", model, "--data", data,
                              "--label-free", "--samples", "1", *COMMON)
        attacked = _json_run(invoke, tmp_path, f"{tag}-attack", "attack", "--model", model, "--data", data,
                             "--label-free", "--samples", "0", "--thg", "0.03", "--solver", "flwc,pgd",
                             "--iterations", "1", "--solver-param", "pgd.restarts=0", *COMMON)
        hardened_path = tmp_path / f"{tag}-hardened.onnx"
        hardened = _json_run(invoke, tmp_path, f"{tag}-harden", "harden", model, "--data", data, "--trainer", "atrice",
                             "--epochs", "1", "--batch-size", "8", "-o", hardened_path, *COMMON)
        worst = attacked["points"][0]["worst_case"]
        numbers[tag] = {
            "float": evaluated["float_accuracy"], "clean": evaluated["clean_accuracy"],
            "monte_carlo": evaluated["monte_carlo"]["accuracies"],
            "flwc": worst["flwc"]["accuracy"], "pgd": worst["pgd"]["accuracy"],
            "harden": (hardened["clean_accuracy_before"], hardened["clean_accuracy_after"]),
            "loss": hardened["history"][0]["loss"],
        }
        assert hardened_path.is_file()
        if name == "transformer":  # tied weights trained apart: each layer got its own initializer
            stored = {init.name for init in onnx.load(str(hardened_path)).graph.initializer}
            assert len(stored) > len({init.name for init in onnx.load(str(model)).graph.initializer})
    loss_fixed, loss_dynamic = numbers["fixed"].pop("loss"), numbers["dynamic"].pop("loss")
    assert numbers["fixed"] == numbers["dynamic"]
    assert loss_fixed == pytest.approx(loss_dynamic, rel=1e-4)
