"""``cimguard validate REPORT.json``: check a JSON report against the schema of the command that wrote it."""

from __future__ import annotations

import click


@click.command(name="validate")
@click.argument("report", metavar="REPORT.json", type=click.Path())
def validate(report: str) -> None:
    """Validate a JSON report (evaluate, attack, harden, compare, inspect) against its shipped schema.

    The schema is picked from the report itself; exit status 1 and one line naming the first
    violation when it does not validate.
    """
    from cimguard.schema import validate_report

    kind = validate_report(report)
    click.echo(f"{report}: a valid {kind} report (cimguard/schemas/{kind}.schema.json)")


COMMANDS = (validate,)
