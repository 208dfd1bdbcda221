"""The ``cimguard`` command-line tool: the group (:mod:`cimguard.cli.group`) and one module per command.

Each command module defines ``COMMANDS``; plugins add theirs through the ``register_commands`` hook.
The commands parse and check their options, call :mod:`cimguard.api` and print what it returns.
"""

from __future__ import annotations

import importlib
import sys

import click

from cimguard.cli.group import cli
from cimguard.errors import CimguardError

__all__ = ["cli", "main"]

#: The built-in commands, one module each (``cimguard --help`` lists them alphabetically).
BUILTIN_COMMAND_MODULES: tuple[str, ...] = (
    "cimguard.cli.evaluate",
    "cimguard.cli.attack",
    "cimguard.cli.compare",
    "cimguard.cli.harden",
    "cimguard.cli.devices",
    "cimguard.cli.inspect",
    "cimguard.cli.plugins",
    "cimguard.cli.validate",
)


def _register_commands() -> None:
    from cimguard.plugins import pm

    for module_name in BUILTIN_COMMAND_MODULES:
        for command in importlib.import_module(module_name).COMMANDS:
            cli.add_command(command)
    pm.hook.register_commands(cli=cli)


_register_commands()


def main() -> None:
    """The console script: starts torch.distributed first when torchrun launched several processes."""
    from cimguard import distributed

    if distributed.launched():  # started by torchrun as one of several processes
        try:
            distributed.start()
        except CimguardError as exc:
            click.ClickException(str(exc)).show()
            sys.exit(1)
    cli(prog_name="cimguard")
