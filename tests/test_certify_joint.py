"""The joint certificate (cimguard.sim.joint) and the bounds linear in the chip it rests on."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from cimguard.sim import joint
from cimguard.sim.certify import BoundGraph, _Run, certify
from cimguard.sim.joint import JointRows, conflicts, solve
from cimguard.sim.worst_case import make_problem
from tests.test_certify import _Operators, _random_chips, _setup, _Small
from tests.test_report_schemas import _validator


def _linear_bounds(chip, thg, samples):
    """``(c, G, spec)`` of every (sample, class) row of ``samples`` and the float64 weights and radii."""
    crossbar = chip.crossbar
    radii = {k: b.double() for k, b in make_problem(crossbar, chip.data, thg).bounds.items()}
    weights = {k: layer.nominal.double() for k, layer in crossbar.layers.items()}
    x, y = chip.data.x[samples].double(), chip.data.labels[samples]
    run = _Run(BoundGraph(crossbar.imported.module, set(crossbar.layers)), weights, radii, x, torch.float64,
               "crown", refine=True, share=True)
    classes = run.lower[run.graph.output].shape[1]
    spec = F.one_hot(y, classes).double()[:, None, :] - torch.eye(classes, dtype=torch.float64)[None]
    with torch.no_grad():
        constant, gradients = run.linear_in_weights(run.graph.output, spec)
    return constant, gradients, spec, weights, radii, x


@pytest.mark.parametrize("net, thg", [(_Small, 0.02), (_Operators, 0.012), ("lenet", 0.002)])
def test_the_bound_linear_in_the_chip_holds_on_every_chip_tried(net, thg, default_model_path, one_thread):
    chip = _setup(default_model_path, label_free=False, max_samples=40) if net == "lenet" else \
        _setup(net(), torch.zeros(1, 1, 8, 8), max_samples=40)
    samples = torch.arange(len(chip.data.labels))
    constant, gradients, spec, weights, radii, x = _linear_bounds(chip, thg, samples)
    assert set(gradients) == set(weights)  # every mapped layer keeps its term
    module = copy.deepcopy(chip.imported.module).double()
    (chips,) = _random_chips(chip.crossbar, {k: r.float() for k, r in radii.items()}, 500,
                             torch.Generator().manual_seed(0))
    worst = chip.worst_case("pgd", thg).worst.perturbation
    deltas = [{k: (chips[k][i].double() - weights[k]) for k in weights} for i in range(0, 500, 5)]
    deltas.append({k: worst[k].double() for k in weights})
    deltas.append({k: radii[k] * -torch.sign(gradients[k].sum(dim=(0, 1))) for k in weights})  # against the bound
    off_diagonal = spec.abs().sum(dim=2) > 0
    slack = []
    for delta in deltas:
        with torch.no_grad():
            logits = functional_call(module, {k: weights[k] + delta[k] for k in weights}, (x,), strict=False)
        actual = torch.einsum("nsc,nc->ns", spec, logits)
        linear = constant + sum((gradients[k] * delta[k]).flatten(2).sum(dim=2) for k in weights)
        slack.append((actual - linear)[off_diagonal].min())
    assert float(min(slack)) >= -1e-9
    # Not vacuous: the bound's minimum over the box proves most of these samples (crown proves about as many).
    lowest = constant - sum((gradients[k].abs() * radii[k]).flatten(2).sum(dim=2) for k in weights)
    proved = lowest.masked_fill(~off_diagonal, float("inf")).amin(dim=1) > 0
    crown = certify(chip.crossbar, chip.data, thg, "crown")
    assert abs(int(proved.sum()) - len(crown.certified)) <= 0.15 * len(samples) and int(proved.sum()) > 0


@pytest.mark.parametrize("kind", ["gemm", "matmul"])
def test_on_one_linear_layer_the_linear_bound_is_the_margin_itself(tmp_path, kind):
    from tests.onnx_builders import gemm_model
    from tests.test_certify import _matmul_model

    rng = np.random.default_rng(0)
    bias_values = np.linspace(-0.1, 0.1, 10).astype(np.float32)
    path = gemm_model(tmp_path / "fc.onnx", rng.normal(size=(10, 64)).astype(np.float32)) if kind == "gemm" else \
        _matmul_model(tmp_path / "mm.onnx", rng.normal(size=(64, 10)).astype(np.float32), bias_values)
    chip = _setup(str(path))
    (name, layer), = chip.crossbar.layers.items()
    constant, gradients, spec, weights, radii, x = _linear_bounds(chip, 0.01, torch.arange(20))
    if kind == "gemm":  # torch's Linear: W is (out, in)
        bias = chip.imported.module.get_submodule(name.rsplit(".", 1)[0]).bias.double()
        logits, gradient = x @ weights[name].t() + bias, spec[:, :, :, None] * x[:, None, None, :]
    else:  # x @ W: W is (in, out)
        logits = x @ weights[name] + torch.from_numpy(bias_values).double()
        gradient = x[:, None, :, None] * spec[:, :, None, :]
    # z_y - z_j = (w_y - w_j)·x + b_y - b_j + (Δw_y - Δw_j)·x: the constant is the nominal margin and the
    # coefficient of ΔW the outer product of the row and x, with nothing left over.
    torch.testing.assert_close(constant, torch.einsum("nsc,nc->ns", spec, logits))
    torch.testing.assert_close(gradients[name], gradient)


def _rows(constants, gradients, owners):
    return JointRows(np.asarray(constants, dtype=np.float64), np.asarray(gradients, dtype=np.float64),
                     np.asarray(owners, dtype=np.int64))


def test_the_pair_test_and_the_packing_on_rows_with_a_known_answer():
    # Two samples flipped by opposite chips (u_1 <= -0.5 and u_1 >= 0.5): one chip flips at most one.
    opposite = _rows([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.0]], [0, 1])
    assert conflicts(opposite).tolist() == [[0, 1]]
    assert solve(opposite).flips == 1 and solve(opposite).optimal
    # On different weights nothing stops one chip flipping both.
    apart = _rows([0.5, 0.5], [[1.0, 0.0], [0.0, 1.0]], [0, 1])
    assert len(conflicts(apart)) == 0 and solve(apart).flips == 2
    # Rows of one sample never conflict with each other; the sample counts once.
    one_sample = _rows([0.5, 0.5, 0.5], [[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]], [3, 3, 4])
    assert len(conflicts(one_sample)) == 0 and solve(one_sample).flips == 2
    # Found only with the weight μ = 2: 2(0.2 + u_1) + (0.9 - 2u_1 + 0.5 u_2) >= 0.8 > 0, while the plain sum
    # 1.1 - u_1 + 0.5 u_2 reaches -0.4 (and indeed u_1 <= -0.2 and u_1 >= 0.2 cannot both hold).
    weighted = _rows([0.2, 0.9], [[1.0, 0.0], [-2.0, 0.5]], [0, 1])
    assert conflicts(weighted).tolist() == [[0, 1]]
    monkey_weights = joint.WEIGHTS
    try:
        joint.WEIGHTS = (1.0,)
        assert len(conflicts(weighted)) == 0
    finally:
        joint.WEIGHTS = monkey_weights
    # Five samples pairwise in conflict but for one pair: at most two flip together.
    tight = _rows([0.6] * 4 + [-0.1], [[1, 0], [-1, 0], [0, 1], [0, -1], [0, 0]], range(5))
    assert conflicts(tight).tolist() == [[0, 1], [2, 3]]
    assert solve(tight).flips == 3  # one of rows 0/1, one of 2/3, and row 4 (below zero on every chip)


def test_the_packing_is_skipped_past_its_budget(monkeypatch):
    rows = _rows([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.0]], [0, 1])
    monkeypatch.setattr(joint, "PAIR_BUDGET", 7)  # 2 rows · 2 rows · 2 weights = 8
    assert solve(rows) == joint.JointBound(2, 0, 2, 2, False, True)


def test_joint_bounds_every_chip_tried_and_beats_the_per_sample_bound(one_thread):
    chip = _setup(_Small(), torch.zeros(1, 1, 8, 8), max_samples=60)  # labels: the clean predictions
    thg = 0.01
    crown = certify(chip.crossbar, chip.data, thg, "crown")
    together = certify(chip.crossbar, chip.data, thg, "joint")
    assert set(crown.certified) <= set(together.certified)
    assert together.joint.open_samples > 0 and together.joint.flips < together.joint.open_samples
    assert together.accuracy > crown.accuracy  # the bound counts on one chip, not each sample's own
    assert together.to_dict()["per_sample_accuracy"] == together.per_sample_accuracy
    bounds = make_problem(chip.crossbar, chip.data, thg).bounds
    x, labels = chip.data.x, chip.data.labels
    module = chip.imported.module
    for chips in _random_chips(chip.crossbar, bounds, 10_000, torch.Generator().manual_seed(1)):
        accuracy = torch.vmap(lambda w: (functional_call(module, w, (x,), strict=False).argmax(1) == labels)
                              .double().mean())(chips)
        assert float(accuracy.min()) >= together.accuracy
    (point,) = chip.sweep([thg], ["flwc", "pgd", "apgd"], samples=100, certify="joint").points
    assert point.certified.accuracy == together.accuracy
    assert together.accuracy <= min(run.accuracy for run in point.runs.values())
    assert together.accuracy <= point.monte_carlo.min


def test_joint_on_the_shipped_lenet_meets_the_tightness_target(default_model_path, one_thread):
    chip = _setup(default_model_path, label_free=False, max_samples=None)
    result = chip.certify(0.002, "joint")
    assert len(chip.data.labels) == 360
    assert 0.90 <= result.accuracy <= chip.worst_case("pgd", 0.002).accuracy
    assert result.per_sample_accuracy < 0.86 < result.accuracy  # beyond what any per-sample proof reaches here
    assert "one chip misclassifies at most" in result.table()


def test_too_many_rows_skip_the_pair_test_and_say_so(monkeypatch):
    chip = _setup(_Small(), torch.zeros(1, 1, 8, 8), max_samples=40)
    monkeypatch.setattr(joint, "PAIR_BUDGET", 0)
    result = certify(chip.crossbar, chip.data, 0.01, "joint")
    assert result.joint.skipped and result.joint.flips == result.joint.open_samples > 0
    assert result.accuracy == result.per_sample_accuracy
    assert "too many for the joint bound" in result.table()


def test_attack_certify_joint_in_the_table_and_the_json(invoke, tmp_path):
    report = tmp_path / "attack.json"
    result = invoke("attack", "--thg", "0.002", "--samples", "0", "--iterations", "2", "--solver", "flwc",
                    "--certify", "joint", "--json", report)
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    _validator("attack").validate(record)
    (point,) = record["points"]
    certified = point["certified"]
    assert certified["method"] == "joint" and certified["joint"]["flips"] <= certified["joint"]["open_samples"]
    assert certified["per_sample_accuracy"] < certified["accuracy"] <= point["worst_case"]["flwc"]["accuracy"]
    assert f"{certified['accuracy']:.4f}" in result.output


def test_readme_and_docs_quote_the_joint_figures_the_benchmark_saved():
    from benchmarks import make_doc_tables as tables

    record = json.loads((tables.RESULTS / "certify_joint.json").read_text())
    (row,) = [r for r in record["rows"] if r["thg"] == 0.002]
    readme = " ".join((tables.ROOT / "README.md").read_text().split())
    assert (f"at thg 0.002: certified {row['joint']:.3f} against {row['pgd']:.3f} found, where no per-sample proof "
            f"can pass {row['per_sample_ceiling']:.3f}") in readme
    docs = " ".join((tables.ROOT / "docs" / "certify.md").read_text().split())
    assert f"the ceiling itself ({row['per_sample_ceiling']:.3f}) is below the 0.90" in docs
    assert f"`joint` certifies {row['joint']:.3f} there" in docs
    assert row["joint"] >= 0.90 > row["per_sample_ceiling"] >= row["crown"]


def test_the_hardening_prose_quotes_the_table():
    from benchmarks import make_doc_tables as tables

    header, rows, _ = tables.certify_hardening_table()
    mean = {(row[0], row[2]): {name: cell.split()[0] for name, cell in zip(header, row)} for row in rows}
    atrice, certified = mean[("atrice", "0.005")], mean[("certified", "0.01")]
    docs = " ".join((tables.ROOT / "docs" / "certify.md").read_text().split())
    assert (f"(`crown` {atrice['certified `crown`']}, `joint` {atrice['certified `joint`']}; intervals prove "
            f"nothing); at thg 0.01 little of its {mean[('atrice', '0.01')]['worst `pgd`']} is provable") in docs
    assert (f"at thg 0.01 `joint` proves {certified['certified `joint`']} of the {certified['worst `pgd`']} found, "
            f"intervals (what it trains against) {certified['certified `interval`']}") in docs
    assert atrice["certified `interval`"] == "0.000"
