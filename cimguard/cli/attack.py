"""``cimguard attack``: worst-case search over write-verify thresholds, next to clean and Monte Carlo accuracy."""

from __future__ import annotations

from typing import Any

import click

from cimguard.cli.options import (
    certify_option,
    model_argument,
    seed_option,
    setup_from_options,
    setup_options,
    solver_options,
    sweep_options,
)
from cimguard.errors import CimguardError
from cimguard.factories import check_thg_sweep, parse_param_overrides, parse_thg_list, solvers_from_options
from cimguard.provenance import file_sha256


@click.command(name="attack")
@model_argument
@setup_options
@solver_options()
@sweep_options
@seed_option
@certify_option
@click.option("--plot", "plot_path", type=click.Path(), default=None,
              help="Write accuracy vs thg to a new .png/.pdf/.svg file.")
@click.option("--plot-passes", "passes_path", type=click.Path(), default=None,
              help="Write each solver's any-time curve (worst accuracy so far vs passes) to a new .png/.pdf/.svg.")
@click.option("--save-perturbation", "save_path", type=click.Path(), default=None,
              help="Write the worst ΔW found in the largest box to a new .npz file (replay with --replay).")
@click.option("--sensitivity", is_flag=True,
              help="Per-layer sensitivity: each layer's own worst case (first solver, largest box).")
@click.option("--json", "json_path", type=click.Path(), default=None,
              help="Write the full report to a new JSON file.")
@click.option("--replay", "replay_path", type=click.Path(), default=None,
              help="Re-evaluate a saved perturbation (.npz) instead of searching.")
@click.pass_context
def attack(ctx, model, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
           max_samples, output_name, solver_names, thg_text, iterations, budget, solver_params, samples, seed,
           certify_method, plot_path, passes_path, save_path, sensitivity, json_path, replay_path) -> None:
    """Worst-case accuracy under bounded device variation (one chip: one ΔW for every input).

    For every --thg: the clean chip, Monte Carlo chips (mean and KPP percentiles) and
    the worst chip each --solver finds inside the write-verify box. Ctrl-C stops the
    search and reports the best chip found so far.
    """
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    if replay_path is not None:
        _replay(ctx, replay_path, model, data, device_name, device_params, device_file, weight_bits, label_free,
                verify, torch_device, max_samples, output_name)
        return
    # Every check before any work: thresholds, solvers (built, so their settings are validated), outputs.
    thgs = parse_thg_list(thg_text)
    overrides = parse_param_overrides(device_params)
    check_thg_sweep(thgs, overrides)
    solvers = solvers_from_options(solver_names, iterations, solver_params, budget)
    check_outputs({"--json": json_path, "--plot": plot_path, "--plot-passes": passes_path,
                   "--save-perturbation": save_path},
                  suffixes={"--plot": PLOT_SUFFIXES, "--plot-passes": PLOT_SUFFIXES, "--save-perturbation": (".npz",)},
                  inputs=(model, data, device_file))

    from cimguard.sim.evaluate import float_accuracy
    from cimguard.sim.perturbations import save_perturbation

    setup = setup_from_options(model, data, device_name, overrides, device_file, weight_bits, label_free,
                               verify, torch_device, max_samples, output_name=output_name)
    progress = True  # a bar on a terminal, a line every few seconds in a log (cimguard.progress)
    _print_header(setup, thgs, samples, seed)  # before any work
    sweep = setup.sweep(thgs, solvers, samples=samples, seed=seed, progress=progress, certify=certify_method)
    click.echo(sweep.table())

    rows = None
    if sensitivity and not sweep.interrupted:
        from cimguard.sim.sensitivity import layer_sensitivity

        # The largest box, as for --save-perturbation (the device's own box can be larger than any thg).
        largest = max(sweep.points, key=lambda point: point.size)
        first = next(iter(solvers.values()))
        rows = layer_sensitivity(setup.crossbar, setup.data, largest.thg, first, seed, progress=progress)
        _print_sensitivity(rows, first.name, largest.label, sweep.metric)
        sweep.interrupted = any(row.interrupted for row in rows)

    if plot_path is not None:
        from cimguard.plot import plot_attack_sweep

        plot_attack_sweep(sweep, plot_path, title=f"{setup.model_path.name} on {setup.device_label}")
        click.echo(f"wrote {plot_path}")
    if passes_path is not None:
        from cimguard.plot import plot_anytime

        plot_anytime(sweep, passes_path, title=f"{setup.model_path.name} on {setup.device_label}")
        click.echo(f"wrote {passes_path}")
    worst = sweep.worst_run()
    if save_path is not None and worst is not None:
        save_perturbation(save_path, worst.worst.perturbation, {
            "model": str(setup.model_path), "model_sha256": file_sha256(setup.model_path), "data": data,
            "device": device_name, "device_params": list(device_params), "device_file": device_file,
            "box": "device" if worst.thg is None else "thg", "device_parameters": setup.describe()["device_params"],
            "weight_bits": setup.crossbar.config.weight_bits, "label_free": setup.data.label_free, "max_samples": max_samples,
            "output": output_name,
            "thg": worst.thg, "solver": worst.solver, "seed": seed, "metric": sweep.metric,
            "accuracy": worst.accuracy, "interrupted": worst.worst.interrupted, "options": worst.options,
        })
        at = "in the device's box" if worst.thg is None else f"at thg {worst.thg:g}"
        click.echo(f"wrote {save_path} ({worst.solver} {at}, {sweep.metric} {worst.accuracy:.4f})")
    if json_path is not None:
        from cimguard.provenance import provenance

        record = {
            "provenance": provenance(setup, metric=sweep.metric),
            "setup": setup.describe(), "seed": seed, "samples": samples,
            "thg": ["device" if thg is None else thg for thg in thgs],
            "float_accuracy": float_accuracy(setup.crossbar, setup.data), **sweep.to_record(),
            "sensitivity": rows,
        }
        write_json(json_path, record)
        click.echo(f"wrote {json_path}")
    if sweep.interrupted:
        click.echo("Interrupted: the table holds the best chips found before Ctrl-C.", err=True)
        ctx.exit(130)


def _print_header(setup, thgs: list[float | None], samples: int, seed: int) -> None:
    from cimguard.sim.device import device_box_levels

    click.echo(f"model   {setup.model_path}")
    click.echo(f"check   {setup.conversion_label}")
    click.echo(f"data    {setup.data_label}" + ("  [label-free: agreement with the clean model]"
                                                         if setup.data.label_free else ""))
    click.echo(f"device  {setup.device_label}, {setup.crossbar.num_weights} weights in {len(setup.crossbar.layers)} "
               f"layers, {setup.crossbar.config.weight_bits}-bit weights on {setup.crossbar.slices} devices each")
    monte_carlo = f"Monte Carlo {samples} chips per thg" if samples else "Monte Carlo skipped (--samples 0)"
    click.echo(f"seed    {seed}; {monte_carlo}; worst case: one ΔW shared by all {len(setup.data.labels)} inputs")
    if None in thgs:
        box = device_box_levels(setup.device)
        per_level = ", ".join(f"{b:.4g}" for b in box)
        click.echo(f"box     thg 'device': the device's own worst-case box, {per_level} levels per device at "
                   f"levels 0..{len(box) - 1} (deviation_bound); Monte Carlo at its thg "
                   f"{setup.device.config.thg:g}")
    click.echo("")


def _print_sensitivity(rows, solver: str, thg: str, metric: str) -> None:
    click.echo("")
    click.echo(f"per-layer sensitivity: worst case of each layer alone ({solver}, thg {thg}), most damaging first "
               "(layers by ONNX weight name, as `inspect` shows them)")
    width = max(len(row.layer) for row in rows)
    click.echo(f"{'layer':<{width}}  {'kind':<6}  {'weights':>8}  {metric:>9}  {'drop':>7}  node")
    for row in rows:
        click.echo(f"{row.layer:<{width}}  {row.op_type:<6}  {row.weights:>8}  {row.accuracy:>9.4f}  {row.drop:>7.4f}"
                   f"  {row.node}" + ("  (interrupted)" if row.interrupted else ""))


def _replay(ctx, replay_path, model, data, device_name, device_params, device_file, weight_bits, label_free, verify,
            torch_device, max_samples, output_name=None) -> None:
    """Rebuild the saved setup (options given on the command line win) and re-score the saved ΔW."""
    from click.core import ParameterSource

    from cimguard.sim.evaluate import accuracy
    from cimguard.sim.perturbations import load_perturbation
    from cimguard.sim.solve import WorstCase, verified
    from cimguard.sim.worst_case import make_problem

    _, meta = load_perturbation(replay_path)

    def pick(param: str, given: Any, key: str) -> Any:
        return given if ctx.get_parameter_source(param) != ParameterSource.DEFAULT else meta.get(key, given)

    model = model if model is not None else meta.get("model")  # MODEL or --model: given wins
    setup = setup_from_options(
        model, pick("data", data, "data"), pick("device_name", device_name, "device"),
        parse_param_overrides(pick("device_params", device_params, "device_params")),
        pick("device_file", device_file, "device_file"),
        pick("weight_bits", weight_bits, "weight_bits"), pick("label_free", label_free, "label_free"), verify,
        torch_device, pick("max_samples", max_samples, "max_samples"),
        output_name=pick("output_name", output_name, "output"),
    )
    if meta.get("model_sha256") and file_sha256(setup.model_path) != meta["model_sha256"]:
        raise CimguardError(f"{replay_path} was found on a different model file than {setup.model_path} (hash differs)")
    perturbation, _ = load_perturbation(replay_path, setup.crossbar)
    thg = None if meta.get("thg") is None else float(meta["thg"])
    problem = make_problem(setup.crossbar, setup.data, thg)
    checked = verified(problem, WorstCase(perturbation, float("nan")), f"replay of {replay_path}")
    metric = "agreement" if setup.data.label_free else "accuracy"
    at = "in the device's box" if thg is None else f"at thg {thg:g}"
    click.echo(f"replayed {replay_path}: {meta.get('solver')} worst case {at} on {setup.model_path}")
    saved = float(meta.get("accuracy", float("nan")))
    clean = accuracy(setup.crossbar, setup.data)
    click.echo(f"{metric} now {checked.accuracy:.4f} (saved {saved:.4f}); clean chip {clean:.4f}")


COMMANDS = (attack,)
