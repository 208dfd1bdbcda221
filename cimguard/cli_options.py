"""Click options shared by commands, so every command spells them the same way."""

from __future__ import annotations

from typing import Any, Callable

import click

from cimguard.crossbar import CrossbarConfig
from cimguard.device import parse_param_overrides
from cimguard.pipeline import Setup, build_setup

F = Callable[..., Any]


def _compose(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def apply(function: F) -> F:
        for decorator in reversed(decorators):
            function = decorator(function)
        return function

    return apply


model_option = click.option(
    "--model", "model", type=click.Path(dir_okay=False), default=None,
    help="ONNX model to evaluate (default: the embedded LeNet on digits).",
)

_LABEL_FREE = click.option("--label-free", is_flag=True,
                           help="Use the clean model's predictions as labels (agreement).")


def _setup_options(*, label_free: bool) -> Callable[[F], F]:
    return _compose(*(option for option in (
        click.option("--data", default="digits", show_default=True, help="Dataset: NAME, NAME:ARG or a .npz file."),
        click.option("--device", "device_name", default="gaussian", show_default=True, help="Device model or profile name."),
        click.option("--device-param", "device_params", multiple=True, metavar="FIELD=VALUE", help="Override one device parameter (repeatable)."),
        click.option("--device-file", type=click.Path(dir_okay=False), default=None, help="TOML file of device profiles."),
        click.option("--weight-bits", type=int, default=8, show_default=True, help="Bits per weight magnitude (K)."),
        _LABEL_FREE if label_free else None,
        click.option("--verify", is_flag=True, help="Cross-check the converted model against onnxruntime first."),
        click.option("--torch-device", default="auto", show_default=True, help="auto, cpu or cuda."),
        click.option("--max-samples", type=click.IntRange(min=1), default=None, help="Use only the first N evaluation samples."),
    ) if option is not None))


setup_options = _setup_options(label_free=True)
"""The options every evaluating command shares (``--data`` … ``--max-samples``)."""

training_setup_options = _setup_options(label_free=False)
""":data:`setup_options` without ``--label-free``, for commands that train on labelled data (``harden``)."""

seed_option = click.option("--seed", type=int, default=0, show_default=True, help="Random seed.")


def setup_from_options(
    model: str | None,
    data: str,
    device_name: str,
    device_params: tuple[str, ...],
    device_file: str | None,
    weight_bits: int,
    label_free: bool,
    verify: bool,
    torch_device: str,
    max_samples: int | None,
    thg: float | None = None,
) -> Setup:
    """Build a :class:`Setup` from the shared options (``thg`` overrides the device's threshold)."""
    params: dict[str, Any] = dict(parse_param_overrides(device_params))
    if thg is not None:
        params["thg"] = thg
    return build_setup(
        model, data, device_name, params, device_file, CrossbarConfig(weight_bits=weight_bits),
        label_free=label_free, verify=verify, torch_device=torch_device, max_samples=max_samples,
    )
