"""``cimguard attack``: sweeps, table, plot, JSON, saved perturbations and replay, bad input, Ctrl-C."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

SMALL = ("--max-samples", "60", "--torch-device", "cpu")


def _table_rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        cells = line.split()
        if cells and re.fullmatch(r"[0-9.]+", cells[0]) and len(cells) >= 5:
            rows[cells[0]] = cells[1:]
    return rows


def test_sweep_table_plot_json_and_replay(invoke, tmp_path):
    plot, report, saved = tmp_path / "sweep.png", tmp_path / "report.json", tmp_path / "worst.npz"
    result = invoke("attack", *SMALL, "--solver", "flwc", "--solver", "pgd", "--thg", "0.03,0.01",
                    "--samples", "4", "--solver-param", "pgd.iterations=4", "--solver-param", "pgd.restarts=1",
                    "--solver-param", "k=5", "--plot", plot, "--json", report, "--save-perturbation", saved)
    assert result.exit_code == 0, result.output
    assert "worst flwc" in result.output and "worst pgd" in result.output
    rows = _table_rows(result.output)
    assert list(rows) == ["0.01", "0.03"]  # sorted
    for cells in rows.values():
        clean, mc_mean, kpp1, kpp10, flwc, pgd = map(float, cells)
        assert pgd <= flwc < clean
        assert kpp1 <= mc_mean
    assert plot.stat().st_size > 1000
    record = json.loads(report.read_text())
    assert record["metric"] == "accuracy" and record["solvers"] == ["flwc", "pgd"]
    assert [point["thg"] for point in record["points"]] == [0.01, 0.03]
    top = record["points"][1]
    assert top["worst_case"]["flwc"]["options"]["k"] == 5.0
    assert top["worst_case"]["pgd"]["options"]["restarts"] == 1
    assert top["monte_carlo"]["samples"] == 4
    worst = min(top["worst_case"]["flwc"]["accuracy"], top["worst_case"]["pgd"]["accuracy"])
    assert f"accuracy {worst:.4f}" in result.output

    replay = invoke("attack", "--replay", saved, "--torch-device", "cpu")
    assert replay.exit_code == 0, replay.output
    assert f"accuracy now {worst:.4f} (saved {worst:.4f})" in replay.output
    # Nothing is overwritten.
    again = invoke("attack", *SMALL, "--thg", "0.01", "--samples", "1", "--json", report)
    assert again.exit_code == 1 and "already exists" in again.output


def test_solver_options_helper_is_reusable():
    """Other commands (compare) reuse the same --solver/--iterations/--solver-param options and parsing."""
    import click
    from click.testing import CliRunner

    from cimguard.cli.options import solver_options
    from cimguard.errors import CimguardError
    from cimguard.factories import build_solver, solvers_from_options

    @click.command()
    @solver_options(default=("pgd",))
    def probe(solver_names, iterations, budget, solver_params):
        # Built solvers, named as chosen, each with the options given for it.
        solvers = solvers_from_options(solver_names, iterations, solver_params, budget)
        click.echo(" ".join(f"{name}={solver.name}:{solver.config.iterations},{solver.config.stop_at_bound},"
                            f"{solver.config.k:g},{solver.config.budget}" for name, solver in solvers.items()))

    result = CliRunner().invoke(probe, ["--solver", "flwc", "--solver", "pgd,flwc", "--iterations", "7",
                                        "--solver-param", "stop_at_bound=false", "--solver-param", "pgd.k=4",
                                        "--budget", "30"])
    assert result.exit_code == 0, result.output
    flwc_k = build_solver("flwc").config.k  # flwc keeps its own k; pgd.k=4 reaches pgd only
    assert result.output.strip() == f"flwc=flwc:7,False,{flwc_k:g},30 pgd=pgd:7,False,4,30"
    assert CliRunner().invoke(probe, []).output.strip().startswith("pgd=pgd:")
    with pytest.raises(CimguardError, match="solver 'pgd': k must be a finite number > 0, got nan"):
        solvers_from_options(("pgd",), None, ("k=nan",))


def test_label_free_reports_agreement_and_sensitivity(invoke):
    result = invoke("attack", *SMALL, "--label-free", "--thg", "0.03", "--samples", "0", "--iterations", "3",
                    "--sensitivity")
    assert result.exit_code == 0, result.output
    assert "agreement per write-verify threshold" in result.output
    assert "Monte Carlo skipped (--samples 0)" in result.output
    rows = _table_rows(result.output)
    assert float(rows["0.03"][0]) == 1.0  # the clean chip agrees with itself
    assert rows["0.03"][1:4] == ["-", "-", "-"]  # no Monte Carlo columns with --samples 0
    assert float(rows["0.03"][-1]) < 1.0
    assert "per-layer sensitivity" in result.output
    assert result.output.count(".weight") == 4


@pytest.mark.parametrize(
    "args, message",
    [
        (("--thg", "abc"), "--thg expects 'device' or comma-separated numbers"),
        (("--thg", "-0.1"), "must be finite and >= 0"),
        (("--thg", ","), "at least one threshold"),
        (("--solver", "nope"), "unknown solver 'nope'"),
        (("--solver-param", "bogus=1"), "no chosen solver has an option 'bogus'"),
        (("--solver", "flwc", "--solver-param", "flwc.k=abc"), "option k expects float"),
        (("--solver-param", "pgd.k=3"), "names solver 'pgd', which is not in --solver"),
        (("--solver-param", "k"), "expects [SOLVER.]FIELD=VALUE"),
        (("--solver", "flwc", "--solver-param", "flwc.k=nan"), "solver 'flwc': k must be a finite number > 0, got nan"),
        (("--solver", "flwc", "--solver-param", "k=inf"), "solver 'flwc': k must be a finite number > 0, got inf"),
        (("--solver-param", "k=inf"), "no chosen solver has an option 'k'"),  # the default apgd has no options
        (("--solver", "flwc,pgd", "--solver-param", "pgd.step=-1"), "solver 'pgd': step must be a finite number > 0"),
        (("--solver", "lwc", "--solver-param", "c0=nan"), "solver 'lwc': c0 must be a finite number > 0"),
        (("--solver-param", "kappa=-1"), "solver 'apgd': kappa must be a finite number >= 0"),
        (("--solver", "lwc", "--budget", "1"), "solver 'lwc': budget must be 0 (no cap) or >= 2"),
        (("--solver-param", "iterations=1.5"), "option iterations expects int"),
        (("--plot", "out.txt"), "--plot file out.txt must end in .png, .pdf or .svg"),
        (("--save-perturbation", "out.txt"), "--save-perturbation file out.txt must end in .npz"),
        (("--replay", "missing.npz"), "not found"),
        (("--json", "out.npz", "--save-perturbation", "out.npz"),
         "--json and --save-perturbation name the same file; give each its own path"),
    ],
)
def test_bad_input_is_one_line(invoke, tmp_path, monkeypatch, args, message):
    import cimguard.cli.attack
    import cimguard.sim.sweep

    def no_work(*args, **kwargs):
        raise AssertionError("bad input must be refused before any setup or Monte Carlo work")

    # Every check runs before the model is even loaded.
    monkeypatch.setattr(cimguard.cli.attack, "setup_from_options", no_work)
    monkeypatch.setattr(cimguard.sim.sweep, "monte_carlo", no_work)
    monkeypatch.chdir(tmp_path)
    result = invoke("attack", *SMALL, *args)
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_replay_refuses_another_model(invoke, tmp_path):
    from cimguard.sim.perturbations import save_perturbation

    saved = tmp_path / "w.npz"
    save_perturbation(saved, {"layer": __import__("torch").zeros(2)}, {"model_sha256": "0" * 64, "thg": 0.03})
    result = invoke("attack", "--replay", saved, *SMALL)
    assert result.exit_code == 1 and "different model file" in result.output


def test_ctrl_c_stops_cleanly_and_keeps_the_best_chip(invoke, tmp_path, monkeypatch):
    import cimguard.sim.gradients as flwc_module  # flwc's sign descent lives in the core (gradients)

    real = flwc_module.margin_gradient_with_accuracy
    calls = {"n": 0}

    def interrupt_on_fourth(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(flwc_module, "margin_gradient_with_accuracy", interrupt_on_fourth)
    saved = tmp_path / "best.npz"
    result = invoke("attack", *SMALL, "--solver", "flwc", "--thg", "0.03,0.05", "--samples", "2",
                    "--save-perturbation", saved)
    assert result.exit_code == 130
    rows = _table_rows(result.output)
    assert rows["0.03"][-1].endswith("*")
    assert "0.05" not in rows  # the sweep stopped at the interrupted threshold
    assert "Interrupted" in result.output
    stored = np.load(saved)
    assert json.loads(str(stored["metadata_json"]))["interrupted"] is True
