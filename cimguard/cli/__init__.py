"""The ``cimguard`` command-line tool."""

from __future__ import annotations

import json
import os
import sys
import warnings
from typing import Any

import click

from cimguard import __version__
from cimguard.errors import CimguardError
from cimguard.cli_options import MAX_CHIPS, THG, model_option, seed_option, setup_from_options, setup_options

DEBUG_ENV = "CIMGUARD_DEBUG"


class CimguardGroup(click.Group):
    """Turns every error into one line on stderr and a non-zero exit (no traceback).

    Set ``CIMGUARD_DEBUG=1`` to see the traceback of unexpected errors.
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        # Reports record the command exactly as typed, and when it started (cimguard.provenance).
        import time

        from cimguard.provenance import ARGV_KEY, STARTED_KEY

        ctx.meta[ARGV_KEY] = ["cimguard", *args]
        ctx.meta[STARTED_KEY] = time.time()
        return super().parse_args(ctx, args)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return self._invoke_with_one_line_errors(ctx)
        except click.ClickException as exc:
            # Under torchrun: every rank stops, and rank 0 prints this one line (other ranks never return).
            from cimguard.distributed import stop_all_ranks

            stop_all_ranks(exc.format_message(), exc.exit_code)
            raise

    def _invoke_with_one_line_errors(self, ctx: click.Context) -> Any:
        try:
            with warnings.catch_warnings():
                # cimguard checks its inputs itself; library warnings (numpy, torch, the unpickler)
                # must not print before the one-line error.  CIMGUARD_DEBUG shows them.
                if not os.environ.get(DEBUG_ENV):
                    warnings.simplefilter("ignore")
                return super().invoke(ctx)
        except CimguardError as exc:
            raise click.ClickException(str(exc)) from None
        except click.UsageError as exc:
            # Click's usage errors come with a usage banner over several lines; keep one.
            raise _OneLineUsageError(exc.format_message()) from None
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            ctx.exit(130)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except OSError as exc:  # disk full, file-size limit, stdout closed: the same one line, exit 1
            if os.environ.get(DEBUG_ENV):
                raise
            from cimguard.checks import os_error_message

            raise click.ClickException(os_error_message(exc)) from None
        except Exception as exc:  # noqa: BLE001 - the user gets one line, developers set CIMGUARD_DEBUG
            if os.environ.get(DEBUG_ENV):
                raise
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise click.ClickException(
                f"internal error: {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 for the traceback)"
            ) from None


class _OneLineUsageError(click.ClickException):
    """A malformed command line: one line, and click's usual exit status 2."""

    exit_code = 2


@click.group(cls=CimguardGroup)
@click.version_option(__version__, prog_name="cimguard")
def cli() -> None:
    """Worst-case evaluation and hardening of ONNX networks on compute-in-memory accelerators."""
    from cimguard.plugins import load_errors

    for name, reason in load_errors.items():
        click.echo(f"warning: plugin {name} was not loaded ({reason})", err=True)


@cli.command(name="plugins")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def plugins_command(as_json: bool) -> None:
    """List plugins, the hooks they implement and the names they register."""
    from cimguard.plugins import describe_plugins

    rows = describe_plugins()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        origin = "built-in" if row["builtin"] else f"entry point{' ' + row['version'] if row['version'] else ''}"
        click.echo(f"{row['name']} ({origin})")
        if row.get("error"):
            click.echo(f"  not loaded: {row['error']}")
            continue
        click.echo(f"  hooks: {', '.join(row['hooks'])}")
        for kind, names in row["registers"].items():
            click.echo(f"  {kind}: {', '.join(names)}")


@cli.command()
@model_option
@setup_options
@click.option("--thg", type=THG, default=None, help="Write-verify threshold in level units (default: the device's).")
@click.option("--samples", type=click.IntRange(min=0, max=MAX_CHIPS), default=100, show_default=True,
              help="Monte Carlo chips; 0 skips Monte Carlo (clean accuracy only), as in attack and compare.")
@seed_option
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the full report to a new JSON file.")
@click.option("--plot", "plot_path", type=click.Path(), default=None,
              help="Draw the Monte Carlo accuracy histogram to a new .png/.pdf/.svg file.")
def evaluate(model, data, device_name, device_params, device_file, weight_bits, label_free, verify, torch_device,
             max_samples, thg, samples, seed, json_path, plot_path) -> None:
    """Clean and Monte Carlo accuracy of a model on simulated CiM chips."""
    from cimguard.evaluate import accuracy, float_accuracy, monte_carlo
    from cimguard.provenance import provenance
    from cimguard.report import PLOT_SUFFIXES, check_outputs, write_json

    if plot_path and samples == 0:
        raise CimguardError("--plot draws the Monte Carlo histogram; it needs --samples >= 1")
    check_outputs({"--json": json_path, "--plot": plot_path}, suffixes={"--plot": PLOT_SUFFIXES},
                  inputs=tuple(p for p in (model, device_file) if p))
    setup = setup_from_options(model, data, device_name, device_params, device_file, weight_bits, label_free,
                               verify, torch_device, max_samples, thg)
    # The header first: a long run under a pipe shows what it is doing before any work.
    click.echo(f"model   {setup.model_path}")
    click.echo(f"data    {setup.data_label}")
    click.echo(f"device  {setup.device_summary}, "
               f"{setup.crossbar.num_weights} weights in {len(setup.crossbar.layers)} layers, "
               f"{setup.crossbar.config.weight_bits}-bit weights on {setup.crossbar.slices} devices each")
    click.echo("")
    clean = accuracy(setup.crossbar, setup.data)
    floating = float_accuracy(setup.crossbar, setup.data)
    stats = monte_carlo(setup.crossbar, setup.data, samples, seed, progress=True) if samples else None
    metric = "agreement" if setup.data.label_free else "accuracy"
    rows = [(f"float model {metric}", floating), (f"clean chip {metric}", clean)]
    if stats is not None:
        rows += [
            (f"Monte Carlo mean ({stats.samples} chips, seed {seed})", stats.mean),
            ("Monte Carlo std", stats.std),
            ("Monte Carlo min", stats.min),
        ] + [(f"KPP {_ordinal(p)} percentile", value) for p, value in stats.percentiles.items()]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        click.echo(f"{label:<{width}}  {value:.4f}")
    if stats is None:
        click.echo("Monte Carlo skipped (--samples 0)")
    if json_path:
        report = {"provenance": provenance(setup, metric=metric), "setup": setup.describe(), "metric": metric,
                  "seed": seed, "float_accuracy": floating, "clean_accuracy": clean, "monte_carlo": stats}
        write_json(json_path, report)
        click.echo(f"\nwrote {json_path}")
    if plot_path:
        from cimguard.plot import plot_monte_carlo

        plot_monte_carlo(stats, clean, plot_path, metric=metric,
                         title=f"{setup.model_path.name} on {setup.device_label}, {stats.samples} chips")
        click.echo(f"{'' if json_path else chr(10)}wrote {plot_path}")


def _ordinal(number: str) -> str:
    suffix = {"1": "st", "2": "nd", "3": "rd"}.get(number[-1:], "th")
    return f"{number}{'th' if number.endswith(('11', '12', '13')) else suffix}"


# built-in commands (one import line each; the module's command is added below)
_BUILTIN_COMMAND_MODULES: tuple[str, ...] = (
    "cimguard.cli_devices",
    "cimguard.cli_harden",
    "cimguard.cli_attack",
    "cimguard.cli_inspect",
)


def _register_builtin_commands() -> None:
    import importlib

    for module_name in _BUILTIN_COMMAND_MODULES:
        module = importlib.import_module(module_name)
        for command in module.COMMANDS:
            cli.add_command(command)


def _register_plugin_commands() -> None:
    from cimguard.plugins import pm

    pm.hook.register_commands(cli=cli)


_register_builtin_commands()
_register_plugin_commands()


def main() -> None:
    from cimguard import distributed

    if distributed.launched():  # started by torchrun as one of several processes
        try:
            distributed.start()
        except CimguardError as exc:
            click.ClickException(str(exc)).show()
            sys.exit(1)
    cli(prog_name="cimguard")
