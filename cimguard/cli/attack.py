"""``cimguard attack``: worst-case search over write-verify thresholds, next to clean and Monte Carlo accuracy."""

from __future__ import annotations

import math
from typing import Any, Callable

import click

from cimguard.cli_options import MAX_CHIPS, MAX_COUNT, model_option, seed_option, setup_from_options, setup_options
from cimguard.errors import CimguardError
from cimguard.provenance import file_sha256

DEVICE_BOX = "device"
"""``--thg device``: the device's own worst-case box (its ``deviation_bound``, per level)."""

DEFAULT_THG = DEVICE_BOX
"""``attack`` and ``compare`` search the device's own box unless told to sweep thresholds."""


def parse_thg_list(text: str) -> list[float | None]:
    """``"0.01,0.03"`` -> ``[0.01, 0.03]`` (finite, >= 0, sorted, no duplicates); ``device`` -> ``None``.

    ``None`` is the device as configured: its own write-verify threshold for Monte Carlo and
    its own worst-case box (``deviation_bound``, per level where the device says so).
    """
    values: list[float] = []
    device_box = False
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == DEVICE_BOX:
            device_box = True
            continue
        try:
            value = float(part)
        except ValueError:
            raise CimguardError(f"--thg expects 'device' or comma-separated numbers, got {part!r}") from None
        if not math.isfinite(value) or value < 0:
            raise CimguardError(f"--thg values must be finite and >= 0 (level units), got {part}")
        values.append(value)
    if not values and not device_box:
        raise CimguardError("--thg needs 'device' or at least one threshold, e.g. --thg 0.01,0.03")
    return ([None] if device_box else []) + sorted(set(values))


def check_thg_sweep(thgs: list[float | None], device_params: tuple[str, ...]) -> None:
    """A --thg sweep sets the threshold itself: refuse a --device-param thg=... that it would silently replace."""
    from cimguard.device import parse_param_overrides

    sweep = [thg for thg in thgs if thg is not None]
    if sweep and "thg" in parse_param_overrides(device_params):
        raise CimguardError(
            "--device-param thg=... and a --thg sweep both set the write-verify threshold; give one: "
            "--thg device --device-param thg=X searches the device's box at threshold X, --thg X,Y sweeps"
        )


def parse_solvers(values: tuple[str, ...]) -> list[str]:
    """Repeatable and comma-separated ``--solver``; every name must be registered."""
    from cimguard.plugins import registry

    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name and name not in names:
                registry("solvers").get(name)  # one-line error naming the known solvers
                names.append(name)
    if not names:
        raise CimguardError("--solver needs at least one solver name")
    return names


def parse_solver_params(pairs: tuple[str, ...], solvers: list[str], iterations: int | None) -> dict[str, dict[str, Any]]:
    """``--solver-param [SOLVER.]FIELD=VALUE`` typed per solver; a field no chosen solver has is an error."""
    from cimguard.solve import coerce_solver_options, solver_option_names

    raw: dict[str, dict[str, Any]] = {name: {} for name in solvers}
    if iterations is not None:
        for name in solvers:
            raw[name]["iterations"] = iterations
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CimguardError(f"--solver-param expects [SOLVER.]FIELD=VALUE, got {pair!r}")
        target, dot, field_name = key.rpartition(".")
        targets = [target] if dot else solvers
        if dot and target not in solvers:
            raise CimguardError(f"--solver-param {pair!r} names solver {target!r}, which is not in --solver")
        takers = [name for name in targets if field_name in solver_option_names(name)]
        if not takers:
            known = "; ".join(f"{name}: {', '.join(sorted(solver_option_names(name)))}" for name in targets)
            raise CimguardError(f"--solver-param: no chosen solver has an option {field_name!r} (options of {known})")
        for name in takers:
            raw[name][field_name] = value.strip()
    return {name: coerce_solver_options(name, options) for name, options in raw.items()}


def solver_options(default: tuple[str, ...] = ("flwc",)) -> Callable:
    """Decorator: ``--solver``, ``--iterations`` and ``--solver-param``, spelled the same in every command.

    The command receives ``solver_names``, ``iterations`` and ``solver_params``; turn them into
    validated solver names and options with :func:`solvers_from_options`.
    """

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--solver-param", "solver_params", multiple=True, metavar="[SOLVER.]FIELD=VALUE",
            help="Set one solver option, e.g. flwc.k=20 or pgd.restarts=4 (repeatable; without SOLVER. it "
                 "goes to every chosen solver that has FIELD).")(command)
        command = click.option(
            "--iterations", type=click.IntRange(min=1, max=MAX_COUNT), default=None,
            help="Passes over the evaluation data per solver (per start for pgd); default: each solver's own.")(command)
        return click.option(
            "--solver", "solver_names", multiple=True, default=default, show_default=True,
            help="Worst-case solver(s): repeat or comma-separate (see `cimguard plugins`).")(command)

    return decorate


def solvers_from_options(solver_names: tuple[str, ...], iterations: int | None,
                         solver_params: tuple[str, ...]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """The values of :func:`solver_options` as solver names and typed options, every solver built once.

    Building validates each solver's settings, so a bad value (``flwc.k=nan``) is a one-line
    error before any Monte Carlo or search work starts.
    """
    from cimguard.solve import build_solvers

    names = parse_solvers(solver_names)
    options = parse_solver_params(solver_params, names, iterations)
    build_solvers(names, options)
    return names, options


def sweep_options(command: Callable) -> Callable:
    """``--thg`` (the device's own box or a threshold sweep) and ``--samples``, spelled once for attack and compare."""
    command = click.option("--samples", type=click.IntRange(min=0, max=MAX_CHIPS), default=100, show_default=True,
                           help="Monte Carlo chips per thg; 0 skips Monte Carlo (worst case only, the table shows '-')."
                           )(command)
    return click.option("--thg", "thg_text", default=DEFAULT_THG, show_default=True,
                        help="'device': the device's own worst-case box (its deviation_bound, per level), or "
                             "write-verify thresholds to sweep, in level units, comma-separated "
                             "(e.g. 0.005,0.01,0.02,0.03).")(command)


@click.command(name="attack")
@model_option
@setup_options
@solver_options()
@sweep_options
@seed_option
@click.option("--plot", "plot_path", type=click.Path(), default=None,
              help="Write accuracy vs thg to a new .png/.pdf/.svg file.")
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
           max_samples, solver_names, thg_text, iterations, solver_params, samples, seed, plot_path, save_path,
           sensitivity, json_path, replay_path) -> None:
    """Worst-case accuracy under bounded device variation (one chip: one ΔW for every input).

    For every --thg: the clean chip, Monte Carlo chips (mean and KPP percentiles) and
    the worst chip each --solver finds inside the write-verify box. Ctrl-C stops the
    search and reports the best chip found so far.
    """
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    if replay_path is not None:
        _replay(ctx, replay_path, model, data, device_name, device_params, device_file, weight_bits, label_free,
                verify, torch_device, max_samples)
        return
    # Every check before any work: thresholds, solvers (built, so their settings are validated), outputs.
    thgs = parse_thg_list(thg_text)
    check_thg_sweep(thgs, device_params)
    solvers, options = solvers_from_options(solver_names, iterations, solver_params)
    check_outputs({"--json": json_path, "--plot": plot_path, "--save-perturbation": save_path},
                  suffixes={"--plot": PLOT_SUFFIXES, "--save-perturbation": (".npz",)},
                  inputs=(model, data, device_file))

    from cimguard.evaluate import float_accuracy
    from cimguard.solve import attack_sweep, save_perturbation

    setup = setup_from_options(model, data, device_name, device_params, device_file, weight_bits, label_free,
                               verify, torch_device, max_samples)
    progress = True  # a bar on a terminal, a line every few seconds in a log (cimguard.progress)
    _print_header(setup, thgs, samples, seed)  # before any work
    sweep = attack_sweep(setup.crossbar, setup.data, thgs, solvers, samples=samples, seed=seed, options=options,
                         progress=progress)
    _print_table(sweep)

    rows = None
    if sensitivity and not sweep.interrupted:
        from cimguard.sensitivity import layer_sensitivity

        # The largest box, as for --save-perturbation (the device's own box can be larger than any thg).
        largest = max(sweep.points, key=lambda point: point.size)
        rows = layer_sensitivity(setup.crossbar, setup.data, largest.thg, solvers[0], seed, options[solvers[0]],
                                 progress=progress)
        _print_sensitivity(rows, solvers[0], largest.label, sweep.metric)
        sweep.interrupted = any(row.interrupted for row in rows)

    if plot_path is not None:
        from cimguard.plot import plot_attack_sweep

        plot_attack_sweep(sweep, plot_path, title=f"{setup.model_path.name} on {setup.device_label}")
        click.echo(f"wrote {plot_path}")
    worst = sweep.worst_run()
    if save_path is not None and worst is not None:
        save_perturbation(save_path, worst.worst.perturbation, {
            "model": str(setup.model_path), "model_sha256": file_sha256(setup.model_path), "data": data,
            "device": device_name, "device_params": list(device_params), "device_file": device_file,
            "box": "device" if worst.thg is None else "thg", "device_parameters": setup.describe()["device_params"],
            "weight_bits": weight_bits, "label_free": setup.data.label_free, "max_samples": max_samples,
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
    from cimguard.solve import device_box_levels

    click.echo(f"model   {setup.model_path}")
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


def _print_table(sweep) -> None:
    header = ["thg", "clean", "MC mean", "KPP 1%", "KPP 10%"] + [f"worst {name}" for name in sweep.solvers]
    table = []
    for point in sweep.points:
        mc = point.monte_carlo
        row = [point.label, f"{point.clean:.4f}"]
        row += [f"{mc.mean:.4f}", f"{mc.percentiles['1']:.4f}", f"{mc.percentiles['10']:.4f}"] if mc else ["-"] * 3
        for name in sweep.solvers:
            run = point.runs.get(name)
            row.append("-" if run is None else f"{run.accuracy:.4f}" + ("*" if run.worst.interrupted else ""))
        table.append(row)
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header))]
    click.echo(f"{sweep.metric} per write-verify threshold (thg, level units)")
    for row in [header, *table]:
        click.echo("  ".join(cell.rjust(width) for cell, width in zip(row, widths)))
    if any(run.worst.interrupted for point in sweep.points for run in point.runs.values()):
        click.echo("* interrupted: best chip found before Ctrl-C")


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
            torch_device, max_samples) -> None:
    """Rebuild the saved setup (options given on the command line win) and re-score the saved ΔW."""
    from click.core import ParameterSource

    from cimguard.evaluate import accuracy
    from cimguard.solve import WorstCase, load_perturbation, make_problem, verified

    _, meta = load_perturbation(replay_path)

    def pick(param: str, given: Any, key: str) -> Any:
        return given if ctx.get_parameter_source(param) != ParameterSource.DEFAULT else meta.get(key, given)

    model = pick("model", model, "model")
    setup = setup_from_options(
        model, pick("data", data, "data"), pick("device_name", device_name, "device"),
        tuple(pick("device_params", device_params, "device_params")), pick("device_file", device_file, "device_file"),
        pick("weight_bits", weight_bits, "weight_bits"), pick("label_free", label_free, "label_free"), verify,
        torch_device, pick("max_samples", max_samples, "max_samples"),
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
