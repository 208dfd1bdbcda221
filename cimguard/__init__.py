"""cimguard: worst-case evaluation and hardening of ONNX networks on compute-in-memory accelerators.

The public API, in data-flow order::

    imported = load_model("vendor.onnx")                       # ONNX -> torch
    crossbar = Crossbar(imported, create_device("gaussian"))   # weights on crossbars
    data = make_eval_data(crossbar, x, y)
    stats = monte_carlo(crossbar, data, samples=100, seed=0)
"""

from __future__ import annotations

__version__ = "0.1.0"

from cimguard.crossbar import Crossbar, CrossbarConfig, Perturbation
from cimguard.data import Dataset, load_dataset
from cimguard.device import Device, DeviceConfig, create_device
from cimguard.errors import CimguardError
from cimguard.evaluate import EvalData, MonteCarloStats, accuracy, make_eval_data, monte_carlo
from cimguard.hookspecs import hookimpl
from cimguard.model import ImportedModel, MappedWeight, load_model

__all__ = [
    "CimguardError",
    "Crossbar",
    "CrossbarConfig",
    "Dataset",
    "Device",
    "DeviceConfig",
    "EvalData",
    "ImportedModel",
    "MappedWeight",
    "MonteCarloStats",
    "Perturbation",
    "accuracy",
    "create_device",
    "hookimpl",
    "load_dataset",
    "load_model",
    "make_eval_data",
    "monte_carlo",
]
