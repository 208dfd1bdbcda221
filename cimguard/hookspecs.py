"""The hooks a cimguard plugin can implement.

A plugin is a module (or object) with functions marked ``@hookimpl`` whose names
match the specifications below.  Built-in plugins live in ``cimguard_plugins``;
third-party plugins are found through the ``cimguard`` entry-point group::

    [project.entry-points.cimguard]
    my_rram = "my_package.cimguard_plugin"

Every ``register_*`` hook receives a ``register(name, factory)`` callback.  Names
are global per kind: registering a name that another plugin already registered
is an error naming both plugins.

Plugin authors import everything (``hookimpl``, base classes, helpers) from
:mod:`cimguard.plugin_api`, which documents each hook with an example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import pluggy

if TYPE_CHECKING:  # pragma: no cover - typing only
    import click

    from cimguard.sim.data import DatasetFactory
    from cimguard.sim.device import Device
    from cimguard.sim.solve import Solver
    from cimguard.sim.train import Trainer

PROJECT_NAME = "cimguard"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_devices(register: Callable[[str, type["Device"]], None]) -> None:
    """Register device models.

    Call ``register(name, DeviceClass)`` for each device.  ``DeviceClass`` is a
    subclass of :class:`cimguard.sim.device.Device` whose ``Config`` attribute is a
    frozen dataclass of its parameters (one docstring per field, units in the
    field name or its docstring).  Users select it with ``--device NAME`` and
    override fields with ``--device-param FIELD=VALUE``.
    """


@hookspec
def register_solvers(register: Callable[[str, type["Solver"]], None]) -> None:
    """Register worst-case solvers.

    Call ``register(name, SolverClass)``; ``SolverClass`` subclasses
    :class:`cimguard.sim.solve.Solver`.  The core re-checks every result a solver
    returns against the write-verify bounds and recomputes its accuracy.
    """


@hookspec
def register_trainers(register: Callable[[str, type["Trainer"]], None]) -> None:
    """Register hardening trainers.

    Call ``register(name, TrainerClass)``; ``TrainerClass`` subclasses
    :class:`cimguard.sim.train.Trainer`.
    """


@hookspec
def register_datasets(register: Callable[[str, "DatasetFactory"], None]) -> None:
    """Register datasets.

    Call ``register(name, factory)`` where ``factory(argument)`` returns a
    :class:`cimguard.sim.data.Dataset`.  ``argument`` is the text after ``NAME:`` in
    ``--data NAME:ARGUMENT`` (``None`` when absent), e.g. a file path.
    """


@hookspec
def register_commands(cli: "click.Group") -> None:
    """Add commands to the ``cimguard`` command-line tool.

    Use ``@cli.command()`` on your functions.  Raise
    :class:`cimguard.errors.CimguardError` for bad input: the CLI prints it as a
    one-line error.
    """
