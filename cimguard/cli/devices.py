"""``cimguard devices``: list device models and profiles; ``--show NAME`` prints parameters and sources."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click
import torch

from cimguard.errors import CimguardError
from cimguard.factories import create_device, parse_param_overrides, read_device_file
from cimguard.report import to_jsonable
from cimguard.sim.device import Device, describe_config


@click.command(name="devices")
@click.option("--show", "show", metavar="NAME", default=None, help="Print one device's parameters, units and source.")
@click.option("--device-file", type=click.Path(), default=None, help="TOML file of device profiles.")
@click.option("--device-param", "device_params", multiple=True, metavar="FIELD=VALUE",
              help="Override one parameter in --show (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def devices_command(show: str | None, device_file: str | None, device_params: tuple[str, ...], as_json: bool) -> None:
    """List device models (built-in, plugins, and profiles from --device-file)."""
    if show is None:
        rows = _device_rows(device_file)
        if as_json:
            click.echo(json.dumps(rows, indent=2))
        else:
            _print_table(rows)
        bad = [row for row in rows if "error" in row]
        if bad:
            # The good profiles are listed above; the exit status still says the file needs fixing.
            raise CimguardError(f"{len(bad)} profile(s) of {device_file} cannot be used: {bad[0]['error']}")
        return
    device = create_device(show, parse_param_overrides(device_params), device_file=device_file)
    record = describe_device(show, device)
    if as_json:
        click.echo(json.dumps(to_jsonable(record), indent=2))
        return
    _print_device(record)


def _device_rows(device_file: str | None) -> list[dict[str, Any]]:
    from cimguard.plugins import BUILTIN_PLUGINS, registry

    devices = registry("devices")
    rows = []
    for name in devices.names():
        device = devices.get(name)()
        owner = devices.owners[name]
        # Spelled as `cimguard plugins` spells it.
        rows.append(_row(name, "built-in" if owner in BUILTIN_PLUGINS else f"plugin {owner}", device))
    if device_file is not None:
        for profile in read_device_file(device_file):
            origin = f"profile of {profile.base} ({device_file})"
            try:
                device = create_device(profile.name, device_file=device_file)
            except CimguardError as exc:
                # One bad profile must not hide the good ones: list it with its error.
                rows.append({"name": profile.name, "origin": origin, "error": str(exc)})
                continue
            rows.append(_row(profile.name, origin, device))
    return rows


def _row(name: str, origin: str, device: Device) -> dict[str, Any]:
    c = device.config
    return {
        "name": name,
        "origin": origin,
        "bits_per_device": c.bits_per_device,
        "g_min_us": c.g_min_us,
        "g_max_us": c.g_max_us,
        "thg": c.thg,
        "source": device.source,
    }


def _print_table(rows: list[dict[str, Any]]) -> None:
    header = ("NAME", "BITS", "RANGE (µS)", "THG", "FROM", "SOURCE")
    table = [
        (
            r["name"],
            str(r["bits_per_device"]),
            f"{r['g_min_us']:g}-{r['g_max_us']:g}",
            f"{r['thg']:g}",
            r["origin"],
            _shorten(r["source"], 60),
        )
        if "error" not in r else (r["name"], "-", "-", "-", r["origin"], f"NOT USABLE: {r['error']}")
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *table]) for i in range(len(header) - 1)]
    for row in [header, *table]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
    click.echo("\n`cimguard devices --show NAME` prints a device's parameters and the full source.")


def _shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1].rstrip() + "…"


def describe_device(name: str, device: Device) -> dict[str, Any]:
    """Everything ``devices --show`` prints, as data."""
    c = device.config
    from cimguard.sim.device import device_box_levels

    levels = torch.arange(c.levels, dtype=torch.float32)
    try:
        bounds = device_box_levels(device)
    except CimguardError:  # thg = inf: no finite box (still worth showing the rest)
        bounds = [float("inf")] * c.levels
    return {
        "name": name,
        "class": f"{type(device).__module__}.{type(device).__name__}",
        "description": config_description(type(c)),
        "parameters": [{"name": field, "value": value, "doc": doc} for field, value, doc in describe_config(c)],
        "levels": c.levels,
        "level_step_us": device.level_step_us,
        "level_conductance_us": [float(v) for v in device.to_conductance_us(levels)],
        "programming_sigma_levels": [float(v) for v in device.programming_sigma(levels)],
        "deviation_bound_levels": max(bounds),
        "deviation_bound_per_level": bounds,
        "formulas": list(type(device).formulas),
        "source": device.source,
    }


def _print_device(record: dict[str, Any]) -> None:
    click.echo(f"{record['name']}  ({record['class']})")
    if record["description"]:
        click.echo(f"  {record['description']}")
    click.echo("")
    params = record["parameters"]
    name_width = max(len(p["name"]) for p in params)
    values = [_format_value(p["value"]) for p in params]
    value_width = max((len(v) for v in values if len(v) <= 16), default=1)  # a long value (σ list): own line
    indent = " " * (name_width + value_width + 4)
    for p, value in zip(params, values):
        doc = textwrap.fill(p["doc"], width=100, initial_indent=indent, subsequent_indent=indent).lstrip()
        if len(value) > value_width:
            click.echo(f"{p['name']:<{name_width}}  {value}")
            click.echo(f"{indent}{doc}")
        else:
            click.echo(f"{p['name']:<{name_width}}  {value:<{value_width}}  {doc}")
    click.echo("")
    conductances = ", ".join(f"{g:.4g}" for g in record["level_conductance_us"])
    sigmas = ", ".join(f"{s:.4g}" for s in record["programming_sigma_levels"])
    click.echo(f"levels              {record['levels']} (step {record['level_step_us']:.4g} µS): {conductances} µS")
    click.echo(f"programming σ       {sigmas} (level units, before truncation at thg)")
    for index, formula in enumerate(record["formulas"]):
        click.echo(f"{'formulas' if index == 0 else '':<20}{formula}")
    per_level = ", ".join(f"{b:.4g}" for b in record["deviation_bound_per_level"])
    click.echo(f"worst-case box      {per_level} levels per device, lowest level first "
               "(deviation_bound; `attack --thg device` searches it)")
    click.echo("")
    click.echo(textwrap.fill(f"source: {record['source'] or '(none given)'}", width=100, subsequent_indent="  "))


def config_description(config_class: type) -> str:
    """The first line of the config's own docstring; "" when it has none.

    A dataclass without a docstring gets a generated one (its signature, ``Name(field: type = …)``),
    which is not a description.
    """
    doc = (config_class.__dict__.get("__doc__") or "").strip()
    if not doc or doc.startswith(f"{config_class.__name__}("):
        return ""
    return doc.splitlines()[0]


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value) if value else "()"
    return str(value)


COMMANDS = (devices_command,)
