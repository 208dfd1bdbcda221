"""Budgets in passes: every solver's counted passes match the forward/backward work it really does, never
exceed its budget, and give the any-time curve; the default ``apgd`` search (deterministic, inside the box)."""

from __future__ import annotations

import json

import pytest
import torch

from cimguard.api import build_setup, run_solver
from cimguard.errors import CimguardError
from cimguard.factories import build_solver
from cimguard.plugins import registry
from cimguard.sim.crossbar import Crossbar
from cimguard.sim.worst_case import make_problem


@pytest.fixture(scope="module")
def small():
    """The shipped model on the first 96 evaluation samples (fast solver checks)."""
    return build_setup(None, torch_device="cpu", max_samples=96)


class PassCounter:
    """Counts the samples every forward over the crossbar sees, and those a backward goes through."""

    def __init__(self) -> None:
        self.forward = 0
        self.backward = 0

    def wrap(self, original):
        def logits_for_weights(crossbar, x, weights):
            out = original(crossbar, x, weights)
            self.forward += len(x)
            if out.requires_grad:
                def counted(grad, n=len(x)):
                    self.backward += n
                    return grad
                out.register_hook(counted)
            return out
        return logits_for_weights


def counted_run(monkeypatch, solver, problem, seed=0):
    """Run ``solver`` (``solve`` only, not the core's check) counting whole-set forwards and backwards."""
    counter = PassCounter()
    monkeypatch.setattr(Crossbar, "logits_for_weights", counter.wrap(Crossbar.logits_for_weights))
    worst = solver.solve(problem, problem.crossbar.generator(seed))
    monkeypatch.undo()
    n = len(problem.data.labels)
    assert counter.forward % n == 0 and counter.backward % n == 0  # whole passes, never a part of the set
    return worst, counter.forward // n, counter.backward // n


SOLVER_CASES = [
    ("apgd", {}), ("apgd", {"iterations": 7}), ("flwc", {}), ("flwc", {"stop_at_bound": False, "iterations": 6}),
    ("pgd", {"iterations": 12, "restarts": 1}), ("lwc", {"iterations": 6, "passes": 2}),
    ("lwc", {"iterations": 6, "passes": 3, "score_passes": False}),
]


@pytest.mark.parametrize("name,options", SOLVER_CASES)
def test_counted_passes_match_the_work_and_the_plan(monkeypatch, small, name, options):
    # thg 0.003: a small box, so no search reaches accuracy 0 and stops early; the plan is exact.
    problem = make_problem(small.crossbar, small.data, 0.003)
    solver = build_solver(name, options)
    worst, forwards, backwards = counted_run(monkeypatch, solver, problem)
    assert worst.passes == forwards  # one pass = one whole-set forward (with or without its backward)
    assert backwards <= forwards
    assert worst.passes == solver.total_passes(problem)
    assert len(worst.curve) == worst.passes and worst.curve[-1] == worst.accuracy
    assert all(b <= a for a, b in zip(worst.curve, worst.curve[1:]) if a is not None)  # best so far: never rises


@pytest.mark.parametrize("name", sorted(registry("solvers").names()))
@pytest.mark.parametrize("budget", [2, 5, 13])
def test_no_solver_exceeds_its_budget(monkeypatch, small, name, budget):
    problem = make_problem(small.crossbar, small.data, 0.01)
    solver = build_solver(name, {"budget": budget})
    worst, forwards, _ = counted_run(monkeypatch, solver, problem)
    assert worst.passes == forwards <= budget
    assert solver.total_passes(problem) <= budget
    assert worst.accuracy < 1.0 and len(worst.curve) == worst.passes
    if worst.accuracy > 0:  # no early stop: every solver spends its plan or the budget, whichever is less
        assert forwards >= solver.total_passes(problem) - 1


def test_lwc_refuses_a_budget_of_one_pass():
    with pytest.raises(CimguardError, match="lwc.*budget must be 0 .* or >= 2"):
        build_solver("lwc", {"budget": 1})


def test_apgd_is_deterministic_for_a_seed(small):
    problem = make_problem(small.crossbar, small.data, 0.01)
    first = run_solver("apgd", problem, seed=0, budget=10)
    again = run_solver("apgd", problem, seed=0, budget=10)
    other_seed = run_solver("apgd", problem, seed=7, budget=10)
    for run in (again, other_seed):  # no randomness at all: the same chip for every seed
        assert run.accuracy == first.accuracy and run.worst.curve == first.worst.curve
        for name, value in first.worst.perturbation.items():
            assert torch.equal(value, run.worst.perturbation[name])
    assert first.worst.passes == 10


def test_apgd_in_ten_passes_on_the_shipped_model():
    # The mark: a plain 10-pass projected sign search finds 0.203 at thg 0.01 on the whole split;
    # F-LWC needs 11 passes for 0.278.
    shipped = build_setup(None, torch_device="cpu")
    problem = make_problem(shipped.crossbar, shipped.data, 0.01)
    apgd = run_solver("apgd", problem, seed=0, budget=10)
    flwc = run_solver("flwc", problem, seed=0)
    assert apgd.worst.passes == 10 < flwc.worst.passes == 11
    assert apgd.accuracy <= 0.203 and apgd.accuracy < flwc.accuracy


def test_apgd_stays_in_the_device_box(small):
    # The device's own per-level box (thg 'device'); run_solver applies the core's check (verified).
    problem = make_problem(small.crossbar, small.data, None)
    run = run_solver("apgd", problem, seed=0, budget=12)
    assert run.thg is None and 0.99 <= run.distance <= 1.0 + 1e-6
    for name, value in run.worst.perturbation.items():
        assert bool((value.abs() <= problem.bounds[name] * (1 + 1e-6)).all())
    # Its steps scale with each weight's own bound: the per-level box is not a uniform one.
    uniform = make_problem(small.crossbar, small.data, problem.thg)
    assert any(not torch.equal(problem.bounds[n], uniform.bounds[n]) for n in problem.bounds)


def test_apgd_stops_early_at_accuracy_zero():
    # A box so large that one chip misclassifies all 60 digits: the search ends there, not at its budget.
    sixty = build_setup(None, torch_device="cpu", max_samples=60)
    problem = make_problem(sixty.crossbar, sixty.data, 0.5)
    run = run_solver("apgd", problem, seed=0, budget=40)
    assert run.accuracy == 0.0 and run.worst.passes < 40
    assert "accuracy 0" in run.worst.trace[-1]["stopped"]


def test_attack_budget_records_passes_and_curve(invoke, tmp_path):
    report, curves = tmp_path / "report.json", tmp_path / "curves.png"
    result = invoke("attack", "--thg", "0.01", "--samples", "0", "--max-samples", "96", "--solver", "apgd,flwc",
                    "--budget", "6", "--json", str(report), "--plot-passes", str(curves), "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    assert curves.read_bytes().startswith(b"\x89PNG") and f"wrote {curves}" in result.output
    runs = json.loads(report.read_text())["points"][0]["worst_case"]
    assert set(runs) == {"apgd", "flwc"}
    for run in runs.values():
        assert run["passes"] <= 6 and len(run["curve"]) == run["passes"] and run["options"]["budget"] == 6
        assert run["curve"][-1] == pytest.approx(run["accuracy"])
    assert "used its budget of 6 passes" in runs["flwc"]["trace"][-1]["stopped"]


def test_attack_budget_must_be_positive_and_plot_passes_a_new_image(invoke, tmp_path):
    result = invoke("attack", "--budget", "0", "--samples", "0")
    assert result.exit_code == 2 and "--budget" in result.output
    existing = tmp_path / "taken.png"
    existing.write_bytes(b"mine")
    for path, message in ((existing, "exists"), (tmp_path / "curves.txt", "must end in .png, .pdf or .svg")):
        result = invoke("attack", "--samples", "0", "--plot-passes", str(path))
        assert result.exit_code == 1 and result.output.startswith("Error: ") and message in result.output
    assert existing.read_bytes() == b"mine"


def test_apgd_steps_back_from_a_flat_iterate_instead_of_stopping():
    # In FeFET's own box a full step from the first corner silences the network (every margin flat,
    # gradient 0) at pass 12: that is a failed step, not the end of the search (it used to stop there at 0.106).
    fefet = build_setup(None, "digits", "fefet", {}, torch_device="cpu")
    problem = make_problem(fefet.crossbar, fefet.data, None)
    run = run_solver("apgd", problem, seed=0, budget=100)
    flat = [e for e in run.worst.trace if e.get("margin") is not None and e["margin"] < 0.05 and e["accuracy"] > 0]
    assert flat and flat[0]["passes"] < run.worst.passes  # it went on after the flat iterate
    assert "vanished" not in run.worst.trace[-1]["stopped"]
    assert run.accuracy < min(e["accuracy"] for e in flat)


def test_api_budget_caps_every_solver_and_leaves_the_given_solver_alone(small):
    pgd = build_solver("pgd")
    sweep = small.sweep(0.01, {"apgd": None, "pgd": pgd}, samples=0, budget=5)
    runs = sweep.points[0].runs
    assert all(run.worst.passes <= 5 and run.options["budget"] == 5 for run in runs.values())
    assert pgd.config.budget == 0  # with_budget copies: the caller's solver keeps its config
    one = small.worst_case("pgd", 0.01, budget=3, iterations=4)
    assert one.worst.passes == 3 and one.options["iterations"] == 4
    with pytest.raises(CimguardError, match="solver 'lwc': budget must be 0 .* or >= 2"):
        small.worst_case("lwc", 0.01, budget=1)


def test_compare_budget(invoke, default_model_path, tmp_path):
    report = tmp_path / "cmp.json"
    result = invoke("compare", default_model_path, "--thg", "0.01", "--samples", "0", "--budget", "4",
                    "--max-samples", "50", "--json", str(report))
    assert result.exit_code == 0, result.output
    assert "worst apgd" in result.output
    record = json.loads(report.read_text())
    runs = [run for sweep in record["sweeps"] for point in sweep["points"] for run in point["worst_case"].values()]
    assert runs and all(run["passes"] == 4 and len(run["curve"]) == 4 for run in runs)
