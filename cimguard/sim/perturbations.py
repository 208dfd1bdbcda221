"""Worst-case perturbations as files: ``ΔW`` per layer plus JSON metadata in a ``.npz`` (``--save-perturbation``,
``--replay``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from cimguard.checks import check_perturbation_metadata, read_npz
from cimguard.errors import CimguardError
from cimguard.report import to_jsonable, write_new_file
from cimguard.sim.crossbar import Crossbar, Perturbation

_DELTA_PREFIX = "delta/"


_META_KEY = "metadata_json"


PERTURBATION_FORMAT = "cimguard-perturbation-1"


def save_perturbation(path: str | Path, perturbation: Perturbation, metadata: Mapping[str, Any]) -> Path:
    """Write ``ΔW`` per layer and JSON metadata to a new ``.npz`` file (never overwrites)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise CimguardError(f"perturbation file {path} must end in .npz")
    arrays = {_DELTA_PREFIX + name: value.detach().cpu().numpy() for name, value in perturbation.items()}
    meta = json.dumps(to_jsonable({"format": PERTURBATION_FORMAT, **metadata}))
    arrays[_META_KEY] = np.array(meta)

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as handle:  # a file object keeps numpy from appending another .npz
            np.savez_compressed(handle, **arrays)

    return write_new_file(path, write)


def load_perturbation(path: str | Path, crossbar: Crossbar | None = None) -> tuple[Perturbation, dict[str, Any]]:
    """Read a file written by :func:`save_perturbation`; with ``crossbar``, check it fits and move it there."""
    path = Path(path)
    archive = read_npz(path, "perturbation file")
    try:
        meta = json.loads(str(archive[_META_KEY]))
    except (KeyError, ValueError):
        raise CimguardError(f"{path} is not a cimguard perturbation file (not a readable .npz with metadata)") from None
    if not isinstance(meta, dict):
        raise CimguardError(f"{path} is not a cimguard perturbation file (its metadata is not a JSON object)")
    arrays = {key[len(_DELTA_PREFIX):]: value for key, value in archive.items() if key.startswith(_DELTA_PREFIX)}
    if meta.get("format") != PERTURBATION_FORMAT:
        raise CimguardError(f"{path} is not a cimguard perturbation file (format {meta.get('format')!r})")
    check_perturbation_metadata(meta, path)
    for name, value in arrays.items():
        if value.dtype.kind != "f":
            raise CimguardError(f"{path}: ΔW of layer {name} must be floating-point, got {value.dtype}")
    if crossbar is None:
        return {name: torch.from_numpy(value) for name, value in arrays.items()}, meta
    if set(arrays) != set(crossbar.layers):
        raise CimguardError(
            f"{path} perturbs layers {sorted(arrays)} but the model maps {sorted(crossbar.layers)}; is it the same model?"
        )
    perturbation = {}
    for name, value in arrays.items():
        nominal = crossbar.layers[name].nominal
        if tuple(value.shape) != tuple(nominal.shape):
            raise CimguardError(f"{path}: layer {name} has shape {tuple(value.shape)}, the model has {tuple(nominal.shape)}")
        perturbation[name] = torch.from_numpy(value).to(device=crossbar.torch_device, dtype=nominal.dtype)
    return perturbation, meta
