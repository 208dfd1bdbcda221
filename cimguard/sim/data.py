"""Datasets: evaluation (and training) tensors from a dataset plugin, fitted to a model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from cimguard.errors import CimguardError
from cimguard.onnx.model import TensorSpec


@dataclass(frozen=True)
class Dataset:
    """Inputs and labels for evaluation, and optionally for training."""

    name: str
    description: str
    x_eval: torch.Tensor
    y_eval: torch.Tensor | None
    """Integer class labels; ``None`` for unlabelled data (label-free mode)."""
    x_train: torch.Tensor | None = None
    y_train: torch.Tensor | None = None

    @property
    def labelled(self) -> bool:
        return self.y_eval is not None

    def require_training(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.x_train is None or self.y_train is None:
            raise CimguardError(f"dataset {self.name!r} has no labelled training split")
        return self.x_train, self.y_train


DatasetFactory = Callable[[str | None], Dataset]
"""``factory(argument) -> Dataset``; ``argument`` is what follows ``NAME:`` in ``--data``."""


def fit_to_model(x: torch.Tensor, spec: TensorSpec, *, what: str = "data") -> torch.Tensor:
    """Reshape samples to the model's input shape (batch axis first) or explain why they cannot be.

    Samples become the input's element type: a float model input gets finite floats of
    its precision; an integer input (token ids) gets integers, never floats.
    """
    x = _as_input_type(x, spec, what)
    sample_shape = tuple(spec.shape[1:])
    if not sample_shape or any(d is None for d in sample_shape):
        return x
    if tuple(x.shape[1:]) == sample_shape:
        return x
    if int(np.prod(x.shape[1:])) == int(np.prod(sample_shape)):
        return x.reshape(x.shape[0], *sample_shape)
    raise CimguardError(
        f"{what} samples have shape {tuple(x.shape[1:])} but the model input {spec.name!r} expects {sample_shape}"
    )


_TORCH_TYPES = {"float": torch.float32, "float16": torch.float16, "double": torch.float64,
                "int32": torch.int32, "int64": torch.int64}


def _as_input_type(x: torch.Tensor, spec: TensorSpec, what: str) -> torch.Tensor:
    from cimguard.checks import check_float_array

    dtype = _TORCH_TYPES.get(spec.dtype, torch.float32)
    if dtype.is_floating_point:
        if x.is_floating_point() or x.is_complex():
            # Checked against the file's own input type; computed in float32 like the imported module.
            check_float_array(x.detach().cpu().numpy(), f"{what} samples", dtype=np.dtype(str(dtype).split(".")[1]))
        return x.float()
    if x.is_floating_point():
        if not bool(torch.isfinite(x).all()) or not bool((x == x.round()).all()):
            raise CimguardError(f"{what} samples are not whole numbers but the model input {spec.name!r} takes "
                                f"{spec.dtype} token ids")
    info = torch.iinfo(dtype)
    if x.numel() and (float(x.min()) < info.min or float(x.max()) > info.max):
        # A cast would wrap silently (2**32 + 5 becomes 5 in int32): a wrong token, never a wrong number.
        raise CimguardError(f"{what} samples range over {x.min().item()}..{x.max().item()}, outside "
                            f"{spec.dtype} of the model input {spec.name!r}")
    return x.to(dtype)


def check_labels(y: torch.Tensor, num_classes: int, *, what: str = "data") -> None:
    if y.dim() != 1:
        raise CimguardError(f"{what} labels must be a 1-D array of class indices, got shape {tuple(y.shape)}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise CimguardError(
            f"{what} labels range over {int(y.min())}..{int(y.max())} but the model outputs {num_classes} classes"
        )


def read_npz(path: str | Path) -> Dataset:
    """``x`` and optionally ``y`` (evaluation), ``x_train``/``y_train`` (training) from an ``.npz`` file."""
    from cimguard.checks import check_float_array
    from cimguard.checks import read_npz as read_checked_npz

    path = Path(path)
    content = read_checked_npz(path, "data file")
    if "x" not in content:
        raise CimguardError(f"{path} has no array named 'x' (found: {', '.join(content) or 'none'})")

    def as_inputs(key: str) -> torch.Tensor | None:
        if key not in content:
            return None
        array = content[key]
        if array.dtype.kind in "iu":  # token ids stay integers; fit_to_model types them for the model
            if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
                raise CimguardError(f"{path}: array {key!r} holds integers above {np.iinfo(np.int64).max}")
            array = array.astype(np.int64)
        else:
            check_float_array(array, f"{path}: array {key!r}")
        if array.ndim < 2:
            raise CimguardError(f"{path}: array {key!r} must be numeric with a batch axis, got {array.dtype} {array.shape}")
        if array.shape[0] == 0:
            raise CimguardError(f"{path}: array {key!r} holds no samples")
        return torch.from_numpy(np.ascontiguousarray(array if array.dtype.kind in "iu" else array.astype(np.float32)))

    def as_labels(key: str, count: int | None) -> torch.Tensor | None:
        if key not in content:
            return None
        array = content[key]
        if not np.issubdtype(array.dtype, np.integer):
            if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)) and np.all(np.mod(array, 1) == 0):
                array = array.astype(np.int64)
            else:
                raise CimguardError(f"{path}: labels {key!r} must be integers, got {array.dtype}")
        if count is not None and len(array) != count:
            raise CimguardError(f"{path}: {key!r} has {len(array)} labels for {count} samples")
        return torch.from_numpy(array.astype(np.int64))

    x = as_inputs("x")
    x_train = as_inputs("x_train")
    return Dataset(
        name=f"npz:{path}",
        description=f"{path.name}: {len(x)} samples" + (" (unlabelled)" if "y" not in content else ""),
        x_eval=x,
        y_eval=as_labels("y", len(x)),
        x_train=x_train,
        y_train=as_labels("y_train", None if x_train is None else len(x_train)),
    )
