"""``cimguard evaluate``: clean and Monte Carlo accuracy of a model on simulated chips."""

from __future__ import annotations

import click

from cimguard.cli.options import MAX_CHIPS, THG, model_argument, seed_option, setup_from_options, setup_options
from cimguard.errors import CimguardError
from cimguard.factories import parse_param_overrides


@click.command()
@model_argument
@setup_options
@click.option("--thg", type=THG, default=None, help="Write-verify threshold in level units (default: the device's).")
@click.option("--samples", type=click.IntRange(min=0, max=MAX_CHIPS), default=100, show_default=True,
              help="Monte Carlo chips; 0 skips Monte Carlo (clean accuracy only), as in attack and compare.")
@seed_option
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the full report to a new JSON file.")
@click.option("--plot", "plot_path", type=click.Path(), default=None,
              help="Draw the Monte Carlo accuracy histogram to a new .png/.pdf/.svg file.")
def evaluate(model, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
             max_samples, output_name, thg, samples, seed, json_path, plot_path) -> None:
    """Clean and Monte Carlo accuracy of a model on simulated CiM chips."""
    from cimguard.provenance import provenance
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    if plot_path and samples == 0:
        raise CimguardError("--plot draws the Monte Carlo histogram; it needs --samples >= 1")
    check_outputs({"--json": json_path, "--plot": plot_path}, suffixes={"--plot": PLOT_SUFFIXES},
                  inputs=tuple(p for p in (model, device_file) if p))
    setup = setup_from_options(model, data, device_name, parse_param_overrides(device_params), device_file,
                               weight_bits, label_free, verify, torch_device, max_samples, thg, output_name)
    # The header first: a long run under a pipe shows what it is doing before any work.
    click.echo(f"model   {setup.model_path}")
    click.echo(f"check   {setup.conversion_label}")
    click.echo(f"data    {setup.data_label}")
    click.echo(f"device  {setup.device_summary}, "
               f"{setup.crossbar.num_weights} weights in {len(setup.crossbar.layers)} layers, "
               f"{setup.crossbar.config.weight_bits}-bit weights on {setup.crossbar.slices} devices each")
    click.echo("")
    result = setup.evaluate(samples, seed, progress=True)
    click.echo(result.table())
    if json_path:
        report = {"provenance": provenance(setup, metric=result.metric), "setup": setup.describe(), **result.to_dict()}
        write_json(json_path, report)
        click.echo(f"\nwrote {json_path}")
    if plot_path:
        from cimguard.plot import plot_monte_carlo

        plot_monte_carlo(result.monte_carlo, result.clean_accuracy, plot_path, metric=result.metric,
                         title=f"{setup.model_path.name} on {setup.device_label}, {samples} chips")
        click.echo(f"{'' if json_path else chr(10)}wrote {plot_path}")


COMMANDS = (evaluate,)
