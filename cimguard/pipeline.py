"""The straight data flow every command shares: ONNX → torch → crossbar → evaluation data."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch

from cimguard.checks import PROBE_SAMPLES, check_model_io, probe_model
from cimguard.crossbar import Crossbar, CrossbarConfig
from cimguard.data import Dataset, check_labels, fit_to_model, load_dataset
from cimguard.device import Device, create_device
from cimguard.errors import CimguardError
from cimguard.evaluate import EvalData, make_eval_data
from cimguard.model import ImportedModel, load_model, verify_against_onnxruntime


def default_model() -> Path:
    from cimguard_models import default_model_path

    return default_model_path()


def pick_torch_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; otherwise the named torch device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise CimguardError(f"unknown torch device {name!r} (use auto, cpu or cuda)") from None
    if device.type not in ("cpu", "cuda"):
        raise CimguardError(f"torch device {name!r} cannot run a model (use auto, cpu or cuda)")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CimguardError("--torch-device cuda was asked for but no CUDA device is available")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise CimguardError(f"--torch-device {name}: there are {torch.cuda.device_count()} CUDA device(s)")
    return device


@dataclass
class Setup:
    """A model mapped onto a device's crossbars, with its data ready for evaluation."""

    model_path: Path
    imported: ImportedModel
    dataset: Dataset
    device_name: str
    device: Device
    crossbar: Crossbar
    data: EvalData
    device_overrides: dict[str, Any] = field(default_factory=dict)
    """The device parameters set on the command line (``--device-param``, ``--thg``), as given."""

    @property
    def data_label(self) -> str:
        """The dataset's description and, when ``--max-samples`` cut it, how many samples were used."""
        used, available = len(self.data.labels), len(self.dataset.x_eval)
        cut = f"; first {used} of {available} evaluation samples used (--max-samples)" if used < available else ""
        return self.dataset.description + cut

    @property
    def device_label(self) -> str:
        """The device and every parameter the user overrode, with units: ``pcm, t=86400 s``."""
        return describe_device_choice(self.device_name, self.device, self.device_overrides)

    @property
    def device_summary(self) -> str:
        """:attr:`device_label` plus the write-verify threshold when the user did not set it (headers)."""
        thg_note = "" if "thg" in self.device_overrides else f" (thg {self.device.config.thg:g} levels)"
        return self.device_label + thg_note

    def describe(self) -> dict[str, Any]:
        import dataclasses

        return {
            "model": str(self.model_path),
            "data": self.dataset.name,
            "data_description": self.dataset.description,
            "label_free": self.data.label_free,
            "evaluation_samples": len(self.data.labels),
            "device": self.device_name,
            "device_params": dataclasses.asdict(self.device.config),
            "device_overrides": dict(self.device_overrides),
            # The layers actually mapped (ONNX initializer names), not the kinds that could be.
            "crossbar": {"weight_bits": self.crossbar.config.weight_bits,
                         "layer_kinds": list(self.crossbar.config.layers),
                         "layers": [layer.weight.initializer for layer in self.crossbar.layers.values()]},
            "mapped_layers": len(self.crossbar.layers),
            "mapped_weights": self.crossbar.num_weights,
        }


def build_setup(
    model: str | Path | None = None,
    data: str = "digits",
    device: str = "gaussian",
    device_params: Mapping[str, Any] | None = None,
    device_file: str | Path | None = None,
    crossbar_config: CrossbarConfig | None = None,
    *,
    label_free: bool = False,
    verify: bool = False,
    torch_device: str = "auto",
    batch_size: int = 1024,
    max_samples: int | None = None,
) -> Setup:
    """Load, convert, map and prepare data; every failure is a one-line :class:`CimguardError`."""
    model_path = Path(model) if model is not None else default_model()
    dataset = load_dataset(data)
    imported = load_model(model_path)
    check_model_io(imported, str(model_path))
    x = fit_to_model(dataset.x_eval, imported.input)
    y = None if label_free else dataset.y_eval
    if max_samples is not None:
        x = x[:max_samples]
        y = None if y is None else y[:max_samples]
    if verify:
        verify_against_onnxruntime(imported, x[:256])
    target = pick_torch_device(torch_device)
    imported.module.to(target)
    built_device = create_device(device, device_params, device_file=device_file)
    crossbar = Crossbar(imported, built_device, crossbar_config or CrossbarConfig())
    probe_model(crossbar, x[:PROBE_SAMPLES].to(target), str(model_path))
    eval_data = make_eval_data(crossbar, x, y, batch_size)
    if not eval_data.label_free:
        num_classes = crossbar.logits(eval_data.x[:1]).shape[1]
        check_labels(eval_data.labels, num_classes)
    return Setup(model_path, imported, dataset, device, built_device, crossbar, eval_data,
                 dict(device_params or {}))


def describe_device_choice(name: str, device: Device, overrides: Mapping[str, Any]) -> str:
    """``pcm, t=86400 s``: the device name and each overridden parameter with its unit (from the field's doc)."""
    from cimguard.device import describe_config

    docs = {field_name: doc for field_name, _, doc in describe_config(device.config)}
    values = {field_name: value for field_name, value, _ in describe_config(device.config)}
    parts = [name]
    for key in overrides:
        value = values.get(key, overrides[key])
        text = f"{value:g}" if isinstance(value, float) else str(value)
        unit = _unit(docs.get(key, ""))
        parts.append(f"{key}={text}{' ' + unit if unit else ''}")
    return ", ".join(parts)


def _unit(doc: str) -> str:
    """The unit a field's docstring names (seconds, µS, mV, level units), or ""."""
    lowered = doc.lower()
    for needle, unit in (("level units", "levels"), ("in seconds", "s"), ("seconds", "s"), ("in µs", "µS"),
                         ("µs", "µS"), ("in mv", "mV"), ("mv", "mV")):
        if needle in lowered:
            return unit
    return ""
