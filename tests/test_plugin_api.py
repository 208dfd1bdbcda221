"""The plugin API: one module for plugin authors, used by the built-ins; trainers and solvers configured from text."""

from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

import cimguard.plugin_api as plugin_api
from cimguard import plugins
from cimguard.plugin_api import CimguardError, Run, Trainer, TrainerConfig, hookimpl

ROOT = Path(__file__).resolve().parents[1]
FAST = ("--epochs", "1", "--batch-size", "256")

pytestmark = pytest.mark.usefixtures("one_thread")


def _cimguard_imports(path: Path) -> list[str]:
    """Every module under ``cimguard`` that ``path`` imports (anywhere in the file, not just at the top)."""
    modules = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
    return [m for m in modules if m.split(".")[0] in ("cimguard", "cimguard_plugins")]


def test_builtin_plugins_import_only_the_plugin_api():
    """From cimguard only ``cimguard.plugin_api``, and no built-in leans on another built-in's internals."""
    files = sorted((ROOT / "plugins").rglob("*.py"))
    assert len(files) > 10
    offenders = {str(f.relative_to(ROOT)): mods for f in files
                 if (mods := [m for m in _cimguard_imports(f) if m != "cimguard.plugin_api"])}
    assert offenders == {}
    # The walk does find imports: every built-in with a hook imports the API.
    assert "cimguard.plugin_api" in _cimguard_imports(ROOT / "plugins" / "devices" / "gaussian.py")


def test_plugin_api_exports_what_a_plugin_needs():
    exported = set(plugin_api.__all__)
    assert len(exported) == len(plugin_api.__all__)
    assert {"Device", "DeviceConfig", "Solver", "SolverConfig", "Tracker", "AttackProblem", "WorstCase", "Trainer",
            "TrainerConfig", "Run", "Dataset", "hookimpl", "CimguardError"} <= exported
    assert all(getattr(plugin_api, name) is not None for name in exported)
    # Every hook is documented on the page a plugin author reads.
    hooks = [name for name in dir(plugins.hookspecs) if name.startswith("register_")]
    assert hooks and all(f"``{hook}(" in plugin_api.__doc__ for hook in hooks)


# -- a third-party trainer configured from the command line -------------------------------------


@dataclass(frozen=True)
class ProbeConfig(TrainerConfig):
    loss_scale: float = 1.0
    """Multiplies the training loss."""
    tag: str = "none"
    """A label, to show text fields arrive as text."""


class ProbeTrainer(Trainer):
    """Plain fine-tuning with a scaled loss; records the config every batch saw."""

    Config = ProbeConfig
    seen: list[tuple[float, str]] = []

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        ProbeTrainer.seen.append((self.config.loss_scale, self.config.tag))
        loss, acc = run.cross_entropy(run.chip(), x, y)
        run.step(self.config.loss_scale * loss)
        return float(loss.detach()), acc


class _ProbePlugin:
    @hookimpl
    def register_trainers(self, register):
        register("probe", ProbeTrainer)


@pytest.fixture()
def probe_trainer(monkeypatch):
    plugin = _ProbePlugin()
    plugins.pm.register(plugin, name="probe-plugin")
    monkeypatch.setattr(plugins, "_registries", None)  # restored (without "probe") afterwards
    ProbeTrainer.seen.clear()
    yield
    plugins.pm.unregister(plugin)


def test_third_party_trainer_field_is_set_with_trainer_param(probe_trainer, invoke, tmp_path):
    output, report = tmp_path / "out.onnx", tmp_path / "run.json"
    result = invoke("harden", "--trainer", "probe", "-o", output, "--json", report, "--batch-size", "256",
                    "--trainer-param", "loss_scale=0.25", "--trainer-param", "tag=abc", "--trainer-param", "epochs=1",
                    "--trainer-param", "seed=3")
    assert result.exit_code == 0, result.output
    assert "trainer  probe (1 epochs, seed 3)" in result.output
    assert ProbeTrainer.seen and set(ProbeTrainer.seen) == {(0.25, "abc")}
    config = json.loads(report.read_text())["config"]
    assert (config["loss_scale"], config["tag"], config["epochs"], config["seed"]) == (0.25, "abc", 1, 3)


@pytest.mark.parametrize("args, message", [
    (("--trainer-param", "nope=1"),
     "trainer 'probe' has no option nope (its options: batch_size, epochs, loss_scale, lr, seed, tag)"),
    (("--trainer-param", "loss_scale=big"), "trainer 'probe': option loss_scale expects float, got 'big'"),
    (("--trainer-param", "loss_scale"), "--trainer-param expects FIELD=VALUE, got 'loss_scale'"),
    (("--trainer-param", "loss_scale=nan"), "loss_scale"),
    (("--epochs", "2", "--trainer-param", "epochs=3"), "--epochs and --trainer-param epochs=3 both set epochs; give one"),
    (("--seed", "0", "--trainer-param", "seed=3"), "--seed and --trainer-param seed=3 both set seed; give one"),
    (("--sigma", "0.1"), "trainer 'probe' has no option sigma"),
])
def test_bad_trainer_params_are_one_line_refusals(probe_trainer, invoke, tmp_path, args, message):
    result = invoke("harden", "--trainer", "probe", "-o", tmp_path / "out.onnx", *args)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("Error: ")
    assert ProbeTrainer.seen == [] and list(tmp_path.iterdir()) == []


def test_shorthands_and_trainer_param_build_the_same_trainer(monkeypatch, invoke, tmp_path):
    """``--alpha 0.5`` and ``--trainer-param alpha=0.5`` reach the trainer as the same typed value."""
    import cimguard_plugins.trainers.atrice as atrice

    configs = []

    def capture(self, *args, **kwargs):
        configs.append(self.config)
        raise CimguardError("stopped before training")

    monkeypatch.setattr(atrice.ATriceTrainer, "fit", capture)
    for args in (("--alpha", "0.5", "--threshold", "inf", "--epochs", "3"),
                 ("--trainer-param", "alpha=0.5", "--trainer-param", "threshold=inf", "--trainer-param", "epochs=3")):
        result = invoke("harden", "--trainer", "atrice", "-o", tmp_path / "out.onnx", "--max-samples", "8", *args)
        assert result.exit_code == 1 and "Error: stopped before training" in result.output
    assert len(configs) == 2 and configs[0] == configs[1]
    assert (configs[0].alpha, configs[0].threshold, configs[0].epochs) == (0.5, float("inf"), 3)


def test_vanilla_trainer_is_registered_and_runs_from_the_cli(invoke, tmp_path):
    assert plugins.registry("trainers").owners["vanilla"] == "cimguard_plugins.trainers.vanilla"
    result = invoke("harden", "--trainer", "vanilla", "-o", tmp_path / "out.onnx", *FAST)
    assert result.exit_code == 0, result.output
    assert "trainer  vanilla (1 epochs, seed 0)" in result.output and (tmp_path / "out.onnx").is_file()


# -- solvers: unknown fields are refused, never dropped -----------------------------------------


def test_unknown_solver_param_is_refused_naming_the_solver_and_its_fields(invoke, tmp_path):
    result = invoke("attack", "--solver", "flwc", "--solver-param", "flwc.nope=1", "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and line.startswith("Error: --solver-param: no chosen solver has an option 'nope'")
    assert "options of flwc: " in line and "iterations" in line and "stop_at_bound" in line
    assert list(tmp_path.iterdir()) == []


def test_solver_options_from_python_refuse_unknown_fields():
    from cimguard.factories import build_solver

    with pytest.raises(CimguardError, match=r"^solver 'pgd' has no option nope \(its options: .*restarts"):
        build_solver("pgd", {"iterations": 3, "nope": 1})
    with pytest.raises(CimguardError, match=r"^solver 'flwc' has no option nope"):
        build_solver("flwc", {"nope": "1"})
    assert build_solver("flwc", {"k": "20"}).config.k == 20.0
    assert build_solver("flwc", {"iterations": "7"}).config.iterations == 7
