"""Plugin configs: checking a config for its owner, and typing option values given as text.

Devices, solvers and trainers each take a frozen config dataclass (``Config``); a
field's annotation says what text from ``--device-param``, ``--solver-param``,
``--trainer-param`` or TOML must become.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from typing import Any, Callable, Mapping

from cimguard.errors import CimguardError

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def field_types(config_class: type) -> dict[str, Any]:
    """``{field: annotation}`` of a config dataclass, with string annotations resolved."""
    return typing.get_type_hints(config_class)


def type_name(hint: Any) -> str:
    kind = hint if isinstance(hint, type) else typing.get_origin(hint) or hint
    return getattr(kind, "__name__", str(kind))


def coerce(raw: Any, hint: Any) -> Any:
    """``raw`` (text or a value) as the type ``hint`` names (bool, int, float, str); other types pass through.

    Raises ``ValueError`` when the text does not spell a value of that type; callers
    turn it into a one-line error that names their option.
    """
    options = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    if len(options) == 1 and len(typing.get_args(hint)) == 2:  # ``float | None``: the type, or "none"
        return None if raw is None or str(raw).lower() == "none" else coerce(raw, options[0])
    kind = hint if isinstance(hint, type) else typing.get_origin(hint) or hint
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            if str(raw).lower() in _TRUE:
                return True
            if str(raw).lower() in _FALSE:
                return False
            raise ValueError(raw)
        if kind in (int, float) and isinstance(raw, bool):
            raise ValueError(raw)  # TOML's true is not the number 1
        if kind is int:
            if isinstance(raw, float) and not raw.is_integer():
                raise ValueError(raw)
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is str:
            return str(raw)
    except TypeError:
        raise ValueError(raw) from None
    return raw


def config_values(kind: str, name: str, config_class: type, raw: Mapping[str, Any]) -> dict[str, Any]:
    """``raw`` as values of ``config_class``'s fields, each typed by the field's annotation (text is parsed,
    ``4.5`` for an int field or ``True`` for a float field refused).

    A field the config does not have is refused with one line naming the ``kind``
    ("solver", "trainer") called ``name`` and its fields, never dropped silently.
    """
    fields = sorted(f.name for f in dataclasses.fields(config_class))
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise CimguardError(f"{kind} {name!r} has no option {', '.join(unknown)} (its options: {', '.join(fields)})")
    return _typed_values(config_class, raw,
                         lambda key, type_, value: f"{kind} {name!r}: option {key} expects {type_}, got {value!r}")


def device_values(config_class: type, raw: Mapping[str, Any], *, origin: str = "") -> dict[str, Any]:
    """``raw`` (text or typed) as values of a device config's fields, with the device's wording: an
    unknown field or a value of the wrong type is one line naming it (``origin`` says where it came from).

    Only typing happens here; the device checks the values when it is built (:func:`checked_config`).
    """
    fields = [f.name for f in dataclasses.fields(config_class)]
    unknown = next((key for key in raw if key not in fields), None)
    if unknown is not None:
        raise CimguardError(f"unknown device parameter {unknown!r}{origin} (parameters: {', '.join(fields)})")
    return _typed_values(config_class, raw,
                         lambda key, type_, value: f"device parameter {key} must be a {type_}, got {value!r}")


def _typed_values(config_class: type, raw: Mapping[str, Any],
                  wrong_type: Callable[[str, str, Any], str]) -> dict[str, Any]:
    """Every value of ``raw`` (fields of ``config_class``) through :func:`coerce`; a value that is not of its
    field's type is one line, worded by ``wrong_type(field, type name, value)``."""
    hints = field_types(config_class)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            values[key] = coerce(value, hints[key])
        except ValueError:
            raise CimguardError(wrong_type(key, type_name(hints[key]), value)) from None
    return values


def checked_config(owner: Any, config: Any | None, *, finite_first: bool = False) -> Any:
    """``config`` (``owner.Config()`` when ``None``) after checking its type, running ``validate()`` and
    refusing NaN (and ±Inf where a field's docstring gives it no meaning).

    Devices, solvers and trainers call this in ``__init__`` so a bad option fails when the object is
    built, before any work, and only there.  ``finite_first`` names a NaN as such before ``validate()``
    sees it (devices: a NaN makes nonsense of their formulas' messages); otherwise the owner's own
    message comes first (solvers and trainers say "must be a finite number" themselves).
    """
    config_class = type(owner).Config
    config = config if config is not None else config_class()
    if not isinstance(config, config_class):
        raise TypeError(f"{type(owner).__name__} needs a {config_class.__name__}, got {type(config).__name__}")
    from cimguard.checks import check_finite_fields

    if finite_first:
        check_finite_fields(config, field_docs(config_class))
    config.validate()
    if not finite_first:
        check_finite_fields(config, field_docs(config_class))
    return config


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal after each field) of a config dataclass, read from the source."""
    import ast
    import dataclasses
    import inspect
    import textwrap

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, following in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[node.target.id] = " ".join(following.value.value.split())
    return docs
