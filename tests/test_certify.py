"""The certifier (cimguard.sim.certify): sound against every chip tried, exact where a closed form exists."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.func import functional_call, vmap

import cimguard
from cimguard.api import build_setup
from cimguard.errors import CimguardError
from cimguard.sim.certify import BoundGraph, certify
from cimguard.sim.sweep import crossbar_at
from cimguard.sim.worst_case import make_problem
from tests.onnx_builders import gemm_model
from tests.test_report_schemas import _validator


def _setup(model, example=None, *, label_free=True, max_samples=60, **device):
    loaded = model if example is None else cimguard.load(model, example_input=example)
    return build_setup(loaded, "digits", "gaussian", device or None, torch_device="cpu", label_free=label_free,
                       max_samples=max_samples)


def _random_chips(crossbar, bounds, count: int, generator: torch.Generator):
    """``count`` chips of the box, batched: half on its vertices (random signs), half uniform inside."""
    for start in range(0, count, 500):
        size = min(500, count - start)
        chips = {}
        for name, bound in bounds.items():
            uniform = torch.rand((size, *bound.shape), generator=generator) * 2 - 1
            vertex = torch.where(torch.rand((size, *bound.shape), generator=generator) < 0.5, -1.0, 1.0)
            pick = (torch.arange(size) % 2 == 0).view(-1, *([1] * bound.dim()))
            chips[name] = crossbar.layers[name].nominal + torch.where(pick, vertex, uniform) * bound
        yield chips


def _predictions(crossbar, x, chips):
    module = crossbar.imported.module
    return vmap(lambda weights: functional_call(module, weights, (x,), strict=False).argmax(dim=1))(chips)


def _matmul_model(path, weight: np.ndarray, bias: np.ndarray):
    """``y = x @ W + b`` as ONNX MatMul and Add (a MatMul weight, the bias through an Add)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm"), helper.make_node("Add", ["h", "b"], ["y"])],
        "matmul", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weight.shape[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", weight.shape[1]])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


@pytest.mark.parametrize("kind", ["gemm", "gemm-transposed-alpha", "matmul"])
def test_a_single_linear_layer_certificate_is_the_closed_form(tmp_path, kind):
    rng = np.random.default_rng(0)
    if kind == "matmul":
        bias_values = np.linspace(-0.1, 0.1, 10).astype(np.float32)
        path = _matmul_model(tmp_path / "mm.onnx", rng.normal(size=(64, 10)).astype(np.float32), bias_values)
    elif kind == "gemm":
        path = gemm_model(tmp_path / "fc.onnx", rng.normal(size=(10, 64)).astype(np.float32))
    else:
        path = gemm_model(tmp_path / "fc.onnx", rng.normal(size=(64, 10)).astype(np.float32), trans_b=0, alpha=0.5)
    chip = _setup(str(path))
    layer_name, layer = next(iter(chip.crossbar.layers.items()))
    if kind == "matmul":  # torch holds W as (in, out): the closed form below wants (out, in)
        bias = torch.from_numpy(bias_values).double()
        layer = type("Layer", (), {"nominal": layer.nominal.t()})
    else:
        bias = chip.imported.module.get_submodule(layer_name.rsplit(".", 1)[0]).bias.double()
    for thg in (0.001, 0.01, None):
        bounds = make_problem(chip.crossbar, chip.data, thg).bounds
        x, y = chip.data.x.double(), chip.data.labels
        w, r = layer.nominal.double(), bounds[layer_name].double()
        r = r.t() if kind == "matmul" else r
        # min over |ΔW| <= R of (w_y + Δw_y - w_j - Δw_j)·x + b_y - b_j, for every j != y.
        margins = (w[y][:, None, :] - w[None]) @ x[:, :, None]
        spread = ((r[y][:, None, :] + r[None]) @ x.abs()[:, :, None]).squeeze(2)
        closed = margins.squeeze(2) + bias[y][:, None] - bias[None] - spread
        closed = closed.masked_fill(torch.nn.functional.one_hot(y, 10).bool(), float("inf")).amin(dim=1)
        graph = BoundGraph(chip.imported.module, set(chip.crossbar.layers))
        for method in ("interval", "crown"):
            nominal = chip.crossbar.layers[layer_name].nominal
            bound = graph.margin_lower_bound({layer_name: nominal}, bounds, chip.data.x, y, method)
            torch.testing.assert_close(bound, closed, rtol=0, atol=1e-9)


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(),
                                  nn.Linear(16, 10))

    def forward(self, x):
        return self.body(x)


class _Operators(nn.Module):
    """Conv, BatchNorm (signed scales), Sub, max and average pooling, a residual Add, Concat, LeakyReLU and the
    smooth activations."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4).eval()
        self.norm.running_mean.uniform_(-0.2, 0.2)
        self.norm.running_var.uniform_(0.5, 2.0)
        self.norm.weight.data.uniform_(-1.5, 1.5)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.avg = nn.AvgPool2d(2)
        self.fc = nn.Linear(8 * 4 * 4, 12)
        self.out = nn.Linear(12, 10)

    def forward(self, x):
        h = self.norm(torch.relu(self.conv(x))) - 0.1  # a BatchNorm after the ReLU is not folded into the Conv
        h = h + torch.tanh(self.conv2(h))  # residual
        h = torch.cat([self.pool(h), self.avg(nn.functional.leaky_relu(h, 0.1))], dim=1)
        h = nn.functional.gelu(self.fc(h.flatten(1)))
        return self.out(torch.sigmoid(h) * 6.0)  # Mul by a constant


@pytest.mark.parametrize("net", [_Small, _Operators])
def test_certified_samples_survive_ten_thousand_chips_and_the_solvers(net, one_thread):
    chip = _setup(net(), torch.zeros(1, 1, 8, 8), max_samples=40)
    thg = 0.02 if net is _Small else 0.012
    bounds = make_problem(chip.crossbar, chip.data, thg).bounds
    certificates = {method: certify(chip.crossbar, chip.data, thg, method) for method in ("interval", "crown")}
    proved = certificates["crown"].certified
    assert set(certificates["interval"].certified) <= set(proved)  # crown is intersected with intervals
    assert 0 < len(proved) < len(chip.data.labels)  # the box is neither trivial nor hopeless here
    x, labels = chip.data.x[proved], chip.data.labels[proved]
    for chips in _random_chips(chip.crossbar, bounds, 10_000, torch.Generator().manual_seed(0)):
        assert bool((_predictions(chip.crossbar, x, chips) == labels).all())
    for solver in ("flwc", "pgd"):
        run = chip.worst_case(solver, thg)
        assert certificates["crown"].accuracy <= run.accuracy
        worst = chip.crossbar.perturbed_weights(run.worst.perturbation)
        assert bool((chip.crossbar.logits_for_weights(x, worst).argmax(dim=1) == labels).all())


def test_certified_is_below_every_worst_case_and_the_monte_carlo_minimum_on_lenet(default_model_path):
    chip = _setup(default_model_path, label_free=False, max_samples=16)
    sweep = chip.sweep([0.001, None], ["flwc", "pgd"], samples=20, certify="crown")
    for point in sweep.points:
        crown = point.certified.accuracy
        interval = certify(crossbar_at(chip.crossbar, point.thg) if point.thg is not None else chip.crossbar,
                           chip.data, point.thg, "interval").accuracy
        assert interval <= crown <= min(run.accuracy for run in point.runs.values())
        assert crown <= point.monte_carlo.min
    assert sweep.points[0].certified.accuracy > 0.5  # thg 0.001: most samples are proved


def test_the_device_box_is_the_solvers_box():
    chip = _setup(_Small(), torch.zeros(1, 1, 8, 8), max_samples=30, thg="0.02")
    by_box = certify(chip.crossbar, chip.data, None, "crown")
    same = certify(chip.crossbar, chip.data, 0.02, "crown")
    assert by_box.thg is None and by_box.certified == same.certified  # gaussian: the device box is its thg box
    wider = certify(chip.crossbar, chip.data, 0.08, "crown")
    assert set(wider.certified) <= set(same.certified)


class _Squares(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        return h * h


def test_an_operator_without_a_rule_is_refused_by_name(invoke):
    chip = _setup(_Squares(), torch.zeros(1, 1, 8, 8), max_samples=10)
    with pytest.raises(CimguardError, match=r"^cannot certify: no sound bound rule for operator mul"):
        chip.certify(0.01, "interval")
    with pytest.raises(CimguardError, match="unknown certification method"):
        chip.certify(0.01, "exact")


def test_setup_certify_to_dict_and_table(default_model_path):
    chip = _setup(default_model_path, label_free=False, max_samples=30)
    result = chip.certify(0.0005, "interval")
    record = result.to_dict()
    assert record["method"] == "interval" and record["accuracy"] == len(record["samples"]) / 30
    assert "certified accuracy (interval) at thg 0.0005" in result.table()
    # Every certified sample is classified correctly by the clean chip.
    clean = chip.crossbar.logits(chip.data.x[record["samples"]]).argmax(dim=1)
    assert bool((clean == chip.data.labels[record["samples"]]).all())


def test_attack_and_compare_certify_in_the_table_the_json_and_the_plot(invoke, tmp_path, default_model_path):
    report = tmp_path / "attack.json"
    result = invoke("attack", "--max-samples", "30", "--thg", "0.001,0.01", "--samples", "5", "--iterations", "3",
                    "--certify", "interval", "--json", report, "--plot", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = lines[lines.index("accuracy per write-verify threshold (thg, level units)") + 1]
    assert header.split()[-1] == "certified"
    record = json.loads(report.read_text())
    _validator("attack").validate(record)
    for point in record["points"]:
        assert point["certified"]["method"] == "interval"
        assert point["certified"]["accuracy"] <= min(run["accuracy"] for run in point["worst_case"].values())
    assert (tmp_path / "a.png").stat().st_size > 0
    plain = invoke("attack", "--max-samples", "10", "--thg", "0.01", "--samples", "0", "--iterations", "2")
    assert "certified" not in plain.output
    compared = tmp_path / "compare.json"
    result = invoke("compare", "--certify=interval", "--max-samples", "20", "--thg", "0.001", "--samples", "0",
                    "--iterations", "2", "--json", compared, default_model_path)
    assert result.exit_code == 0, result.output
    assert "certified" in result.output
    record = json.loads(compared.read_text())
    _validator("compare").validate(record)
    assert record["rows"][0]["certified"] == record["sweeps"][0]["points"][0]["certified"]["accuracy"]
    bad = invoke("attack", "--max-samples", "10", "--certify", "exact")
    assert bad.exit_code == 2 and "exact" in bad.output


def test_certified_hardening_raises_what_can_be_proved(default_model_path, one_thread):
    from cimguard_plugins.trainers.certified import CertifiedConfig, CertifiedTrainer

    chip = _setup(default_model_path, label_free=False, max_samples=None, thg="0.01")
    before = chip.certify(0.01, "interval").accuracy
    hardened = chip.harden(CertifiedTrainer(CertifiedConfig(epochs=10, thg=0.012)))
    after = hardened.after.certify(0.01, "interval").accuracy
    assert before == 0.0 and after > 0.4
    assert hardened.clean_accuracy_after > 0.9
    with pytest.raises(CimguardError, match="kappa must be between 0 and 1"):
        CertifiedConfig(kappa=2.0).validate()


def test_the_certify_tables_of_the_docs_follow_from_the_saved_results():
    from benchmarks import make_doc_tables as tables

    saved = json.loads(tables.TABLES_JSON.read_text())
    for name, build in (("certify", tables.certify_table), ("certify_cost", tables.certify_cost_table),
                        ("certify_joint", tables.certify_joint_table), ("certify_resnet", tables.certify_resnet_table),
                        ("certify_hardening", tables.certify_hardening_table)):
        header, rows, settings = build()
        assert saved[name]["markdown"] == tables.markdown(header, rows)
    assert saved["certify_hardening"]["settings"]["seeds"] == [0, 1, 2, 3, 4]
    quoted = dict(tables.quoted_tables((tables.ROOT / "docs" / "certify.md").read_text()))
    assert set(quoted) == {"certify", "certify_cost", "certify_joint", "certify_resnet", "certify_hardening"}


def test_harden_with_the_certified_trainer_on_the_command_line(invoke, tmp_path):
    out = tmp_path / "certified.onnx"
    result = invoke("harden", "--trainer", "certified", "--epochs", "1", "--trainer-param", "thg=0.01",
                    "--trainer-param", "kappa=0.2", "--max-samples", "50", "-o", out)
    assert result.exit_code == 0, result.output
    assert "thg = 0.01" in result.output and out.exists()
    bad = invoke("harden", "--trainer", "certified", "--trainer-param", "method=exact", "-o", tmp_path / "x.onnx")
    assert bad.exit_code == 1 and bad.output.startswith("Error: method must be interval or crown")
    assert not (tmp_path / "x.onnx").exists()


def test_an_optional_field_is_typed_from_text():
    from cimguard.options import coerce

    assert coerce("0.01", float | None) == 0.01 and coerce("none", float | None) is None
    with pytest.raises(ValueError):
        coerce("many", float | None)


def test_crown_rows_for_the_unstable_elements_only_match_the_full_pass(one_thread):
    """The per-sample padded spec of the unstable elements gives exactly the full pass's bounds there."""
    from cimguard.sim.certify import _Run

    chip = _setup(_Small(), torch.zeros(1, 1, 8, 8), max_samples=12)
    bounds = make_problem(chip.crossbar, chip.data, 0.02).bounds
    graph = BoundGraph(chip.imported.module, set(chip.crossbar.layers))
    weights = {name: layer.nominal for name, layer in chip.crossbar.layers.items()}
    run = _Run(graph, weights, bounds, chip.data.x.double(), torch.float64, "interval")
    checked = 0
    for node in graph.refined:
        mask = run._unstable(node)
        if mask is None or run._exact(node):
            continue
        assert 0 < int(mask.sum()) < mask.numel()  # some elements stable, some not, varying per sample
        full_low, full_high = run._crown_bounds(node)
        low, high = run._crown_bounds(node, mask)
        assert torch.allclose(low[mask], full_low[mask]) and torch.allclose(high[mask], full_high[mask])
        assert bool((low[~mask] == -float("inf")).all() and (high[~mask] == float("inf")).all())
        checked += 1
    assert checked == 2  # both hidden Linear outputs feed a ReLU
