"""``cimguard devices``: list device models and profiles; ``--show NAME`` prints parameters and sources."""

from __future__ import annotations

import json
import textwrap
from typing import Any

import click
import torch

from cimguard.device import Device, create_device, describe_config, parse_param_overrides, read_device_file
from cimguard.report import to_jsonable


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
            return
        _print_table(rows)
        return
    device = create_device(show, parse_param_overrides(device_params), device_file=device_file)
    record = describe_device(show, device)
    if as_json:
        click.echo(json.dumps(to_jsonable(record), indent=2))
        return
    _print_device(record)


def _device_rows(device_file: str | None) -> list[dict[str, Any]]:
    from cimguard.plugins import registry

    devices = registry("devices")
    rows = []
    for name in devices.names():
        device = devices.get(name)()
        rows.append(_row(name, f"plugin {devices.owners[name]}", device))
    if device_file is not None:
        for profile in read_device_file(device_file):
            device = create_device(profile.name, device_file=device_file)
            rows.append(_row(profile.name, f"profile of {profile.base} ({device_file})", device))
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
    levels = torch.arange(c.levels, dtype=torch.float32)
    return {
        "name": name,
        "class": f"{type(device).__module__}.{type(device).__name__}",
        "description": (type(c).__doc__ or "").strip().splitlines()[0] if type(c).__doc__ else "",
        "parameters": [{"name": field, "value": value, "doc": doc} for field, value, doc in describe_config(c)],
        "levels": c.levels,
        "level_step_us": device.level_step_us,
        "level_conductance_us": [float(v) for v in device.to_conductance_us(levels)],
        "programming_sigma_levels": [float(v) for v in device.programming_sigma(levels)],
        "deviation_bound_levels": device.deviation_bound(),
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
    click.echo(f"worst-case bound    {record['deviation_bound_levels']:.4g} levels per device (deviation_bound)")
    click.echo("")
    click.echo(textwrap.fill(f"source: {record['source'] or '(none given)'}", width=100, subsequent_indent="  "))


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, tuple):
        return ",".join(f"{v:g}" for v in value) if value else "()"
    return str(value)


COMMANDS = (devices_command,)
