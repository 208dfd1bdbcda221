"""``cimguard harden`` and ``cimguard compare`` end to end: export, refusals, resume, side-by-side table."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cimguard.errors import CimguardError

FAST = ("--epochs", "2", "--batch-size", "128")


pytestmark = pytest.mark.usefixtures("one_thread")


def _nodes(model: onnx.ModelProto):
    return [(n.op_type, n.name, list(n.input), list(n.output), [a.SerializeToString() for a in n.attribute])
            for n in model.graph.node]


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_harden_exports_the_vendor_graph_with_new_weights(invoke, default_model_path, tmp_path):
    output = tmp_path / "robust.onnx"
    original_bytes = default_model_path.read_bytes()
    result = invoke("harden", default_model_path, "--trainer", "atrice", "-o", output, *FAST)
    assert result.exit_code == 0, result.output
    assert "wrote" in result.output and "clean chip accuracy" in result.output
    assert default_model_path.read_bytes() == original_bytes
    original, hardened = onnx.load(default_model_path), onnx.load(output)
    onnx.checker.check_model(hardened)
    assert _nodes(hardened) == _nodes(original)
    assert [i.name for i in hardened.graph.input] == [i.name for i in original.graph.input]
    before, after = _initializers(original), _initializers(hardened)
    assert before.keys() == after.keys()
    from cimguard.onnx.model import load_model

    mapped = {m.initializer for m in load_model(default_model_path).mapped}
    for name in before:
        if name in mapped:
            assert before[name].shape == after[name].shape and not np.array_equal(before[name], after[name]), name
        else:
            assert np.array_equal(before[name], after[name]), name  # biases are frozen


def test_exported_file_matches_the_hardened_torch_model(setup, tmp_path):
    from torch.func import functional_call

    from cimguard.onnx.export import export_onnx
    from cimguard.onnx.runtime import run_onnxruntime
    from cimguard.sim.data import fit_to_model
    from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer

    x, y = setup.dataset.require_training()
    result = ATriceTrainer(ATriceConfig(epochs=1, batch_size=128)).fit(setup.crossbar, fit_to_model(x, setup.imported.input), y)
    path = export_onnx(setup.imported, result.weights, tmp_path / "h.onnx", check_inputs=setup.data.x[:64])
    with torch.no_grad():
        ours = functional_call(setup.imported.module, result.weights, (setup.data.x,), strict=False)
    theirs = run_onnxruntime(onnx.load(path), setup.data.x.numpy())
    np.testing.assert_allclose(theirs, ours.numpy(), rtol=1e-4, atol=1e-4)
    # Re-imported, the file maps to the same chip as the trained weights.
    from cimguard.api import build_setup
    from cimguard.sim.evaluate import accuracy

    again = build_setup(path, "digits", "gaussian", {"thg": 0.03}, torch_device="cpu")
    assert accuracy(again.crossbar, again.data) == accuracy(setup.crossbar.remapped(result.weights), setup.data)


def test_existing_output_is_refused_before_training(invoke, default_model_path, tmp_path):
    output = tmp_path / "robust.onnx"
    output.write_bytes(b"keep me")
    checkpoint = tmp_path / "ck.pt"
    result = invoke("harden", default_model_path, "-o", output, "--checkpoint", checkpoint, *FAST)
    assert result.exit_code == 1
    assert "already exists" in result.output
    assert output.read_bytes() == b"keep me"
    assert not checkpoint.exists()  # nothing was trained


def test_input_file_is_never_the_output(invoke, default_model_path, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(default_model_path.read_bytes())
    result = invoke("harden", model, "-o", model, *FAST)
    assert result.exit_code == 1
    assert "refusing to overwrite the input file" in result.output
    assert model.read_bytes() == default_model_path.read_bytes()


@pytest.mark.parametrize("args, message", [
    (("--trainer", "nope"), "unknown trainer 'nope'"),
    (("--trainer", "noise", "--alpha", "0.5"), "trainer 'noise' has no option alpha"),
    (("--resume",), "--resume needs --checkpoint"),
    (("--trainer", "trice", "--threshold", "nan"), "threshold"),
    (("--trainer", "atrice", "--threshold", "-inf"), "censoring threshold must be a number or +inf"),
    (("--trainer", "atrice", "--alpha", "nan"), "alpha must be a finite number"),
    (("--trainer", "atrice", "--alpha", "inf"), "alpha must be a finite number"),
    (("--trainer", "atrice", "--eta-train", "nan"), "eta_train"),
    (("--trainer", "trice", "--sigma", "nan"), "sigma"),
    (("--checkpoint", "missing.pt", "--resume"), "cannot resume: checkpoint"),
    (("--checkpoint", "no/such/folder/ck.pt"), "checkpoint folder"),
    (("--json", "no/such/folder/r.json"), "output folder"),
])
def test_bad_harden_options(invoke, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("harden", "-o", tmp_path / "out.onnx", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    assert list(tmp_path.iterdir()) == []


def test_positive_infinite_threshold_is_plain_gaussian():
    from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer

    assert ATriceTrainer(ATriceConfig(threshold=float("inf"))).config.threshold == float("inf")


@pytest.mark.parametrize("outputs, message", [
    ({"-o": "out.txt"}, "-o file out.txt must end in .onnx"),
    ({"-o": "out.onnx", "--json": "out.onnx"}, "-o and --json name the same file"),
    ({"-o": "out.onnx", "--checkpoint": "out.onnx"}, "-o and --checkpoint name the same file"),
])
def test_output_paths_are_checked_before_training(invoke, tmp_path, monkeypatch, outputs, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("harden", *[item for pair in outputs.items() for item in pair])
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_existing_checkpoint_without_resume_is_refused(invoke, tmp_path):
    checkpoint = tmp_path / "ck.pt"
    checkpoint.write_bytes(b"x")
    result = invoke("harden", "-o", tmp_path / "out.onnx", "--checkpoint", checkpoint)
    assert result.exit_code == 1 and "pass --resume" in result.output
    assert checkpoint.read_bytes() == b"x"


def test_resumed_checkpoint_is_an_input_not_an_output(invoke, tmp_path):
    # With --resume the checkpoint must exist, and no output may be written over it.
    checkpoint = tmp_path / "ck.onnx"
    checkpoint.write_bytes(b"x")
    result = invoke("harden", "-o", checkpoint, "--checkpoint", checkpoint, "--resume")
    assert result.exit_code == 1 and "refusing to overwrite the input file" in result.output
    result = invoke("harden", "-o", tmp_path / "out.onnx", "--json", checkpoint, "--checkpoint", checkpoint, "--resume")
    assert result.exit_code == 1 and "refusing to overwrite the input file" in result.output
    assert checkpoint.read_bytes() == b"x"
    # Past the output checks, the trainer itself refuses a file that is not a checkpoint.
    result = invoke("harden", "-o", tmp_path / "out.onnx", "--checkpoint", checkpoint, "--resume")
    assert result.exit_code == 1 and "not a cimguard training checkpoint" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.onnx"]


def test_interrupted_harden_resumes_to_the_same_file(invoke, tmp_path, monkeypatch):
    import cimguard.sim.train as train

    args = ("harden", "--trainer", "atrice", "--epochs", "3", "--batch-size", "256", "--seed", "3")
    full = invoke(*args, "-o", tmp_path / "full.onnx")
    assert full.exit_code == 0, full.output

    save = train.Trainer._save

    def save_then_interrupt(self, run, path, fingerprint):
        save(self, run, path, fingerprint)
        if run.epoch == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "ck.pt"
    with monkeypatch.context() as patch:
        patch.setattr(train.Trainer, "_save", save_then_interrupt)
        interrupted = invoke(*args, "-o", tmp_path / "resumed.onnx", "--checkpoint", checkpoint)
    assert interrupted.exit_code == 130
    assert checkpoint.exists() and not (tmp_path / "resumed.onnx").exists()
    resumed = invoke(*args, "-o", tmp_path / "resumed.onnx", "--checkpoint", checkpoint, "--resume")
    assert resumed.exit_code == 0, resumed.output
    assert "resumed after epoch 2" in resumed.output
    a, b = _initializers(onnx.load(tmp_path / "full.onnx")), _initializers(onnx.load(tmp_path / "resumed.onnx"))
    assert all(np.array_equal(a[name], b[name]) for name in a)


# -- compare ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hardened_model(tmp_path_factory, default_model_path):
    from cimguard.api import build_setup
    from cimguard.onnx.export import export_onnx
    from cimguard.sim.data import fit_to_model
    from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer

    torch.set_num_threads(1)
    setup = build_setup(default_model_path, "digits", "gaussian", {"thg": 0.03}, torch_device="cpu")
    x, y = setup.dataset.require_training()
    result = ATriceTrainer(ATriceConfig(epochs=4)).fit(setup.crossbar, fit_to_model(x, setup.imported.input), y)
    return export_onnx(setup.imported, result.weights, tmp_path_factory.mktemp("h") / "hardened.onnx")


def test_compare_table_json_and_plot(invoke, default_model_path, hardened_model, tmp_path):
    report, figure = tmp_path / "c.json", tmp_path / "c.png"
    result = invoke("compare", default_model_path, hardened_model, "--thg", "0.03,0.01", "--solver", "flwc",
                    "--samples", "5", "--json", report, "--plot", figure)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert any("worst flwc" in line for line in lines)
    record = json.loads(report.read_text())
    assert record["metric"] == "accuracy" and record["solvers"] == ["flwc"] and record["thg"] == [0.01, 0.03]
    rows = record["rows"]
    assert [(r["model"].endswith("hardened.onnx"), r["thg"]) for r in rows] == [
        (False, 0.01), (False, 0.03), (True, 0.01), (True, 0.03)]
    assert [sweep["model"] for sweep in record["sweeps"]] == [str(default_model_path), str(hardened_model)]
    assert figure.stat().st_size > 1000
    by = {(r["model"].endswith("hardened.onnx"), r["thg"]): r for r in rows}
    # The hardened model resists the same worst-case search far better.
    assert by[(True, 0.01)]["worst_case"]["flwc"] > by[(False, 0.01)]["worst_case"]["flwc"] + 0.2
    for r in rows:
        # p1 <= mean holds exactly for 100 chips; 1e-12 absorbs the mean's float rounding when all chips agree.
        assert 0 <= r["worst_case"]["flwc"] <= r["monte_carlo_p1"] <= r["monte_carlo_mean"] + 1e-12 <= 1 + 1e-12


def test_compare_reports_what_attack_reports(invoke, default_model_path, tmp_path):
    # compare runs attack's own sweep per model: same device, thg, solver options and seeds, same numbers.
    common = ("--thg", "0.02", "--solver", "flwc,pgd", "--solver-param", "pgd.restarts=1", "--iterations", "2",
              "--samples", "3", "--max-samples", "60", "--seed", "4")
    attacked = invoke("attack", "--model", default_model_path, *common, "--json", tmp_path / "a.json")
    assert attacked.exit_code == 0, attacked.output
    compared = invoke("compare", default_model_path, *common, "--json", tmp_path / "c.json")
    assert compared.exit_code == 0, compared.output
    point = json.loads((tmp_path / "a.json").read_text())["points"][0]
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["clean"] == point["clean"]
    assert row["monte_carlo_mean"] == point["monte_carlo"]["mean"]
    assert row["monte_carlo_p1"] == point["monte_carlo"]["percentiles"]["1"]
    assert row["worst_case"] == {name: run["accuracy"] for name, run in point["worst_case"].items()}
    assert list(row["worst_case"]) == ["flwc", "pgd"]


def test_compare_solver_default_and_zero_samples_match_attack(invoke, default_model_path):
    result = invoke("compare", default_model_path, "--thg", "0.02", "--samples", "0", "--iterations", "2",
                    "--max-samples", "50")
    assert result.exit_code == 0, result.output
    assert "worst apgd" in result.output and "worst flwc" not in result.output  # attack's default solver
    assert "no Monte Carlo" in result.output
    table_row = [line for line in result.output.splitlines() if line.strip().endswith(tuple("0123456789"))][-1]
    assert table_row.split()[3:5] == ["-", "-"]  # MC mean and p1 skipped, as attack --samples 0 does


def test_interrupted_compare_reports_the_models_done(invoke, default_model_path, tmp_path, monkeypatch):
    import cimguard.compare as compare

    real = compare.attack_sweep

    def interrupted_sweep(*args, **kwargs):
        sweep = real(*args, **kwargs)
        sweep.interrupted = True  # as if Ctrl-C hit at the end of the first model's sweep
        return sweep

    monkeypatch.setattr(compare, "attack_sweep", interrupted_sweep)
    second = tmp_path / "second.onnx"
    second.write_bytes(default_model_path.read_bytes())
    result = invoke("compare", default_model_path, second, "--thg", "0.01", "--samples", "0", "--iterations", "1",
                    "--max-samples", "30", "--json", tmp_path / "c.json")
    assert result.exit_code == 130
    record = json.loads((tmp_path / "c.json").read_text())
    assert record["interrupted"] is True
    assert [row["model"] for row in record["rows"]] == [str(default_model_path)]


def test_compare_label_free_reports_agreement(invoke, default_model_path, tmp_path):
    report = tmp_path / "c.json"
    result = invoke("compare", default_model_path, "--label-free", "--thg", "0.01", "--samples", "2",
                    "--iterations", "1", "--max-samples", "40", "--json", report)
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    assert record["metric"] == "agreement"
    assert record["rows"][0]["clean"] == 1.0  # agreement of the clean chip with itself


def test_comparison_plot_labels_the_metric():
    from cimguard.compare import ModelComparison
    from cimguard.plot import plot_comparison

    rows = [ModelComparison("a.onnx", 0.01, 1.0, 0.99, 0.98, {"flwc": 0.5}),
            ModelComparison("a.onnx", 0.03, 1.0, None, None, {"flwc": 0.2})]
    assert plot_comparison(rows).axes[0].get_ylabel() == "accuracy"
    figure = plot_comparison(rows, metric="agreement")
    assert figure.axes[0].get_ylabel() == "agreement"
    lines = {line.get_label(): list(line.get_xdata()) for line in figure.axes[0].get_lines()}
    assert lines == {"a.onnx: MC 1st pct": [0.01], "a.onnx: worst (flwc)": [0.01, 0.03]}


@pytest.mark.parametrize("args, message", [
    (("--thg", "0.01,abc"), "--thg expects 'device' or comma-separated numbers"),
    (("--thg", "-1"), ">= 0"),
    (("--thg", "-inf"), ">= 0"),
    (("--solver", "flwc,nope"), "unknown solver 'nope'"),
    (("--solver", "flwc", "--solver-param", "nope=1"), "no chosen solver has an option 'nope'"),
    (("--solver-param", "flwc.k=nan"), "solver 'flwc'"),
    (("--plot", "x.txt"), "--plot file x.txt must end in .png, .pdf or .svg"),
    (("--plot", "x.png", "--json", "x.png"), "--plot and --json name the same file"),
    (("--samples", "-1"), "--samples"),
])
def test_bad_compare_options(invoke, default_model_path, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    result = invoke("compare", default_model_path, *args)
    assert result.exit_code != 0
    assert message in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and message in errors[0]
    assert list(tmp_path.iterdir()) == []


def test_compare_refuses_existing_outputs(invoke, default_model_path, tmp_path):
    report = tmp_path / "c.json"
    report.write_text("{}")
    result = invoke("compare", default_model_path, "--json", report)
    assert result.exit_code == 1 and "already exists" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert report.read_text() == "{}"


def test_compare_models_rejects_no_thresholds():
    from cimguard.compare import compare_models

    with pytest.raises(CimguardError, match="thg"):
        compare_models([None], [], ["flwc"])
