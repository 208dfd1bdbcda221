"""The embedded default model (installed as ``cimguard_models``)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

DEFAULT_MODEL_NAME = "lenet_digits.onnx"


def default_model_path() -> Path:
    """Path of the shipped LeNet-style CNN trained on scikit-learn's digits."""
    return Path(str(resources.files(__name__) / DEFAULT_MODEL_NAME))
