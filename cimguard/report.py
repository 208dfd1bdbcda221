"""Result records, their JSON form, and no-clobber atomic writes of output files."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from cimguard.distributed import is_main
from cimguard.errors import CimguardError


def to_jsonable(value: Any) -> Any:
    """Dataclasses, tuples, paths and non-finite floats in a form ``json`` writes."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]], *, left: int = 0) -> list[str]:
    """Lines of a plain-text table: columns as wide as their widest cell, the first ``left`` columns
    left-aligned and the rest right-aligned, two spaces apart."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.ljust(width) if i < left else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths)))

    return [line(header), *(line(row) for row in rows)]


def check_new_output(path: str | Path, *, inputs: tuple[str | Path, ...] = ()) -> Path:
    """Refuse an output path that exists, is one of the inputs, or cannot be created; fail early, before work.

    The folder must exist, be a folder and be writable, and the name must be one the
    file system accepts, so an hour of work is never lost at the last step.
    """
    path = Path(path)
    if not is_main():  # under torchrun rank 0 checks and writes every output
        return path
    try:
        for source in inputs:
            if source is not None and Path(source).exists() and path.exists() and path.resolve() == Path(source).resolve():
                raise CimguardError(f"refusing to overwrite the input file {source}; choose a new output path")
        if path.exists() or path.is_symlink():
            raise CimguardError(f"{path} already exists; cimguard never overwrites files, choose a new path")
        parent = path.parent
        if not parent.exists():
            raise CimguardError(f"output folder {parent} does not exist")
        if not parent.is_dir():
            raise CimguardError(f"output folder {parent} is not a folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise CimguardError(f"output folder {parent} is not writable")
        name_max = os.pathconf(parent, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
    except OSError as exc:
        from cimguard.checks import os_error_message

        raise CimguardError(f"cannot write the output file: {os_error_message(exc)}") from None
    if len(os.fsencode(path.name)) > name_max:
        raise CimguardError(f"output file name too long ({len(path.name)} characters; this folder allows {name_max})")
    return path


#: File suffixes a figure can be written as.
PLOT_SUFFIXES: tuple[str, ...] = (".png", ".pdf", ".svg")


def check_outputs(
    outputs: Mapping[str, str | Path | None],
    *,
    suffixes: Mapping[str, tuple[str, ...]] | None = None,
    inputs: tuple[str | Path, ...] = (),
) -> None:
    """Check a command's output options before any work starts.

    ``outputs`` maps an option name (``"--json"``) to its path (``None`` when not
    given); ``suffixes`` lists the allowed suffixes per option.  Every path must be
    new, not an input, have an allowed suffix, and differ from the others.
    """
    given = {option: Path(path) for option, path in outputs.items() if path is not None}
    for option, path in given.items():
        allowed = (suffixes or {}).get(option)
        if allowed and path.suffix.lower() not in allowed:
            raise CimguardError(f"{option} file {path} must end in {', '.join(allowed[:-1])} or {allowed[-1]}"
                                if len(allowed) > 1 else f"{option} file {path} must end in {allowed[0]}")
        check_new_output(path, inputs=inputs)
    seen: dict[Path, str] = {}
    for option, path in given.items():
        resolved = path.resolve()
        if resolved in seen:
            raise CimguardError(f"{seen[resolved]} and {option} name the same file; give each its own path")
        seen[resolved] = option


def write_new_file(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Create ``path`` atomically and only if it does not exist.

    ``write(tmp)`` fills a temporary file in the same folder; it is then hard-linked
    into place, which fails instead of replacing a file that appeared meanwhile.
    Under torchrun only rank 0 writes; on the other ranks this does nothing.
    """
    if not is_main():
        return Path(path)
    path = check_new_output(path)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp creates the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise CimguardError(f"{path} already exists; cimguard never overwrites files, choose a new path") from None
        except OSError:
            # File systems without hard links: fall back to an exclusive rename check.
            if path.exists():
                raise CimguardError(f"{path} already exists; cimguard never overwrites files, choose a new path") from None
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, record: Any) -> Path:
    text = json.dumps(to_jsonable(record), indent=2, sort_keys=False) + "\n"
    return write_new_file(path, lambda tmp: tmp.write_text(text))
