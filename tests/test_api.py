"""The Python API (cimguard.api): README's notebook example runs, and the API gives the commands' numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import cimguard
from cimguard.api import build_setup
from cimguard.errors import CimguardError
from cimguard.factories import build_trainer
from cimguard.report import to_jsonable

ROOT = Path(__file__).resolve().parents[1]
SMALL = ("--max-samples", "120")


def _readme_python_example() -> str:
    section = (ROOT / "README.md").read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "README's Python API section shows one example"
    return blocks[0]


def test_readme_notebook_example_runs(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the example writes lenet_robust.onnx
    namespace: dict = {}
    exec(compile(_readme_python_example(), "README.md (Python API)", "exec"), namespace)
    printed = capsys.readouterr().out
    # What the example promises: the evaluate table, a worst case, a thg sweep and a row per value of t.
    assert "Monte Carlo mean (20 chips, seed 0)" in printed
    assert "accuracy per write-verify threshold (thg, level units)" in printed
    assert [row["t"] for row in namespace["rows"]] == [1.0, 3600.0, 86400.0]
    assert 0.0 <= namespace["worst"].accuracy <= namespace["result"].clean_accuracy
    assert namespace["mlp"].mapped and namespace["mean"] == namespace["result"].monte_carlo.mean
    assert "clean chip accuracy" in printed and (tmp_path / "lenet_robust.onnx").is_file()
    assert namespace["after"].points[0].clean == namespace["hardening"].clean_accuracy_after


def _table_lines(output: str, first: str) -> list[str]:
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(first))
    return lines[start:]


def test_evaluate_command_prints_the_api_result(invoke, tmp_path):
    report = tmp_path / "evaluate.json"
    result = invoke("evaluate", *SMALL, "--device", "pcm", "--device-param", "t=86400", "--samples", "6", "--seed", "3",
                    "--json", report)
    assert result.exit_code == 0, result.output
    chip = cimguard.setup(None, cimguard.device("pcm", t=86400), max_samples=120, torch_device="cpu")
    evaluation = chip.evaluate(samples=6, seed=3)
    printed = _table_lines(result.output, "float model accuracy")
    assert printed[: len(evaluation.table().splitlines())] == evaluation.table().splitlines()
    saved = json.loads(report.read_text())
    assert {key: saved[key] for key in evaluation.to_dict()} == to_jsonable(evaluation.to_dict())
    assert chip.device_label == "pcm, t=86400 s"


def test_attack_command_prints_the_api_sweep(invoke):
    result = invoke("attack", *SMALL, "--thg", "0.01,0.03", "--samples", "3", "--iterations", "2", "--solver", "flwc,pgd")
    assert result.exit_code == 0, result.output
    chip = cimguard.setup(max_samples=120, torch_device="cpu")
    sweep = chip.sweep([0.01, 0.03], ["flwc", cimguard.solver("pgd", iterations=2)], samples=3)
    # --iterations reaches every chosen solver; the API sets it per solver.
    expected = chip.sweep([0.01, 0.03], {"flwc": {"iterations": 2}, "pgd": {"iterations": 2}}, samples=3).table()
    assert "\n".join(_table_lines(result.output, "accuracy per write-verify"))[: len(expected)] == expected
    assert [point["thg"] for point in sweep.to_dict()["points"]] == [0.01, 0.03]


def test_worst_case_takes_a_name_with_options_or_a_built_solver(setup):
    by_name = setup.worst_case("flwc", thg=0.03, iterations=2)
    by_object = setup.worst_case(cimguard.solver("flwc", iterations=2), thg=0.03)
    assert by_name.accuracy == by_object.accuracy and by_name.solver == by_object.solver == "flwc"
    record = by_name.to_dict()
    assert record["box"] == "thg" and record["thg"] == 0.03 and record["options"]["iterations"] == 2
    assert "flwc worst case at thg 0.03:" in by_name.table()
    with pytest.raises(CimguardError, match="options configure a solver given by name"):
        setup.worst_case(cimguard.solver("flwc"), iterations=3)
    with pytest.raises(CimguardError, match="solver 'flwc' has no option nope"):
        setup.worst_case("flwc", nope=1)


def test_device_sweep_has_one_row_per_value_equal_to_each_device_alone():
    chip = cimguard.setup(None, "pcm", max_samples=80, torch_device="cpu")
    drift = chip.sweep_device("t", ["1", 86400], {"flwc": {"iterations": 2}}, samples=3, seed=4)
    assert drift.values == [1.0, 86400.0]  # text typed by the config
    assert [line.split()[0] for line in drift.table().splitlines()[2:]] == ["1", "86400"]
    alone = cimguard.setup(None, cimguard.device("pcm", t=86400), max_samples=80, torch_device="cpu")
    direct = alone.sweep(None, {"flwc": {"iterations": 2}}, samples=3, seed=4).points[0]
    last = drift.points[-1]
    assert last.monte_carlo.accuracies == direct.monte_carlo.accuracies
    assert last.runs["flwc"].accuracy == direct.runs["flwc"].accuracy
    rows = drift.to_dict()["points"]
    assert [row["t"] for row in rows] == [1.0, 86400.0] and all(row["box"] == "device" for row in rows)
    json.dumps(to_jsonable(drift.to_dict()))  # plain data all the way down


@pytest.mark.parametrize(("parameter", "values", "message"), [
    ("nope", [1], "unknown device parameter 'nope'"),
    ("t", ["soon"], "device parameter t must be a float, got 'soon'"),
    ("t", [float("nan")], "t"),
    ("t", [], "give at least one value of t"),
])
def test_device_sweep_refuses_bad_values_before_any_work(setup, monkeypatch, parameter, values, message):
    def no_work(*args, **kwargs):
        raise AssertionError("work started before every value was checked")

    monkeypatch.setattr("cimguard.sim.sweep.attack_sweep", no_work)
    pcm = cimguard.setup(None, "pcm", max_samples=40, torch_device="cpu")
    with pytest.raises(CimguardError, match=re.escape(message)):
        pcm.sweep_device(parameter, values + [3600.0] if values else values)


def test_a_torch_module_is_loaded_with_an_example_input():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    model = cimguard.load(net, example_input=torch.zeros(1, 1, 8, 8))
    assert len(model.mapped) == 2 and model.path is None
    chip = cimguard.setup(model, "gaussian", max_samples=50, torch_device="cpu")
    x = chip.data.x[:7]
    with torch.no_grad():
        assert torch.allclose(model.module(x), net(x), atol=1e-5)
    assert chip.describe()["model"] == "<in memory>"
    with pytest.raises(CimguardError, match="needs an example_input"):
        cimguard.load(net)
    with pytest.raises(CimguardError, match="only for a torch.nn.Module"):
        cimguard.load(None, example_input=torch.zeros(1))


def test_a_torch_module_exports_without_onnxscript(monkeypatch):
    # Without onnxscript the default exporter cannot run; the TorchScript exporter takes over.
    real_export = torch.onnx.export

    def no_onnxscript(*args, dynamo=True, **kwargs):
        if dynamo:
            raise ModuleNotFoundError("No module named 'onnxscript'")
        return real_export(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_onnxscript)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    model = cimguard.load(net, example_input=torch.zeros(2, 1, 8, 8))
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model.module(x), net(x), atol=1e-5)


def test_data_may_be_arrays_in_memory():
    digits = cimguard.load_dataset("digits")
    x, y = digits.x_eval[:60].numpy(), digits.y_eval[:60].numpy()
    in_memory = cimguard.setup(None, "gaussian", (x, y), torch_device="cpu")
    by_name = cimguard.setup(None, "gaussian", "digits", max_samples=60, torch_device="cpu")
    assert in_memory.clean_accuracy() == by_name.clean_accuracy()
    label_free = cimguard.setup(None, "gaussian", (x, None), torch_device="cpu")
    assert label_free.metric == "agreement" and label_free.clean_accuracy() == 1.0
    with pytest.raises(CimguardError, match="labels y must be integers"):
        cimguard.setup(None, "gaussian", (x, y.astype(np.float32)), torch_device="cpu")
    with pytest.raises(CimguardError, match="data must be a name"):
        cimguard.setup(None, "gaussian", 42, torch_device="cpu")


def test_bad_names_are_the_commands_one_line_errors():
    with pytest.raises(CimguardError, match=r"^unknown device 'nosuch' \(known: fefet, gaussian, pcm, rram\)$"):
        cimguard.device("nosuch")
    with pytest.raises(CimguardError, match="unknown device parameter 'nope'"):
        cimguard.device("pcm", nope=1)
    with pytest.raises(CimguardError, match="unknown solver 'nosuch'"):
        cimguard.solver("nosuch")


def test_compare_sweeps_gives_each_model_the_attack_numbers():
    comparison = cimguard.compare_sweeps([None, None], [0.03], {"flwc": {"iterations": 2}}, samples=0,
                                         max_samples=60, torch_device="cpu", labels=["a", "b"])
    alone = cimguard.setup(None, "gaussian", max_samples=60, torch_device="cpu")
    attack = alone.sweep(0.03, {"flwc": {"iterations": 2}}, samples=0).points[0]
    for _, sweep in comparison.sweeps:
        point = sweep.points[0]
        assert (point.clean, point.runs["flwc"].accuracy) == (attack.clean, attack.runs["flwc"].accuracy)
    lines = comparison.table().splitlines()
    assert lines[0].split()[:3] == ["model", "thg", "clean"] and [line.split()[0] for line in lines[1:]] == ["a", "b"]
    assert [row["model"] for row in comparison.to_dict()["rows"]] == ["a", "b"]


def test_import_cimguard_is_cheap(tmp_path):
    import subprocess
    import sys

    code = "import sys, cimguard; print('torch' in sys.modules, 'cimguard.plugins' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path).stdout
    assert out.split() == ["False", "False"]
    assert "setup" in dir(cimguard)
    with pytest.raises(AttributeError):
        cimguard.no_such_name  # noqa: B018


def test_harden_command_prints_and_writes_what_the_api_returns(invoke, tmp_path):
    output, report = tmp_path / "robust.onnx", tmp_path / "harden.json"
    result = invoke("harden", "-o", output, "--trainer", "noise", "--epochs", "1", "--max-samples", "100",
                    "--seed", "2", "--json", report)
    assert result.exit_code == 0, result.output
    chip = cimguard.setup(max_samples=100, torch_device="cpu")
    hardening = chip.harden("noise", epochs=1, seed=2)
    assert hardening.table() in result.output
    saved = json.loads(report.read_text())
    assert {key: saved[key] for key in hardening.to_dict()} == to_jsonable(hardening.to_dict())
    # The exported file holds exactly the hardened weights: re-imported, it scores as the hardened chip.
    again = cimguard.setup(str(output), max_samples=100, torch_device="cpu")
    assert again.clean_accuracy() == hardening.clean_accuracy_after
    assert again.evaluate(samples=0).float_accuracy == hardening.after.evaluate(samples=0).float_accuracy
    with pytest.raises(CimguardError, match="options configure a trainer given by name"):
        chip.harden(build_trainer("noise"), epochs=2)


def test_numbers_from_numpy_and_typed_values_are_checked_like_text(setup):
    # A notebook loops over numpy seeds and passes typed values: the same checks as the command line's text.
    stats = setup.monte_carlo(3, np.int64(5))
    assert stats.seed == 5 and type(stats.seed) is int and stats.accuracies == setup.monte_carlo(3, 5).accuracies
    with pytest.raises(CimguardError, match="option restarts expects int, got 4.5"):
        cimguard.solver("pgd", restarts=4.5)
    with pytest.raises(CimguardError, match="device parameter thg must be a float, got True"):
        cimguard.device("gaussian", thg=True)
    with pytest.raises(CimguardError, match=r"Monte Carlo needs a whole number of chips >= 0 \(0 skips"):
        setup.evaluate(samples=-1)
    with pytest.raises(CimguardError, match="Monte Carlo needs a whole number of chips >= 1"):
        setup.monte_carlo(0)
    with pytest.raises(CimguardError, match="thg must be a number of levels or None"):
        setup.sweep("device")
    assert [point.thg for point in setup.sweep(torch.tensor(0.02, dtype=torch.float64), {"flwc": {"iterations": 1}}, samples=0).points] == [0.02]


def test_solver_dicts_name_the_columns_and_refuse_what_is_not_a_solver(setup):
    sweep = setup.sweep(0.03, {"mine": cimguard.solver("flwc", iterations=1)}, samples=0)
    run = sweep.points[0].runs["mine"]
    assert sweep.solvers == ["mine"] and run.solver == "mine" and sweep.worst_run() is run
    with pytest.raises(CimguardError, match="solver 'pgd': give a Solver or a dict of options, got str"):
        setup.sweep(0.03, {"pgd": "restarts=4"})
    with pytest.raises(CimguardError, match="solver 'flwc' given twice"):
        setup.sweep(0.03, ["flwc", cimguard.solver("flwc")])
    with pytest.raises(CimguardError, match="give at least one solver"):
        setup.sweep(0.03, {})


def test_a_thg_sweep_over_thg_in_a_fixed_box_is_refused(setup):
    with pytest.raises(CimguardError, match="a sweep over thg sets the write-verify threshold itself"):
        setup.sweep_device("thg", [0.01, 0.05], thg=0.03)


def test_device_objects_keep_their_labels_and_profiles_keep_theirs(tmp_path, invoke):
    profiles = tmp_path / "devices.toml"
    profiles.write_text('[my_rram]\nbase = "rram"\nsource = "test wafer"\nthg = 0.02\n')
    # A profile's own values are not overrides: the header says the profile's name, as before.
    result = invoke("evaluate", "--samples", "0", "--max-samples", "20", "--device", "my_rram", "--device-file", profiles)
    assert result.exit_code == 0, result.output
    assert "device  my_rram (thg 0.02 levels)," in result.output
    chip = cimguard.setup(None, cimguard.device("my_rram", file=profiles), max_samples=20, torch_device="cpu")
    assert chip.device_name == "my_rram" and chip.device.source == "test wafer"
    tighter = chip.sweep_device("thg", [0.01], {"flwc": {"iterations": 1}}, samples=0)
    assert tighter.values == [0.01] and tighter.points[0].box_levels == [0.01] * len(tighter.points[0].box_levels)
    with pytest.raises(CimguardError, match="device_file selects a profile by name"):
        build_setup(None, "digits", cimguard.device("rram"), device_file=profiles)


def test_in_memory_data_is_checked_and_models_in_memory_have_provenance():
    from cimguard.provenance import provenance

    x = np.zeros((5, 1, 8, 8), np.float32)
    with pytest.raises(CimguardError, match="labels y must be one per sample: x has 5 samples"):
        cimguard.setup(None, "gaussian", (x, np.zeros(4, np.int64)), torch_device="cpu")
    with pytest.raises(CimguardError, match="give one label per model"):
        cimguard.compare_sweeps([None, None], [0.03], "flwc", labels=["a"], torch_device="cpu")
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    chip = cimguard.setup(net, "gaussian", example_input=torch.zeros(1, 1, 8, 8), max_samples=10, torch_device="cpu")
    record = provenance(chip, metric=chip.metric)
    assert record["data"]["samples"] == 10 and record["metric"] == "accuracy"
