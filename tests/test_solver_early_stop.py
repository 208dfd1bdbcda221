"""Solvers stop when there is nothing left to find, and the trace says why."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimguard.api import build_setup, run_solver
from cimguard.sim.worst_case import make_problem


def _stops(trace) -> list[str]:
    return [record["stopped"] for record in trace if "stopped" in record]


@pytest.fixture(scope="module")
def lenet():
    return build_setup(None, "digits", "gaussian", {"thg": 0.3}, torch_device="cpu", max_samples=60)


@pytest.mark.parametrize("solver, options, thg", [
    ("flwc", {"iterations": 60, "stop_at_bound": False}, 0.3),
    ("pgd", {"iterations": 60, "stop_at_bound": False, "restarts": 3}, 0.3),
])
def test_a_solver_stops_once_accuracy_is_zero(lenet, solver, options, thg):
    """Boxes in which every digit can be misclassified: the search ends within a few passes."""
    problem = make_problem(lenet.crossbar, lenet.data, thg)
    run = run_solver(solver, problem, 0, options)
    assert run.accuracy == 0.0
    passes = [record for record in run.worst.trace if record.get("accuracy") is not None]
    assert len(passes) <= 12, len(passes)  # the budget was 60-100 passes
    reasons = _stops(run.worst.trace)
    assert reasons and "accuracy 0" in reasons[-1]


def test_lwc_says_why_it_stopped(lenet):
    problem = make_problem(lenet.crossbar, lenet.data, 0.01)
    run = run_solver("lwc", problem, 0, {"iterations": 4, "passes": 2})
    assert _stops(run.worst.trace)[-1] in ("used its budget of 4 passes", "accuracy 0 (every margin negative) after run 1")


def test_flwc_uses_its_budget_when_accuracy_stays_above_zero(lenet):
    problem = make_problem(lenet.crossbar, lenet.data, 0.001)
    run = run_solver("flwc", problem, 0, {"iterations": 4, "stop_at_bound": False})
    assert run.accuracy > 0
    assert _stops(run.worst.trace) == ["flwc: used its 4 steps"]


def _dead_relu_model(path):
    """Relu(x W^T + b) with b far below any x W^T: every logit is 0, so the margin gradient is 0."""
    weight = np.linspace(-1, 1, 10 * 64, dtype=np.float32).reshape(10, 64)
    nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["z"], name="fc", transB=1),
             helper.make_node("Relu", ["z"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "dead",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(np.full(10, -1e4, np.float32), "b")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return path


@pytest.mark.parametrize("solver, options", [("flwc", {"iterations": 60, "stop_at_bound": False}),
                                             ("apgd", {"iterations": 60})])
def test_a_solver_stops_when_the_gradient_vanishes(tmp_path, solver, options):
    setup = build_setup(_dead_relu_model(tmp_path / "dead.onnx"), "digits", "gaussian", {"thg": 0.03},
                        torch_device="cpu", label_free=True, max_samples=30)
    problem = make_problem(setup.crossbar, setup.data, 0.03)
    run = run_solver(solver, problem, 0, options)
    assert len(run.worst.trace) == 1 and run.worst.passes == 1
    assert _stops(run.worst.trace) == [f"{solver}: the margin gradient vanished after 1 passes"]
