"""Everything a cimguard plugin needs, in one import.

A plugin is a Python module (or any object) with functions marked ``@hookimpl``
whose names match the hooks below.  Import only from this module: it is the
public contract, and the built-in plugins in ``cimguard_plugins`` use nothing
else, exactly as a third-party package would.

Installing a plugin
-------------------
Declare the module in the ``cimguard`` entry-point group of your package::

    [project.entry-points.cimguard]
    my_rram = "my_package.cimguard_plugin"

``pip install`` it and ``cimguard plugins`` lists it with the names it registers.
Set ``CIMGUARD_DISABLE_PLUGIN_AUTOLOAD=1`` to run with the built-ins only.  A
plugin that fails to import is listed with its error; the rest of the tool keeps
working.

The hooks
---------
Every ``register_*`` hook receives a ``register(name, factory)`` callback.  Names
are global per kind: a name registered twice is an error naming both plugins.

``register_devices(register)``
    ``register(name, DeviceClass)``: a :class:`Device` subclass whose ``Config`` is
    a frozen :class:`DeviceConfig` dataclass (one docstring per field, units in the
    name or docstring).  Chosen with ``--device NAME``, configured with
    ``--device-param FIELD=VALUE`` or a TOML device file.
``register_solvers(register)``
    ``register(name, SolverClass)``: a :class:`Solver` subclass with a
    :class:`SolverConfig`.  Chosen with ``--solver NAME``, configured with
    ``--solver-param [NAME.]FIELD=VALUE``.  The core re-checks every
    :class:`WorstCase` a solver returns against the write-verify bounds and
    recomputes its accuracy, so a solver cannot report a chip that does not exist.
``register_trainers(register)``
    ``register(name, TrainerClass)``: a :class:`Trainer` subclass with a
    :class:`TrainerConfig`.  Chosen with ``cimguard harden --trainer NAME``,
    configured with ``--trainer-param FIELD=VALUE``.
``register_datasets(register)``
    ``register(name, factory)``: ``factory(argument)`` returns a :class:`Dataset`;
    ``argument`` is the text after ``NAME:`` in ``--data NAME:ARGUMENT`` (``None``
    when absent).
``register_commands(cli)``
    Add commands to the ``cimguard`` click group with ``@cli.command()``.

Configs and errors
------------------
Each ``Config`` is a frozen dataclass; the CLI types ``FIELD=VALUE`` text by the
field's annotation (bool, int, float, str).  Override ``validate()`` to refuse
values no run can use, raising :class:`CimguardError`: the CLI prints it as one
line (``Error: ...``) and exits non-zero.  NaN is refused for every number field,
and ±Inf unless the field's docstring mentions ``inf``.

A device
--------
::

    from dataclasses import dataclass
    import torch
    from cimguard.plugin_api import Device, DeviceConfig, hookimpl

    @dataclass(frozen=True)
    class FlatConfig(DeviceConfig):
        sigma: float = 0.05
        \"\"\"Programming spread of one write, in level units.\"\"\"

    class Flat(Device):
        Config = FlatConfig
        source = "example: the same spread at every level"

        def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
            return torch.full_like(target_levels, self.config.sigma)

    @hookimpl
    def register_devices(register):
        register("flat", Flat)

The crossbar applies write-verify (``thg``), slicing and quantisation; README's
"Writing a device plugin" is a complete, installable example.

A solver
--------
::

    from cimguard.plugin_api import Solver, SolverConfig, accuracy, hookimpl

    class ZeroSolver(Solver):
        Config = SolverConfig
        summary = "reports the unperturbed chip"

        def search(self, problem, generator, tracker):
            zeros = problem.crossbar.zeros()
            tracker.record(zeros, accuracy(problem.crossbar, problem.data, zeros))

    @hookimpl
    def register_solvers(register):
        register("zero", ZeroSolver)

A trainer
---------
::

    from dataclasses import dataclass
    from cimguard.plugin_api import Trainer, TrainerConfig, hookimpl

    @dataclass(frozen=True)
    class ScaledConfig(TrainerConfig):
        scale: float = 1.0
        \"\"\"Multiplies the loss.\"\"\"

    class Scaled(Trainer):
        Config = ScaledConfig

        def train_batch(self, run, x, y):
            loss, acc = run.cross_entropy(run.chip(), x, y)
            run.step(self.config.scale * loss)
            return float(loss.detach()), acc

    @hookimpl
    def register_trainers(register):
        register("scaled", Scaled)

A dataset
---------
::

    from cimguard.plugin_api import hookimpl, read_npz  # read_npz returns a Dataset

    @hookimpl
    def register_datasets(register):
        register("mine", lambda argument: read_npz(argument or "mine.npz"))
"""

from __future__ import annotations

from cimguard.distributed import all_reduce_sum, is_main, local_slice, mini_batches, sum_gradients
from cimguard.errors import CimguardError
from cimguard.hookspecs import hookimpl
from cimguard.seeds import torch_generator
from cimguard.sim.certify import BoundGraph, certify
from cimguard.sim.crossbar import Crossbar, Perturbation
from cimguard.sim.data import Dataset, read_npz
from cimguard.sim.device import AfterProgramming, Device, DeviceConfig, check_non_negative
from cimguard.sim.evaluate import KPP_PERCENTILES, EvalData, accuracy, monte_carlo
from cimguard.sim.gradients import (
    flwc_step,
    gradient_vanished,
    linf_ratio,
    margin_gradient_with_accuracy,
    margin_loss,
    project,
    sign_descent,
    sign_descent_passes,
    sign_step,
)
from cimguard.sim.rcg import check_rcg, rcg_mean_perturbation, rcg_perturbation
from cimguard.sim.solve import AttackProblem, Solver, SolverConfig, Tracker, WorstCase, is_finite
from cimguard.sim.train import Run, Trainer, TrainerConfig

__all__: list[str] = [
    # hook marker and errors
    "hookimpl",
    "CimguardError",
    # devices
    "Device",
    "DeviceConfig",
    "AfterProgramming",
    "check_non_negative",
    # the simulated chip and evaluation
    "Crossbar",
    "Perturbation",
    "EvalData",
    "accuracy",
    "monte_carlo",
    "KPP_PERCENTILES",
    # solvers
    "Solver",
    "SolverConfig",
    "AttackProblem",
    "Tracker",
    "WorstCase",
    "is_finite",
    "linf_ratio",
    "margin_loss",
    "margin_gradient_with_accuracy",
    "project",
    "gradient_vanished",
    "sign_step",
    "sign_descent",
    "sign_descent_passes",
    "flwc_step",
    # trainers
    "Trainer",
    "TrainerConfig",
    "Run",
    "check_rcg",
    "rcg_perturbation",
    "rcg_mean_perturbation",
    # certified bounds (docs/certify.md): BoundGraph.margin_bounds is differentiable in the weights
    "BoundGraph",
    "certify",
    # seeds: the one way a seed becomes a torch.Generator
    "torch_generator",
    # datasets
    "Dataset",
    "read_npz",
    # torchrun (multi-process) helpers
    "is_main",
    "local_slice",
    "mini_batches",
    "sum_gradients",
    "all_reduce_sum",
]
