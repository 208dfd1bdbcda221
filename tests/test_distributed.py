"""torchrun with 2 gloo processes on the CPU: the same reports as one process, rank-0 output, failing ranks.

Each test starts ``python -m torch.distributed.run --standalone --nproc-per-node 2`` (a free
rendezvous port every time) on tests/distributed_entry.py, which is ``python -m cimguard`` plus
two test-only faults, and compares with the same command run in this process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from cimguard import distributed

ENTRY = Path(__file__).with_name("distributed_entry.py")
#: Only guards against a hang; nothing here is timed.
HANG_GUARD_SECONDS = 300

#: The worst case under torchrun may differ from one process's by this much accuracy: each rank sums
#: its share of the float32 margin gradient, so the whole-set sum is added in another order, and a
#: weight whose gradient is within rounding of zero may step the other way (docs: README "Scaling out").
WORST_CASE_TOLERANCE = 0.02

pytestmark = pytest.mark.usefixtures("one_thread")


def torchrun(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = {k: v for k, v in os.environ.items() if k != "CIMGUARD_DEBUG"}
    environment.update(OMP_NUM_THREADS="1", CIMGUARD_DISABLE_PLUGIN_AUTOLOAD="1", **env)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(ENTRY),
               *map(str, args)]
    return subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                          timeout=HANG_GUARD_SECONDS)


def test_evaluate_on_two_processes_reports_exactly_what_one_process_reports(invoke, tmp_path):
    args = ("evaluate", "--samples", "9", "--max-samples", "100", "--seed", "4")
    one = invoke(*args, "--json", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    two = torchrun(tmp_path, *args, "--json", "two.json")
    assert two.returncode == 0, two.stderr
    single, double = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    # Every chip's accuracy (9 chips: 4 on rank 0, 5 on rank 1), mean, std and KPP: number for number.
    # Provenance says how and when each run went (its own command line, clock and process count).
    run_one, run_two = single.pop("provenance"), double.pop("provenance")
    assert double == single
    assert (run_one["processes"], run_two["processes"]) == (1, 2)
    for key in ("versions", "model", "data", "device", "torch_device", "metric"):
        assert run_two[key] == run_one[key], key
    assert len(set(single["monte_carlo"]["accuracies"])) > 1  # the chips really differ
    # Only rank 0 prints: the table once.
    assert two.stdout.count("clean chip accuracy") == 1 and two.stdout.count("wrote two.json") == 1


def test_attack_on_two_processes_follows_the_one_process_search(invoke, tmp_path):
    args = ("attack", "--solver", "flwc,pgd,lwc", "--thg", "0.03", "--samples", "4", "--max-samples", "90",
            "--iterations", "6", "--solver-param", "pgd.restarts=1", "--solver-param", "lwc.passes=2")
    one = invoke(*args, "--json", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    two = torchrun(tmp_path, *args, "--json", "two.json")
    assert two.returncode == 0, two.stderr
    single, double = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    (point_one,), (point_two,) = single["points"], double["points"]
    assert point_two["monte_carlo"] == point_one["monte_carlo"] and point_two["clean"] == point_one["clean"]
    for name in ("flwc", "pgd", "lwc"):
        run_one, run_two = point_one["worst_case"][name], point_two["worst_case"][name]
        assert run_one["accuracy"] < point_one["clean"] - 0.1  # a real attack, not a no-op
        assert abs(run_two["accuracy"] - run_one["accuracy"]) <= WORST_CASE_TOLERANCE, name
        assert len(run_two["trace"]) == len(run_one["trace"]), name


@pytest.mark.parametrize("method, thg", [("interval", "0.0005"), ("joint", "0.002")])
def test_certify_on_two_processes_proves_exactly_the_samples_one_process_proves(invoke, tmp_path, method, thg):
    args = ("attack", "--solver", "flwc", "--thg", thg, "--samples", "0", "--max-samples", "61",
            "--iterations", "2", "--certify", method)
    one = invoke(*args, "--json", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    two = torchrun(tmp_path, *args, "--json", "two.json")
    assert two.returncode == 0, two.stderr
    (point_one,) = json.loads((tmp_path / "one.json").read_text())["points"]
    (point_two,) = json.loads((tmp_path / "two.json").read_text())["points"]
    proved = point_one["certified"]["samples"]
    assert point_two["certified"]["samples"] == proved and 30 < len(proved) < 61  # both ranks' shares, in order
    assert point_two["certified"]["accuracy"] == point_one["certified"]["accuracy"]
    # joint: both ranks' rows meet in one set packing, the same as one process's.
    assert point_two["certified"].get("joint") == point_one["certified"].get("joint")
    if method == "joint":
        assert point_one["certified"]["joint"]["open_samples"] > 0


def test_harden_on_two_processes_resumes_from_its_checkpoint_with_any_number_of_processes(invoke, tmp_path):
    args = ("harden", "--trainer", "atrice", "--epochs", "2", "--batch-size", "256", "--seed", "3",
            "--max-samples", "60")
    full = invoke(*args, "-o", tmp_path / "full.onnx")
    assert full.exit_code == 0, full.output
    # Two processes, stopped after epoch 1 (as a Ctrl-C acted on by every rank together).
    stopped = torchrun(tmp_path, *args, "-o", "two.onnx", "--checkpoint", "run.pt", CIMGUARD_TEST_STOP_AFTER_EPOCH="1")
    assert stopped.returncode != 0
    assert "--resume" in stopped.stderr and not (tmp_path / "two.onnx").exists()
    shutil.copy(tmp_path / "run.pt", tmp_path / "copy.pt")
    resumed = torchrun(tmp_path, *args, "-o", "two.onnx", "--checkpoint", "run.pt", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stdout.count("resumed after epoch 1") == 1
    # The two-process checkpoint also resumes in one process.
    single = invoke(*args, "-o", tmp_path / "one.onnx", "--checkpoint", tmp_path / "copy.pt", "--resume")
    assert single.exit_code == 0, single.output
    reference = _initializers(tmp_path / "full.onnx")
    start = _initializers(Path(distributed.__file__).parents[1] / "models" / "lenet_digits.onnx")
    for output in ("two.onnx", "one.onnx"):
        weights = _initializers(tmp_path / output)
        moved = [name for name in reference if not np.array_equal(reference[name], start[name])]
        assert moved  # training changed the weights
        for name, value in reference.items():
            # Data-parallel sums add the batch gradient in another order: float32 rounding, nothing more.
            np.testing.assert_allclose(weights[name], value, rtol=0, atol=1e-5, err_msg=f"{output} {name}")


def test_a_failing_rank_stops_every_rank_with_its_one_line_error(tmp_path):
    result = torchrun(tmp_path, "evaluate", "--samples", "4", "--max-samples", "50", CIMGUARD_TEST_FAIL_RANK="1")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: test fault (rank 1)"]
    assert "Traceback" not in result.stderr.split("Error:")[0]  # no worker traceback before the line


def test_ctrl_c_on_one_rank_stops_every_rank_at_the_same_step_and_keeps_the_best_chip(tmp_path):
    # Rank 1 alone gets SIGINT before its 4th collective: clean accuracy, then flwc's gradient passes 1, 2, 3.
    result = torchrun(tmp_path, "attack", "--solver", "flwc", "--thg", "0.03", "--samples", "0", "--max-samples",
                      "60", "--json", "stopped.json", CIMGUARD_TEST_SIGINT="1:4")
    assert result.returncode != 0
    run = json.loads((tmp_path / "stopped.json").read_text())["points"][0]["worst_case"]["flwc"]
    # Passes 1 and 2 were scored, pass 3 was stopped on both ranks; the answer is the best scored chip.
    assert run["interrupted"] and [record["iteration"] for record in run["trace"]] == [0, 1]
    assert run["accuracy"] == min(record["accuracy"] for record in run["trace"])
    assert result.stdout.count("* interrupted") == 1 and "Interrupted" in result.stderr


def test_without_torchrun_every_helper_is_the_one_process_identity():
    assert not distributed.active() and distributed.is_main() and distributed.world_size() == 1
    assert distributed.chip_range(5) == range(5) and distributed.local_slice(7) == slice(0, 7)
    assert distributed.sum_floats(1.5, 2.0) == (1.5, 2.0)
    assert distributed.gather_chips([0.5, 0.25], range(2), 2) == [0.5, 0.25]
    assert distributed.from_main(lambda: "state") == "state"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(path).graph.initializer}


def test_no_rank_is_left_without_a_sample(monkeypatch):
    from types import SimpleNamespace

    from cimguard import distributed
    from cimguard.errors import CimguardError

    assert distributed.mini_batches(10, 4) == [(0, 4), (4, 8), (8, 10)]  # one process: plain batches
    monkeypatch.setattr(distributed, "_world", SimpleNamespace(rank=0, size=3))
    # The last batch (2 samples for 3 ranks) joins the one before; a batch of 3 or more is kept.
    assert distributed.mini_batches(10, 4) == [(0, 4), (4, 10)]
    assert distributed.mini_batches(11, 4) == [(0, 4), (4, 8), (8, 11)]
    with pytest.raises(CimguardError, match="2 samples cannot be shared by 3 processes"):
        distributed.mini_batches(2, 4)
