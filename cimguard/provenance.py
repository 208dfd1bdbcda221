"""What every JSON report says about how it was made, so a number can be traced and rerun.

Each command's report carries one ``provenance`` block (validated by the JSON Schemas in
``cimguard/schemas/``): the versions of cimguard and of the libraries that decide its
numbers, the model file's absolute path and SHA-256, the evaluation data's SHA-256, the
full command line, start time and wall time, the torch device, the metric, every device
parameter after overrides, and whether the conversion was checked against onnxruntime.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cimguard import distributed

if TYPE_CHECKING:
    from cimguard.api import Setup

#: The distributions whose versions decide the numbers (import, conversion, arithmetic, checks).
VERSIONED = ("cimguard", "torch", "onnx", "onnx2torch", "onnxruntime")

#: ``click.Context.meta`` keys the command group fills in before a command runs.
ARGV_KEY = "cimguard.argv"
STARTED_KEY = "cimguard.started"


def versions() -> dict[str, str | None]:
    """``{distribution: version}``; ``None`` for one that is not installed."""
    found: dict[str, str | None] = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tensors_sha256(*tensors: torch.Tensor | None) -> str:
    """SHA-256 over the tensors' dtypes, shapes and bytes (CPU, contiguous), in order; ``None`` skipped."""
    digest = hashlib.sha256()
    for tensor in tensors:
        if tensor is None:
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{data.dtype}{tuple(data.shape)}".encode())
        digest.update(data.numpy().tobytes())
    return digest.hexdigest()


def _context_meta() -> dict[str, Any]:
    import click

    context = click.get_current_context(silent=True)
    return context.meta if context is not None else {}


def command_line() -> list[str]:
    """The command as typed (``cimguard attack --device pcm ...``); ``sys.argv`` outside the CLI."""
    return list(_context_meta().get(ARGV_KEY) or sys.argv)


def started_at() -> float:
    """When the command started (seconds since the epoch); now outside the CLI."""
    return float(_context_meta().get(STARTED_KEY) or time.time())


def provenance(setup: "Setup | None" = None, *, metric: str | None = None,
               models: list[Path] | None = None) -> dict[str, Any]:
    """The common block of every report.

    ``setup`` gives the model, data, device and torch device; ``models`` adds more model files
    (``compare``).  ``metric`` is ``accuracy`` or ``agreement``.
    """
    started = started_at()
    record: dict[str, Any] = {
        "versions": versions(),
        "command_line": command_line(),
        "started": datetime.datetime.fromtimestamp(started, tz=datetime.timezone.utc).isoformat(),
        "wall_seconds": round(time.time() - started, 3),
        "metric": metric,
        # torchrun: the report of a run on several processes equals the one-process report (cimguard.distributed).
        "processes": distributed.world_size(),
    }
    paths = list(models or [])
    if setup is not None:
        if setup.model_path is not None:  # a model built in memory has no file to hash
            paths = [setup.model_path] + [p for p in paths if Path(p).resolve() != Path(setup.model_path).resolve()]
        data = setup.data
        record["data"] = {
            "name": setup.dataset.name,
            "description": setup.dataset.description,
            # Exactly what was evaluated: inputs as fed to the model and the labels scored against.
            "sha256": tensors_sha256(data.x, None if data.label_free else data.labels),
            "samples": len(data.labels),
            "label_free": data.label_free,
        }
        record["torch_device"] = str(setup.crossbar.torch_device)
        record["device"] = {
            "name": setup.device_name,
            "class": f"{type(setup.device).__module__}.{type(setup.device).__name__}",
            "overrides": dict(setup.device_overrides),
            "parameters": dataclasses.asdict(setup.device.config),
        }
        # Whether the torch conversion was checked against onnxruntime before any number (--no-verify: not).
        record["conversion_check"] = setup.conversion_record
    record["models"] = [{"path": str(Path(p).resolve()), "sha256": file_sha256(p)} for p in paths]
    record["model"] = record["models"][0] if record["models"] else None
    return record
