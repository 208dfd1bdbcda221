"""cimguard: worst-case evaluation and hardening of ONNX networks on compute-in-memory accelerators.

The Python API (:mod:`cimguard.api`), in data-flow order::

    import cimguard

    model = cimguard.load("vendor.onnx")                      # ONNX -> torch (or a torch.nn.Module + example)
    chip = cimguard.setup(model, cimguard.device("pcm", t=86400), data="digits")   # weights on crossbars
    print(chip.evaluate(samples=100, seed=0).table())         # float, clean and Monte Carlo accuracy
    worst = chip.worst_case("flwc")                           # the worst chip in the device's own box
    chip.sweep(thg=[0.01, 0.03]).to_dict()                    # one row per write-verify threshold
    chip.sweep_device("t", [1, 3600, 86400]).table()          # one row per retention time

The names below are imported on first use, so ``import cimguard`` stays cheap (no torch, no plugins)
until something is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    # the notebook API
    "load": "cimguard.api",
    "device": "cimguard.api",
    "solver": "cimguard.api",
    "setup": "cimguard.api",
    "Setup": "cimguard.api",
    "Hardening": "cimguard.api",
    "compare_sweeps": "cimguard.compare",
    "validate_report": "cimguard.schema",
    # the objects it hands out
    "ImportedModel": "cimguard.onnx.model",
    "MappedWeight": "cimguard.onnx.model",
    "Device": "cimguard.sim.device",
    "DeviceConfig": "cimguard.sim.device",
    "Crossbar": "cimguard.sim.crossbar",
    "CrossbarConfig": "cimguard.sim.crossbar",
    "Perturbation": "cimguard.sim.crossbar",
    "Dataset": "cimguard.sim.data",
    "EvalData": "cimguard.sim.evaluate",
    "Evaluation": "cimguard.sim.evaluate",
    "MonteCarloStats": "cimguard.sim.evaluate",
    "Solver": "cimguard.sim.solve",
    "SolverRun": "cimguard.sim.worst_case",
    "AttackSweep": "cimguard.sim.sweep",
    "DeviceSweep": "cimguard.sim.sweep",
    "Certificate": "cimguard.sim.certify",
    "CimguardError": "cimguard.errors",
    "hookimpl": "cimguard.hookspecs",
    # lower-level building blocks
    "load_model": "cimguard.onnx.model",
    "create_device": "cimguard.factories",
    "load_dataset": "cimguard.factories",
    "make_eval_data": "cimguard.sim.evaluate",
    "accuracy": "cimguard.sim.evaluate",
    "monte_carlo": "cimguard.sim.evaluate",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'cimguard' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
