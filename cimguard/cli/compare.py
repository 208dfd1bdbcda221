"""``cimguard compare``: several models side by side, each through the sweep ``cimguard attack`` runs."""

from __future__ import annotations

import click

from cimguard.cli.options import certify_option, seed_option, setup_options, solver_options, sweep_options
from cimguard.compare import compare_sweeps
from cimguard.factories import (
    check_thg_sweep,
    create_device,
    parse_param_overrides,
    parse_thg_list,
    solvers_from_options,
)


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@setup_options
@solver_options()
@sweep_options
@seed_option
@certify_option
@click.option("--plot", "plot_path", type=click.Path(), default=None, help="Write a figure (.png/.pdf/.svg).")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results to a new JSON file.")
@click.pass_context
def compare(ctx, models, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
            max_samples, output_name, solver_names, iterations, budget, solver_params, thg_text, samples, seed,
            certify_method, plot_path, json_path) -> None:
    """Evaluate MODELS side by side: clean, Monte Carlo and worst-case accuracy at each thg.

    Every model runs the same sweep as `cimguard attack` (same device, thg values,
    solvers, solver options and seeds).
    """
    from cimguard.api import describe_device_choice
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    # Every check before any work, as `attack` does: thresholds, solvers (built, so their settings
    # are validated), outputs.
    thgs = parse_thg_list(thg_text)
    params = parse_param_overrides(device_params)
    check_thg_sweep(thgs, params)
    solvers = solvers_from_options(solver_names, iterations, solver_params, budget)
    check_outputs({"--plot": plot_path, "--json": json_path}, suffixes={"--plot": PLOT_SUFFIXES},
                  inputs=(*models, data, device_file))
    # The header first (a long run under a pipe shows what it is doing); building the device
    # here also refuses a bad device parameter before any model is loaded.
    device = create_device(device_name, params, device_file=device_file)
    device_label = describe_device_choice(device_name, device, params)
    monte_carlo = f"{samples} Monte Carlo chips per thg" if samples else "no Monte Carlo"
    click.echo(f"device {device_label}, {monte_carlo}, seed {seed}; solvers: {', '.join(solvers)}; "
               f"{'agreement' if label_free else 'accuracy'}" + (" with each model's clean chip" if label_free else ""))
    comparison = compare_sweeps(
        list(models), thgs, solvers, data=data, device=device, device_params=params, device_file=device_file,
        weight_bits=weight_bits, label_free=label_free, samples=samples, seed=seed,
        torch_device=torch_device, max_samples=max_samples, verify=verify, progress=True, certify=certify_method,
        output=output_name,
    )
    rows = comparison.rows
    for setup in comparison.setups:
        click.echo(f"check  {setup.model_path}: {setup.conversion_label}")
    click.echo(comparison.table())
    if plot_path:
        from cimguard.plot import plot_comparison, save_figure

        save_figure(plot_comparison(rows, metric=comparison.metric, title=f"on {device_label}"), plot_path)
        click.echo(f"wrote {plot_path}")
    if json_path:
        from cimguard.provenance import provenance

        write_json(json_path, {
            "provenance": provenance(comparison.setups[0] if comparison.setups else None, metric=comparison.metric,
                                     models=[s.model_path for s in comparison.setups]),
            "device": device_name, "device_params": params, "samples": samples, "seed": seed,
            "thg": ["device" if thg is None else thg for thg in thgs],
            **comparison.to_dict(),
        })
        click.echo(f"wrote {json_path}")
    if comparison.interrupted:
        click.echo("Interrupted: the table holds the results found before Ctrl-C.", err=True)
        ctx.exit(130)


COMMANDS = (compare,)
