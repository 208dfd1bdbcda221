"""Worst-case solvers (lwc, flwc, pgd), the core's check, Ctrl-C, sensitivity and saved perturbations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cimguard.api import run_solver
from cimguard.errors import CimguardError
from cimguard.factories import build_solver
from cimguard.plugins import registry
from cimguard.sim.evaluate import accuracy, monte_carlo
from cimguard.sim.gradients import linf_ratio, margin_gradient, margin_gradient_with_accuracy
from cimguard.sim.perturbations import load_perturbation, save_perturbation
from cimguard.sim.solve import WorstCase, verified
from cimguard.sim.worst_case import make_problem


@pytest.fixture(scope="module")
def shipped():
    """The default setup: embedded LeNet on digits, gaussian device (thg 0.03), on the CPU."""
    from cimguard.api import build_setup

    return build_setup(None, torch_device="cpu")


@pytest.fixture(scope="module")
def small():
    """The shipped model on the first 96 evaluation samples (fast solver checks)."""
    from cimguard.api import build_setup

    return build_setup(None, torch_device="cpu", max_samples=96)


@pytest.fixture(scope="module")
def shipped_runs(shipped):
    problem = make_problem(shipped.crossbar, shipped.data, 0.03)
    flwc = run_solver("flwc", problem, seed=0)
    pgd = run_solver("pgd", problem, seed=0, options={"iterations": 15, "restarts": 1})
    return problem, flwc, pgd


def test_solvers_are_registered():
    names = registry("solvers").names()
    assert {"lwc", "flwc", "pgd"} <= set(names)


def test_done_when_shipped_model_at_thg_003(shipped, shipped_runs):
    """The paper's finding: worst case collapses accuracy, random chips barely move it."""
    problem, flwc, pgd = shipped_runs
    clean = accuracy(shipped.crossbar, shipped.data)
    assert clean > 0.95
    stats = monte_carlo(shipped.crossbar, shipped.data, samples=30, seed=0, progress=False)
    assert abs(stats.mean - clean) <= 0.02
    assert flwc.accuracy < 0.5
    assert pgd.accuracy < 0.5
    assert pgd.accuracy <= flwc.accuracy
    for run in (flwc, pgd):
        assert linf_ratio(run.worst.perturbation, problem.bounds) <= 1.0 + 1e-6
        assert not run.worst.interrupted


def test_flwc_trace_and_stop_rule(shipped, shipped_runs):
    problem, flwc, _ = shipped_runs
    trace = flwc.worst.trace
    # k = 10 steps of bound/10 reach the box, then one final scoring record.
    assert [record["iteration"] for record in trace] == list(range(10)) + ["final"]
    assert trace[0]["accuracy"] == pytest.approx(accuracy(shipped.crossbar, shipped.data))
    assert trace[0]["distance"] == 0.0
    assert trace[-1]["distance"] == pytest.approx(1.0)
    # The answer is the best chip the trace saw (the first one reaching that accuracy),
    # and the core recomputed the same accuracy.
    best = min(trace, key=lambda record: record["accuracy"])
    assert flwc.accuracy == pytest.approx(best["accuracy"])
    assert flwc.distance == pytest.approx(best["distance"], abs=1e-6)


def test_pgd_first_start_replays_flwc_exactly(shipped_runs):
    _, flwc, pgd = shipped_runs
    flwc_accuracies = [record["accuracy"] for record in flwc.worst.trace]
    first = [record["accuracy"] for record in pgd.worst.trace if record["phase"] == "start 0 (flwc)"]
    assert first == flwc_accuracies
    phases = {record["phase"] for record in pgd.worst.trace}
    assert phases == {"start 0 (flwc)", "start 0 (decay)", "start 1"}


@pytest.mark.parametrize("flwc_budget, pgd_budget", [(100, 8), (3, 2)])
def test_pgd_never_worse_than_flwc(small, flwc_budget, pgd_budget):
    """Whatever the budgets: pgd's first start is F-LWC run to the box, flwc sees a prefix of it."""
    problem = make_problem(small.crossbar, small.data, 0.01)
    flwc = run_solver("flwc", problem, seed=3, options={"k": 5, "iterations": flwc_budget})
    pgd = run_solver("pgd", problem, seed=3, options={"k": 5, "iterations": pgd_budget, "restarts": 1})
    assert pgd.accuracy <= flwc.accuracy


def test_pgd_matches_flwc_without_the_stop_rule(small):
    """With stop_at_bound=false on both (and flwc's budget within pgd's), pgd's first start is flwc's run."""
    problem = make_problem(small.crossbar, small.data, 0.01)
    options = {"k": 4, "iterations": 9, "stop_at_bound": False}
    flwc = run_solver("flwc", problem, seed=1, options=options)
    pgd = run_solver("pgd", problem, seed=1, options={**options, "restarts": 1})
    flwc_accuracies = [record["accuracy"] for record in flwc.worst.trace]
    assert len(flwc_accuracies) == 10  # no stop at the box (reached after 4 steps): all 9 steps + final
    first = [record["accuracy"] for record in pgd.worst.trace if record["phase"] == "start 0 (flwc)"]
    assert first == flwc_accuracies
    assert pgd.accuracy <= flwc.accuracy
    # A shorter flwc run is a prefix too.
    short = run_solver("flwc", problem, seed=1, options={**options, "iterations": 6})
    assert pgd.accuracy <= short.accuracy


def test_lwc_searches_c_and_stays_in_the_box(small):
    problem = make_problem(small.crossbar, small.data, 0.03)
    run = run_solver("lwc", problem, seed=0, options={"iterations": 12, "passes": 2, "c0": 1e-3})
    trace = [record for record in run.worst.trace if record["record"] == "run"]
    assert len(trace) == 6  # 12 passes / 2 per run
    assert len(run.worst.trace) == 6 * 3  # and each pass's projected iterate is scored too
    cs = [record["c"] for record in trace]
    # The paper's search: c x10 until a run reaches the box, then bisect (below: inside, above: reached).
    expected, inside, outside = [1e-3], None, None
    for record in trace[:-1]:
        if record["distance"] >= 1.0:
            outside = record["c"]
        else:
            inside = record["c"]
        # Geometric bisection: c grows by x10, so the midpoint is taken in log c.
        if outside is None:
            expected.append(expected[-1] * 10)
        elif inside is None:
            expected.append(expected[-1] / 10)
        else:
            expected.append((inside * outside) ** 0.5)
    assert cs == pytest.approx(expected)
    assert any(abs(np.log10(c) - round(np.log10(c))) > 0.1 for c in cs)  # the search did bisect
    assert cs[1] == pytest.approx(1e-2)  # the first run, c = 1e-3, stays well inside the box
    assert any(record["distance"] >= 1.0 for record in trace)
    assert linf_ratio(run.worst.perturbation, problem.bounds) <= 1.0 + 1e-6
    assert run.accuracy < accuracy(small.crossbar, small.data)


def test_lwc_run_starts_from_the_given_chip(small):
    """warm_start: a run begins at the best chip so far (u = ΔW / bound), zero-bound layers stay at 0."""
    from cimguard.sim.solve import Tracker

    first = small.crossbar.names[1]
    problem = make_problem(small.crossbar, small.data, 0.03, layers=(first,))
    solver = build_solver("lwc", {"passes": 1, "score_passes": False})
    start = {name: -0.5 * bound for name, bound in problem.bounds.items()}
    tracker = Tracker(problem, solver, None, "test")
    delta, reached, acc = solver._run(problem, small.crossbar.generator(0), tracker, 0.0, 1e-9, 0, start)
    assert acc is None and tracker.passes == 1  # no read-out without score_passes: the one Adam pass
    assert reached == pytest.approx(0.5, abs=1e-4)
    assert all(torch.allclose(delta[n], start[n], atol=1e-6) for n in delta)
    assert all(float(delta[n].abs().max()) == 0.0 for n in delta if n != first)


def test_verified_rejects_out_of_box_answers_and_recomputes_accuracy(small):
    problem = make_problem(small.crossbar, small.data, 0.01)
    outside = {name: 2 * bound for name, bound in problem.bounds.items()}
    with pytest.raises(CimguardError, match="invalid worst case.*exceeds the write-verify bound"):
        verified(problem, WorstCase(outside, 0.0), "bad")
    inside = {name: 0.5 * bound for name, bound in problem.bounds.items()}
    checked = verified(problem, WorstCase(inside, -1.0), "liar")
    assert checked.accuracy == pytest.approx(accuracy(small.crossbar, small.data, inside))
    # Never clipped: the perturbation is returned as given.
    assert all(torch.equal(checked.perturbation[n], inside[n]) for n in inside)


def test_margin_gradient_with_accuracy_matches_the_plain_one(small):
    delta = small.crossbar.zeros()
    grads, total, acc = margin_gradient_with_accuracy(small.crossbar, small.data, delta)
    plain, plain_total = margin_gradient(small.crossbar, small.data, delta)
    assert total == pytest.approx(plain_total)
    assert acc == pytest.approx(accuracy(small.crossbar, small.data))
    assert all(torch.allclose(grads[n], plain[n]) for n in grads)


class _StopAfter:
    def __init__(self, records: int) -> None:
        self.records, self.seen = records, 0

    def __call__(self, record) -> None:
        self.seen += 1
        if self.seen >= self.records:
            raise KeyboardInterrupt


@pytest.mark.parametrize(
    "solver, options",
    [("flwc", {}), ("pgd", {"iterations": 6, "restarts": 1}), ("lwc", {"iterations": 8, "passes": 2, "c0": 0.1})],
)
def test_ctrl_c_returns_best_so_far_marked_interrupted(small, solver, options):
    problem = make_problem(small.crossbar, small.data, 0.03)
    stop = _StopAfter(4 if solver != "lwc" else 2)
    run = run_solver(solver, problem, seed=0, options=options, callbacks=(stop,))
    assert run.worst.interrupted
    assert len(run.worst.trace) == stop.records
    assert run.accuracy == pytest.approx(min(record["accuracy"] for record in run.worst.trace))
    assert linf_ratio(run.worst.perturbation, problem.bounds) <= 1.0 + 1e-6


def test_ctrl_c_before_any_candidate_gives_the_clean_chip(small, monkeypatch):
    import cimguard.sim.gradients as flwc_module  # flwc's sign descent lives in the core (gradients)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(flwc_module, "margin_gradient_with_accuracy", interrupted)
    problem = make_problem(small.crossbar, small.data, 0.03)
    run = run_solver("flwc", problem)
    assert run.worst.interrupted
    assert run.accuracy == pytest.approx(accuracy(small.crossbar, small.data))
    assert linf_ratio(run.worst.perturbation, problem.bounds) == 0.0


def test_layer_confined_problem_leaves_other_layers_untouched(small):
    from cimguard.sim.sensitivity import layer_sensitivity

    first = small.crossbar.names[0]
    problem = make_problem(small.crossbar, small.data, 0.03, layers=(first,))
    run = run_solver("flwc", problem)
    assert all(float(run.worst.perturbation[name].abs().max()) == 0.0 for name in small.crossbar.names if name != first)
    rows = layer_sensitivity(small.crossbar, small.data, 0.03, build_solver("flwc", {"k": 3, "iterations": 3}))
    assert sorted(row.torch_name for row in rows) == sorted(small.crossbar.names)
    # Rows name layers as `inspect` does: the ONNX initializer and its node, not the torch name.
    for row in rows:
        mapped = small.crossbar.layers[row.torch_name].weight
        assert (row.layer, row.node) == (mapped.initializer, mapped.node)
    assert [row.accuracy for row in rows] == sorted(row.accuracy for row in rows)
    clean = accuracy(small.crossbar, small.data)
    assert all(row.drop == pytest.approx(clean - row.accuracy) for row in rows)
    # The two big layers matter far more than the 144-weight first convolution.
    by_name = {row.torch_name: row for row in rows}
    assert by_name[small.crossbar.names[0]].drop < rows[0].drop
    with pytest.raises(CimguardError, match="unknown layer"):
        make_problem(small.crossbar, small.data, 0.03, layers=("nope",))


def test_saved_perturbation_round_trip(small, tmp_path):
    problem = make_problem(small.crossbar, small.data, 0.02)
    run = run_solver("flwc", problem, options={"k": 4})
    path = save_perturbation(tmp_path / "w.npz", run.worst.perturbation, {"thg": 0.02, "accuracy": run.accuracy})
    loaded, meta = load_perturbation(path, small.crossbar)
    assert meta["thg"] == 0.02 and meta["format"] == "cimguard-perturbation-1"
    assert accuracy(small.crossbar, small.data, loaded) == run.accuracy
    with pytest.raises(CimguardError, match="already exists"):
        save_perturbation(path, run.worst.perturbation, {})
    with pytest.raises(CimguardError, match="must end in .npz"):
        save_perturbation(tmp_path / "w.txt", run.worst.perturbation, {})
    other = tmp_path / "other.npz"
    np.savez(other, x=np.zeros(3))
    with pytest.raises(CimguardError, match="not a cimguard perturbation file"):
        load_perturbation(other)


@pytest.mark.parametrize(
    "solver, options, message",
    [
        ("flwc", {"k": 0}, "k must be a finite number > 0, got 0"),
        ("flwc", {"k": float("nan")}, "k must be a finite number > 0, got nan"),
        ("flwc", {"k": float("inf")}, "k must be a finite number > 0, got inf"),
        ("flwc", {"iterations": -1}, "iterations must be >= 0"),
        ("flwc", {"kappa": float("nan")}, "kappa must be a finite number >= 0"),
        ("pgd", {"k": float("inf")}, "k must be a finite number > 0"),
        ("pgd", {"step": float("nan")}, "step must be a finite number > 0"),
        ("pgd", {"restarts": -1}, "restarts and halvings must be >= 0"),
        ("lwc", {"c0": float("inf")}, "c0 must be a finite number > 0"),
        ("lwc", {"lr": float("nan")}, "lr must be a finite number >= 0"),
        ("lwc", {"tol": -1.0}, "tol must be a finite number >= 0"),
        ("lwc", {"passes": 0}, "runs, passes and batch_size must be >= 1"),
    ],
)
def test_solver_settings_are_checked_when_built(solver, options, message):
    """Validation happens in Solver.__init__, so a bad value fails before any search work."""
    with pytest.raises(CimguardError, match=f"^solver '{solver}': {message}"):
        build_solver(solver, options)
    solver_class = registry("solvers").get(solver)
    with pytest.raises(CimguardError, match=message):
        solver_class(solver_class.Config(**options))


def test_unknown_solver_and_bad_options_fail_before_work(small, monkeypatch):
    from cimguard.sim.sensitivity import layer_sensitivity

    problem = make_problem(small.crossbar, small.data, 0.03)
    with pytest.raises(CimguardError, match="unknown solver 'nope'"):
        run_solver("nope", problem)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the solver settings were checked")

    monkeypatch.setattr("cimguard.sim.sweep.monte_carlo", no_work)
    with pytest.raises(CimguardError, match="solver 'pgd': k must be"):
        small.sweep([0.01], {"flwc": {}, "pgd": {"k": float("nan")}}, samples=5)
    monkeypatch.setattr("cimguard.sim.sensitivity.run_checked", no_work)
    with pytest.raises(CimguardError, match="solver 'flwc': k must be"):
        layer_sensitivity(small.crossbar, small.data, 0.03, build_solver("flwc", {"k": -1.0}))


def test_solvers_work_on_an_imported_resnet18_label_free(tmp_path):
    """Any imported network: torchvision's ResNet-18 (random weights), exported to ONNX here."""
    import warnings

    import torchvision

    from cimguard.api import build_setup

    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None).eval()
    onnx_path = tmp_path / "resnet18.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, torch.randn(1, 3, 32, 32), str(onnx_path), dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    data_path = tmp_path / "inputs.npz"
    np.savez(data_path, x=np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32))
    setup = build_setup(onnx_path, data=str(data_path), torch_device="cpu")
    assert setup.data.label_free
    assert len(setup.crossbar.layers) == 21  # 20 convolutions + the classifier
    assert accuracy(setup.crossbar, setup.data) == 1.0  # agreement of the clean chip with itself
    problem = make_problem(setup.crossbar, setup.data, 0.03)
    flwc = run_solver("flwc", problem, options={"k": 1})
    pgd = run_solver("pgd", problem, options={"k": 1, "iterations": 1, "restarts": 0})
    for run in (flwc, pgd):
        assert linf_ratio(run.worst.perturbation, problem.bounds) <= 1.0 + 1e-6
        assert len(run.worst.trace) == 2
    assert pgd.accuracy <= flwc.accuracy < 1.0


def test_run_solver_accepts_a_solver_object(small):
    """A configured Solver object runs exactly as the same solver given by name and options."""
    from cimguard_plugins.solvers.flwc import FLWC, FLWCConfig

    problem = make_problem(small.crossbar, small.data, 0.03)
    by_name = run_solver("flwc", problem, seed=2, options={"iterations": 3})
    solver = FLWC(FLWCConfig(iterations=3))
    by_object = run_solver(solver, problem, seed=2, callbacks=(lambda record: None,))
    # Built directly, it reports under the name its class is registered as.
    assert by_object.solver == by_name.solver == "flwc" and by_object.options == by_name.options
    assert by_object.accuracy == by_name.accuracy
    assert all(torch.equal(by_object.worst.perturbation[k], by_name.worst.perturbation[k]) for k in problem.bounds)
    assert solver.callbacks == [] and solver.progress is False  # the caller's object is left as it was
    with pytest.raises(CimguardError, match="options configure a solver given by name"):
        run_solver(solver, problem, options={"iterations": 5})
