"""The JSON Schemas of cimguard's reports, and validation of a report against the right one.

Every schema in ``cimguard/schemas/`` validates offline with plain ``jsonschema.validate(report,
schema)``: a report schema refers to the provenance schema by its ``$id``, and carries a copy of it
under ``$defs`` (an embedded resource with that ``$id``), so nothing is ever retrieved.
:func:`validate_report` picks the schema from the report itself (``cimguard validate REPORT.json``).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any, Mapping

from cimguard.errors import CimguardError

def _report_kinds() -> tuple[str, ...]:
    folder = resources.files("cimguard") / "schemas"
    stems = sorted(path.name[: -len(".schema.json")] for path in folder.iterdir() if path.name.endswith(".schema.json"))
    return tuple(stem for stem in stems if stem != "provenance")


#: The commands whose ``--json`` reports have a schema (every ``cimguard/schemas/*.schema.json`` but provenance).
REPORT_KINDS = _report_kinds()


def load_schema(kind: str) -> dict[str, Any]:
    """The schema of ``kind`` (a report kind, or ``provenance``) as shipped."""
    path = resources.files("cimguard") / "schemas" / f"{kind}.schema.json"
    if not path.is_file():
        raise CimguardError(f"no schema for {kind!r} reports (known: {', '.join(REPORT_KINDS)})")
    return json.loads(path.read_text())


def report_kind(report: Mapping[str, Any]) -> str:
    """Which command wrote ``report``: the one whose schema's required top-level keys it has (the command
    line in its provenance breaks a tie)."""
    if not isinstance(report, Mapping):
        raise CimguardError(f"a cimguard report is a JSON object, got {type(report).__name__}")
    fits = [kind for kind in REPORT_KINDS if set(load_schema(kind).get("required", ())) <= set(report)]
    command = report.get("provenance", {}).get("command_line", []) if isinstance(report.get("provenance"), Mapping) \
        else []
    named = command[1] if isinstance(command, list) and len(command) > 1 else None
    if named in fits:
        return named
    if not fits:
        raise CimguardError("not a cimguard report: it has the top-level keys of no report "
                            f"({', '.join(REPORT_KINDS)}): {', '.join(sorted(map(str, report))) or 'none'}")
    return max(fits, key=lambda kind: len(load_schema(kind).get("required", ())))


def validate_report(report: str | Path | Mapping[str, Any]) -> str:
    """Validate a report (a dict, or a JSON file) against its command's schema; returns the kind.

    A report that does not validate is a one-line :class:`CimguardError` naming where it fails.
    """
    import jsonschema

    where = "the report"
    if not isinstance(report, Mapping):
        from cimguard.checks import check_input_file

        path = check_input_file(report, "report file")
        where = str(path)
        try:
            report = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise CimguardError(f"{where} is not JSON ({str(exc).splitlines()[0][:200]})") from None
    kind = report_kind(report)
    validator = jsonschema.Draft202012Validator(load_schema(kind),
                                                format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    error = jsonschema.exceptions.best_match(validator.iter_errors(report))
    if error is not None:
        at = "/".join(str(part) for part in error.absolute_path) or "the top level"
        raise CimguardError(f"{where} is not a valid {kind} report: at {at}: {error.message[:300]}")
    return kind
