"""``cimguard plugins``: every plugin, the hooks it implements and the names it registers."""

from __future__ import annotations

import json

import click


@click.command(name="plugins")
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


COMMANDS = (plugins_command,)
