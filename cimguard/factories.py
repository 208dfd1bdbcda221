"""Names and text into objects: the one layer between the plugin registry and its users.

The domain (``cimguard.onnx``, ``cimguard.sim``) works with objects: a :class:`Device`, a
:class:`Solver`, a :class:`Trainer`, a :class:`Dataset`.  Users name them: ``--device pcm
--device-param t=86400``, ``--solver flwc,pgd --solver-param pgd.restarts=4``, ``--data digits``,
``cimguard.device("pcm", t=86400)``.  This module is where one becomes the other: it alone looks
names up in the plugin registry (:mod:`cimguard.plugins`) and types text options by the config
dataclasses, so every command-line value is parsed once, here, and checked once, when the object it
configures is built (before any work); the domain modules never import the plugin manager
(``tests/test_layers.py`` checks it).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from cimguard.errors import CimguardError
from cimguard.options import device_values
from cimguard.plugins import registry
from cimguard.sim.data import Dataset
from cimguard.sim.device import Device, DeviceConfig
from cimguard.sim.solve import Solver
from cimguard.sim.train import Trainer

# -- text options ----------------------------------------------------------------------------------


def parse_param_overrides(pairs: Iterable[str], option: str = "--device-param") -> dict[str, str]:
    """``["sigma=0.05", "t=86400"]`` -> ``{"sigma": "0.05", "t": "86400"}``; errors name ``option``."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise CimguardError(f"{option} expects FIELD=VALUE, got {pair!r}")
        result[key.strip()] = value.strip()
    return result


DEVICE_BOX = "device"
"""``--thg device``: the device's own worst-case box (its ``deviation_bound``, per level)."""


def parse_thg_list(text: str) -> list[float | None]:
    """``"0.01,0.03"`` -> ``[0.01, 0.03]`` (finite, >= 0, sorted, no duplicates); ``device`` -> ``None``.

    ``None`` is the device as configured: its own write-verify threshold for Monte Carlo and
    its own worst-case box (``deviation_bound``, per level where the device says so).
    """
    values: list[float] = []
    device_box = False
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == DEVICE_BOX:
            device_box = True
            continue
        try:
            value = float(part)
        except ValueError:
            raise CimguardError(f"--thg expects 'device' or comma-separated numbers, got {part!r}") from None
        if not math.isfinite(value) or value < 0:
            raise CimguardError(f"--thg values must be finite and >= 0 (level units), got {part}")
        values.append(value)
    if not values and not device_box:
        raise CimguardError("--thg needs 'device' or at least one threshold, e.g. --thg 0.01,0.03")
    return ([None] if device_box else []) + sorted(set(values))


def check_thg_sweep(thgs: list[float | None], device_params: Mapping[str, Any]) -> None:
    """A --thg sweep sets the threshold itself: refuse a --device-param thg=... that it would silently replace."""
    sweep = [thg for thg in thgs if thg is not None]
    if sweep and "thg" in device_params:
        raise CimguardError(
            "--device-param thg=... and a --thg sweep both set the write-verify threshold; give one: "
            "--thg device --device-param thg=X searches the device's box at threshold X, --thg X,Y sweeps"
        )


# -- devices ---------------------------------------------------------------------------------------


def build_config(config_class: type[DeviceConfig], params: Mapping[str, Any], *, origin: str = "") -> DeviceConfig:
    """A device config from text or typed values (:func:`cimguard.options.device_values`); the device
    built from it checks the values, once (:meth:`Device.__init__`)."""
    return config_class(**device_values(config_class, params, origin=origin))


@dataclass(frozen=True)
class DeviceProfile:
    """A named device built from a registered device plus parameter values (from TOML)."""

    name: str
    base: str
    params: dict[str, Any]
    source: str = ""
    problem: str = ""
    """Why this profile cannot be used ("" when it can); other profiles of the file stay usable."""


def read_device_file(path: str | Path) -> list[DeviceProfile]:
    """Device profiles from a TOML file.

    Each table is one profile; ``base`` names the registered device it builds on,
    ``source`` cites the parameters, every other key sets a config field::

        [my_rram]
        base = "rram"
        source = "our 2025 wafer measurements"
        thg = 0.02
    """
    from cimguard.checks import check_input_file

    path = check_input_file(path, "device file")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CimguardError(f"{path} is not valid TOML: {exc}") from None
    except RecursionError:
        raise CimguardError(f"{path} nests tables or arrays too deep to be a device file") from None
    profiles = []
    for name, table in data.items():
        # A malformed profile is kept with its problem, so the file's good profiles stay usable.
        if not isinstance(table, dict):
            profiles.append(DeviceProfile(name, "", {}, problem=f"{path}: {name!r} must be a table ([{name}]) of "
                                                                 "device parameters"))
            continue
        table = dict(table)
        base = table.pop("base", None)
        source = str(table.pop("source", ""))
        if not isinstance(base, str):
            profiles.append(DeviceProfile(name, "", table, source,
                                          problem=f"{path}: profile [{name}] needs base = \"<registered device>\""))
            continue
        profiles.append(DeviceProfile(name, base, table, source))
    if not profiles:
        raise CimguardError(f"{path} defines no device profile")
    return profiles


def create_device(
    name: str,
    params: Mapping[str, Any] | None = None,
    *,
    device_file: str | Path | None = None,
) -> Device:
    """Build a device by registered name or profile name, then apply ``params`` overrides (text or typed)."""
    devices = registry("devices")
    if device_file is not None:
        profiles = {p.name: p for p in read_device_file(device_file)}
        if name in profiles:
            return _profile_device(profiles[name], device_file, params)
        if name not in devices.factories:
            known = ", ".join(sorted(set(devices.names()) | set(profiles)))
            raise CimguardError(f"unknown device {name!r} (known: {known})")
    cls = devices.get(name)
    device = cls(build_config(cls.Config, params or {}))
    device.name = name
    return device


def _profile_device(profile: DeviceProfile, device_file: str | Path, params: Mapping[str, Any] | None) -> Device:
    # The profile alone must make a valid device (its errors name the profile), then the overrides apply.
    if profile.problem:
        raise CimguardError(profile.problem)
    try:
        cls = registry("devices").get(profile.base)
        device = cls(build_config(cls.Config, dict(profile.params)))
    except CimguardError as exc:
        raise CimguardError(f"profile [{profile.name}] of {device_file}: {exc}") from None
    if params:
        device = cls(build_config(cls.Config, dataclasses.asdict(device.config) | dict(params)))
    if profile.source:
        device.source = profile.source
    device.name = profile.name
    return device


# -- datasets --------------------------------------------------------------------------------------


def load_dataset(spec: str) -> Dataset:
    """Resolve ``--data``: ``NAME``, ``NAME:ARGUMENT`` or a path to an ``.npz`` file."""
    datasets = registry("datasets")
    name, sep, argument = spec.partition(":")
    if spec.endswith(".npz") and (not sep or name not in datasets.factories):
        name, argument = "npz", spec
    elif not sep:
        argument = None
    return datasets.get(name)(argument or None)


# -- solvers ---------------------------------------------------------------------------------------


def build_solver(name: str, options: Mapping[str, Any] | None = None) -> Solver:
    """Solver ``name`` built with ``options`` (text typed by its config; a bad value is a one-line error)."""
    return registry("solvers").get(name).from_options(name, **dict(options or {}))


def build_solvers(names: Iterable[str], options: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Solver]:
    """Every solver built (so validated) before any work starts: ``{name: Solver}`` in the given order."""
    return {name: build_solver(name, (options or {}).get(name)) for name in names}


def named_solver(solver: Solver, name: str | None = None) -> Solver:
    """``solver`` called ``name``, or by the name its class is registered under when it was built directly
    (``FLWC(config)`` reports as ``flwc``); a copy when the name changes, the caller's object is left as is."""
    if name is None:
        if solver.name != type(solver).__name__:
            return solver  # built by name (or named by its author): keep it
        solvers = registry("solvers")
        name = next((known for known in solvers.names() if solvers.get(known) is type(solver)), solver.name)
    if name == solver.name:
        return solver
    renamed = copy.copy(solver)
    renamed.name = name
    return renamed


def solver_option_names(name: str) -> set[str]:
    """The option (config field) names solver ``name`` understands."""
    return {f.name for f in dataclasses.fields(registry("solvers").get(name).Config)}


def parse_solvers(values: Iterable[str]) -> list[str]:
    """Repeatable and comma-separated ``--solver``; every name must be registered."""
    names: list[str] = []
    for value in values:
        for name in (part.strip() for part in value.split(",")):
            if name and name not in names:
                registry("solvers").get(name)  # one-line error naming the known solvers
                names.append(name)
    if not names:
        raise CimguardError("--solver needs at least one solver name")
    return names


def parse_solver_params(pairs: Iterable[str], solvers: list[str], iterations: int | None,
                        budget: int | None = None) -> dict[str, dict[str, str | int]]:
    """``--solver-param [SOLVER.]FIELD=VALUE`` sorted out per solver (values stay text: the solver's config
    types them when it is built), after ``--iterations`` and ``--budget``; a field no chosen solver has is an
    error."""
    raw: dict[str, dict[str, str | int]] = {name: {} for name in solvers}
    for field_name, value in (("iterations", iterations), ("budget", budget)):
        if value is not None:
            for name in solvers:
                raw[name][field_name] = value
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CimguardError(f"--solver-param expects [SOLVER.]FIELD=VALUE, got {pair!r}")
        target, dot, field_name = key.rpartition(".")
        targets = [target] if dot else solvers
        if dot and target not in solvers:
            raise CimguardError(f"--solver-param {pair!r} names solver {target!r}, which is not in --solver")
        takers = [name for name in targets if field_name in solver_option_names(name)]
        if not takers:
            known = "; ".join(f"{name}: {', '.join(sorted(solver_option_names(name)))}" for name in targets)
            raise CimguardError(f"--solver-param: no chosen solver has an option {field_name!r} (options of {known})")
        for name in takers:
            raw[name][field_name] = value.strip()
    return raw


def solvers_from_options(solver_names: Iterable[str], iterations: int | None,
                         solver_params: Iterable[str], budget: int | None = None) -> dict[str, Solver]:
    """``--solver``, ``--iterations``, ``--budget`` and ``--solver-param`` as built solvers, ``{name: Solver}``.

    Building validates each solver's settings, so a bad value (``flwc.k=nan``) is a one-line
    error before any Monte Carlo or search work starts; the objects are then used as they are.
    """
    names = parse_solvers(solver_names)
    return build_solvers(names, parse_solver_params(solver_params, names, iterations, budget))


# -- trainers --------------------------------------------------------------------------------------


def build_trainer(name: str, options: Mapping[str, Any] | None = None) -> Trainer:
    """Trainer ``name`` built with ``options`` (text typed by its config; ``None`` values mean "not given")."""
    return registry("trainers").get(name).from_options(name, **dict(options or {}))
