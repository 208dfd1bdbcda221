"""The Python API: load a model, pick a device, and measure it (what every ``cimguard`` command runs).

In a notebook::

    import cimguard

    model = cimguard.load("vendor.onnx")                  # or cimguard.load(torch_module, example_input)
    chip = cimguard.setup(model, cimguard.device("pcm", t=86400), data="digits")
    chip.evaluate(samples=100, seed=0).table()            # float, clean and Monte Carlo accuracy
    chip.worst_case("apgd", budget=20).accuracy           # the worst chip in the device's box, in 20 passes
    chip.sweep(thg=[0.01, 0.03], solvers=["apgd", "flwc"]).to_dict()
    chip.sweep_device("t", [1, 3600, 86400]).table()      # one row per retention time

Every result is a plain object with ``to_dict()`` (what the JSON reports hold) and ``table()``
(what the commands print).  The commands in :mod:`cimguard.cli` parse their options and call these
same functions, so a notebook and the command line give the same numbers for the same seed.
Names become objects in :mod:`cimguard.factories`; every failure is a one-line
:class:`~cimguard.errors.CimguardError`.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import numbers
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import torch
from torch import nn

from cimguard.checks import PROBE_SAMPLES, check_finite, check_model_io, probe_model
from cimguard.errors import CimguardError, first_line
from cimguard.factories import build_solver, build_trainer, create_device, load_dataset, named_solver
from cimguard.onnx.export import export_onnx
from cimguard.onnx.model import ImportedModel, import_model, load_model
from cimguard.onnx.verify import NOT_VERIFIED, ConversionCheck, verify_against_onnxruntime
from cimguard.sim.certify import Certificate
from cimguard.sim.certify import certify as certify_samples
from cimguard.sim.crossbar import Crossbar, CrossbarConfig
from cimguard.sim.data import Dataset, check_labels, fit_to_model
from cimguard.sim.device import Device, describe_config
from cimguard.sim.evaluate import (
    EvalData,
    Evaluation,
    MonteCarloStats,
    accuracy,
    evaluation,
    make_eval_data,
    monte_carlo,
)
from cimguard.sim.solve import AttackProblem, Solver, TraceCallback
from cimguard.sim.sweep import AttackSweep, DeviceSweep, attack_sweep, device_sweep
from cimguard.sim.train import Trainer, TrainResult
from cimguard.sim.worst_case import SolverRun, make_problem, run_checked

ModelSource = str | Path | ImportedModel | nn.Module | None
"""A model: an ONNX file, an already loaded model, a ``torch.nn.Module`` (with an example input), or
``None`` for the embedded default model."""
DataSource = str | Dataset | tuple[Any, Any]
"""Data: ``NAME``, ``NAME:ARG`` or an ``.npz`` path (as ``--data``), a :class:`Dataset`, or ``(x, y)``
arrays (``y`` may be ``None``: label-free)."""
SolverChoice = str | Solver | Iterable[str | Solver] | Mapping[str, Solver | Mapping[str, Any]]
"""Solvers: a name, a built :class:`Solver`, several of those, or ``{name: Solver or options}``."""


def default_model() -> Path:
    """The embedded LeNet trained on scikit-learn's digits."""
    from cimguard_models import default_model_path

    return default_model_path()


def load(source: str | Path | nn.Module | None = None, example_input: torch.Tensor | None = None) -> ImportedModel:
    """An ONNX file (``None``: the embedded model), or a ``torch.nn.Module`` exported with today's default
    ``torch.onnx.export`` on ``example_input``, converted to torch with its crossbar layers found.

    The conversion is checked against onnxruntime when the model meets its data (:func:`setup`), on the
    first samples, before any number is computed."""
    if isinstance(source, nn.Module):
        if example_input is None:
            raise CimguardError("a torch.nn.Module needs an example_input to be exported to ONNX")
        return import_model(_export_module(source, example_input))
    if example_input is not None:
        raise CimguardError("example_input is only for a torch.nn.Module")
    return load_model(default_model() if source is None else source)


def _export_module(module: nn.Module, example_input: torch.Tensor) -> onnx.ModelProto:
    # The same exporter (and so the same fixed-batch file) a vendor gets by default; cimguard.onnx.batch
    # then makes its batch axis usable for any batch size.
    was_training = module.training
    module.eval()  # exported as it runs for inference (dropout off, BatchNorm running statistics)
    try:
        try:
            return torch.onnx.export(module, (example_input,), dynamo=True, verbose=False).model_proto
        except ImportError:  # the default exporter needs onnxscript; the TorchScript one does not
            buffer = io.BytesIO()
            with warnings.catch_warnings():  # its deprecation notice is known: it is only the fallback
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(module, (example_input,), buffer, dynamo=False)
            return onnx.load_from_string(buffer.getvalue())
    except Exception as exc:  # noqa: BLE001 - torch.export fails in many ways; the user gets one line
        raise CimguardError(f"torch.onnx.export could not export the module: {type(exc).__name__}: "
                            f"{first_line(exc)}") from None
    finally:
        module.train(was_training)  # the caller's module is left as it was


def device(name: str, *, file: str | Path | None = None, **params: Any) -> Device:
    """Device ``name`` (registered, or a profile of the TOML ``file``) with parameters set by keyword:
    ``device("pcm", t=86400)``.  Values may be typed or text."""
    return create_device(name, params, device_file=file)


def solver(name: str, **options: Any) -> Solver:
    """Solver ``name`` with options set by keyword: ``solver("pgd", restarts=4)``."""
    return build_solver(name, options)


def pick_solvers(choice: SolverChoice, budget: int | None = None) -> dict[str, Solver]:
    """``{name: Solver}`` from a name, a :class:`Solver`, several, or a dict whose values are built solvers
    or option dicts (``{"pgd": {"restarts": 4}}``); all are built before any work.  ``budget`` caps every
    one at that many passes over the evaluation data (:meth:`Solver.with_budget`)."""
    built: dict[str, Solver] = {}
    if isinstance(choice, Mapping):
        for name, value in choice.items():
            if isinstance(value, Solver):
                built[name] = named_solver(value, name)  # the key names it in tables and reports
            elif value is None or isinstance(value, Mapping):
                built[name] = build_solver(name, value)
            else:
                raise CimguardError(f"solver {name!r}: give a Solver or a dict of options, got {type(value).__name__}")
    else:
        for item in [choice] if isinstance(choice, (str, Solver)) else list(choice):
            one = named_solver(item) if isinstance(item, Solver) else build_solver(item)
            if one.name in built:
                raise CimguardError(f"solver {one.name!r} given twice")
            built[one.name] = one
    if not built:
        raise CimguardError("give at least one solver")
    return {name: one.with_budget(budget) for name, one in built.items()}


def run_solver(
    solver: str | Solver,
    problem: AttackProblem,
    seed: int = 0,
    options: Mapping[str, Any] | None = None,
    *,
    budget: int | None = None,
    progress: bool = False,
    callbacks: tuple[TraceCallback, ...] = (),
) -> SolverRun:
    """Run ``solver`` (a registered name with ``options``, or a built :class:`Solver`; capped at ``budget``
    passes when given) on ``problem`` and return its answer after the core's independent check
    (:func:`cimguard.sim.worst_case.run_checked`)."""
    if isinstance(solver, Solver):
        if options:
            raise CimguardError("run_solver: options configure a solver given by name; "
                                "this Solver object has its config")
        built = named_solver(solver)
    else:
        built = build_solver(solver, options)
    return run_checked(built.with_budget(budget), problem, seed, progress=progress, callbacks=callbacks)


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

    model_path: Path | None
    """The ONNX file (``None`` for a model built in memory)."""
    imported: ImportedModel
    dataset: Dataset
    device_name: str
    device: Device
    crossbar: Crossbar
    data: EvalData
    device_overrides: dict[str, Any] = field(default_factory=dict)
    """The device parameters set on the command line (``--device-param``, ``--thg``), as given."""
    conversion_check: ConversionCheck | None = field(default=None, kw_only=True)
    """The torch conversion checked against onnxruntime on the probe samples; ``None``: skipped (``verify=False``)."""

    @property
    def conversion_label(self) -> str:
        """One line for the commands' headers: checked against onnxruntime, or not (``--no-verify``)."""
        check = self.conversion_check
        if check is None:
            return "conversion NOT checked against onnxruntime (--no-verify): numbers may not be the file's"
        return (f"conversion checked against onnxruntime on {check.to_dict()['samples']} samples: max error "
                f"{check.relative_error:.2g} of the output scale (tolerance {check.tolerance:.0e})")

    @property
    def conversion_record(self) -> dict[str, Any]:
        """The reports' ``conversion_check``."""
        return dict(NOT_VERIFIED) if self.conversion_check is None else self.conversion_check.to_dict()

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

    @property
    def metric(self) -> str:
        """``accuracy``, or ``agreement`` with the clean chip in label-free mode."""
        return "agreement" if self.data.label_free else "accuracy"

    def describe(self) -> dict[str, Any]:
        """The setup as plain data (the ``setup`` section of every report)."""
        return {
            "model": str(self.model_path) if self.model_path is not None else "<in memory>",
            "score_output": self.imported.score_output.name if self.imported.outputs else None,
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

    # -- measurements (the commands call these) -------------------------------------------------
    def clean_accuracy(self) -> float:
        """Accuracy (agreement) of the perfect chip: quantised weights, no device error."""
        return accuracy(self.crossbar, self.data)

    def evaluate(self, samples: int = 100, seed: int = 0, *, progress: bool = False) -> Evaluation:
        """Float, clean-chip and Monte Carlo accuracy (``samples`` chips; 0 skips Monte Carlo)."""
        return evaluation(self.crossbar, self.data, samples, seed, progress=progress)

    def monte_carlo(self, samples: int = 100, seed: int = 0, *, progress: bool = False) -> MonteCarloStats:
        """Accuracy over ``samples`` simulated chips (mean, spread, KPP percentiles)."""
        return monte_carlo(self.crossbar, self.data, samples, seed, progress=progress)

    def worst_case(self, solver: str | Solver = "apgd", thg: float | None = None, seed: int = 0, *,
                   budget: int | None = None, progress: bool = False, **options: Any) -> SolverRun:
        """The worst chip ``solver`` finds in the device's own box (``thg=None``) or at threshold ``thg``
        within ``budget`` passes (default: the solver's own), checked by the core.  Keyword ``options``
        configure a solver given by name (``k=20``)."""
        return run_solver(solver, make_problem(self.crossbar, self.data, thg), seed, options, budget=budget,
                          progress=progress)

    def sweep(self, thg: Sequence[float | None] | float | None = None, solvers: SolverChoice = "apgd", *,
              samples: int = 100, seed: int = 0, budget: int | None = None, progress: bool = False,
              certify: str | None = None) -> AttackSweep:
        """Clean, Monte Carlo and worst case at each write-verify threshold (``None``: the device's own
        box): one row per value, what ``cimguard attack --thg`` prints; ``certify`` (``interval``,
        ``crown`` or ``joint``) adds the certified accuracy in each box (``attack --certify``)."""
        thgs = _thg_list(thg)
        chosen = pick_solvers(solvers, budget)
        return attack_sweep(self.crossbar, self.data, thgs, chosen, samples=samples, seed=seed, progress=progress,
                            certify_method=certify)

    def certify(self, thg: float | None = None, method: str = "crown") -> Certificate:
        """Which samples no chip in the box can misclassify (``thg=None``: the device's own box), proved by
        ``method`` (``interval``, ``crown`` or ``joint``): a lower bound on the worst chip's accuracy
        (:func:`cimguard.sim.certify.certify`; docs/certify.md)."""
        return certify_samples(self.crossbar, self.data, None if thg is None else float(thg), method)

    def sweep_device(self, parameter: str, values: Sequence[Any], solvers: SolverChoice = "apgd", *,
                     thg: float | None = None, samples: int = 100, seed: int = 0, budget: int | None = None,
                     progress: bool = False) -> DeviceSweep:
        """The same measurements for each value of one device parameter (``t``, ``sigma``, ...): one row per
        value, each in the device's own box (or at ``thg``)."""
        return device_sweep(self.crossbar, self.data, parameter, list(values), pick_solvers(solvers, budget), thg=thg,
                            samples=samples, seed=seed, progress=progress)

    def harden(self, trainer: str | Trainer = "atrice", *, checkpoint: str | Path | None = None, resume: bool = False,
               progress: bool = False, **options: Any) -> Hardening:
        """Fine-tune the crossbar weights on the dataset's training split (what ``cimguard harden`` runs).

        ``trainer``: a registered name with keyword ``options`` (``epochs=5``, ``sigma=0.2``) or a built
        :class:`Trainer`.  The result holds the hardened chip and writes the ONNX file
        (:meth:`Hardening.export`).
        """
        if isinstance(trainer, Trainer):
            if options:
                raise CimguardError("options configure a trainer given by name; this Trainer has its config")
            built = trainer
        else:
            built = build_trainer(trainer, options)
        x_train, y_train = self.training_data
        result = built.fit(self.crossbar, x_train, y_train, checkpoint=checkpoint, resume=resume, progress=progress)
        for name, weight in result.weights.items():
            check_finite(weight, f"training diverged (lower --lr or the noise): weight {name}")
        hardened = dataclasses.replace(self, crossbar=self.crossbar.remapped(result.weights))
        # Measured here, on every rank (accuracy is a collective under torchrun), not when first printed.
        return Hardening(self, hardened, built.name, result, self.clean_accuracy(), hardened.clean_accuracy())

    @functools.cached_property
    def training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The dataset's labelled training split, fitted to the model's input (once: a command's header
        counts it before :meth:`harden` trains on it)."""
        x_train, y_train = self.dataset.require_training()
        return fit_to_model(x_train, self.imported.input, what="training data"), y_train


@dataclass
class Hardening:
    """A hardening run: the setup it started from, the same setup with the fine-tuned weights, and the
    trainer's record."""

    before: Setup
    after: Setup
    """The same model, device and data with the fine-tuned weights mapped (measure it like any setup)."""
    trainer: str
    result: TrainResult
    clean_accuracy_before: float
    clean_accuracy_after: float

    def export(self, path: str | Path) -> Path:
        """Write the input's ONNX graph with the fine-tuned weights to a new file, checked in onnxruntime
        first (never overwrites)."""
        return export_onnx(self.before.imported, self.result.weights, path, check_inputs=self.before.data.x[:256])

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as in the ``harden`` report."""
        return {"metric": "accuracy", "trainer": self.trainer, "config": self.result.config,
                "chosen": self.result.chosen, "history": self.result.history,
                "clean_accuracy_before": self.clean_accuracy_before, "clean_accuracy_after": self.clean_accuracy_after}

    def table(self) -> str:
        """The trainer, what it chose, and the clean-chip accuracy before and after (what ``harden`` prints)."""
        result = self.result
        resumed = f", resumed after epoch {result.resumed_from_epoch}" if result.resumed_from_epoch is not None else ""
        lines = [f"trainer  {self.trainer} ({result.config['epochs']} epochs, seed {result.config['seed']}){resumed}"]
        for key, value in result.chosen.items():
            if key != "search":
                lines.append(f"         {key} = {value:g}" if isinstance(value, float) else f"         {key} = {value}")
        lines.append(f"clean chip accuracy  {self.clean_accuracy_before:.4f} -> {self.clean_accuracy_after:.4f} "
                     f"({self.before.dataset.name} evaluation split)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def setup(
    model: ModelSource = None,
    device: str | Device = "gaussian",
    data: DataSource = "digits",
    *,
    example_input: torch.Tensor | None = None,
    weight_bits: int | None = None,
    label_free: bool = False,
    verify: bool = True,
    torch_device: str = "auto",
    max_samples: int | None = None,
    output: str | None = None,
) -> Setup:
    """A model mapped onto ``device``'s crossbars with ``data`` ready: the object every measurement starts from.

    ``model``: an ONNX file, a loaded model (:func:`load`), a ``torch.nn.Module`` with ``example_input``,
    or ``None`` (the embedded model); ``device``: a name or :func:`device`; ``data``: see :data:`DataSource`.
    A loaded model's torch module moves to ``torch_device`` (load it again for a setup on another one).
    ``verify`` (default) checks the conversion against onnxruntime on the first samples before anything is
    computed (a mismatch is an error naming the first node that differs); ``verify=False`` skips it.
    ``output`` names the graph output that holds the class scores (default: the model's choice, the first).
    """
    return build_setup(model, data, device, crossbar_config=CrossbarConfig(weight_bits=weight_bits),
                       example_input=example_input, label_free=label_free, verify=verify,
                       torch_device=torch_device, max_samples=max_samples, output=output)


def build_setup(
    model: ModelSource = None,
    data: DataSource = "digits",
    device: str | Device = "gaussian",
    device_params: Mapping[str, Any] | None = None,
    device_file: str | Path | None = None,
    crossbar_config: CrossbarConfig | None = None,
    *,
    example_input: torch.Tensor | None = None,
    label_free: bool = False,
    verify: bool = True,
    torch_device: str = "auto",
    batch_size: int = 1024,
    max_samples: int | None = None,
    output: str | None = None,
) -> Setup:
    """Load, convert, map and prepare data; every failure is a one-line :class:`CimguardError`.

    The commands' form of :func:`setup`: a device by name with ``device_params`` overrides (text as
    typed on the command line) and an optional TOML ``device_file`` of profiles, or a built device
    (``device_params`` then name the overrides it was built with, for labels and reports).
    """
    dataset = _dataset(data)
    if isinstance(model, ImportedModel):
        if example_input is not None:
            raise CimguardError("example_input is only for a torch.nn.Module")
        imported = model
    else:
        imported = load(model, example_input)
    if output is not None:
        imported = imported.with_output(output)
    model_path = imported.path
    where = str(model_path) if model_path is not None else "the model"
    check_model_io(imported, where)
    x = fit_to_model(dataset.x_eval, imported.input)
    y = None if label_free else dataset.y_eval
    if max_samples is not None:
        x = x[:max_samples]
        y = None if y is None else y[:max_samples]
    target = pick_torch_device(torch_device)
    imported.module.to(target)
    if isinstance(device, Device):
        # Used as built; ``device_params`` then only label it (the overrides it was built with).
        if device_file is not None:
            raise CimguardError("device_file selects a profile by name; this Device is already built")
        built_device = device
        overrides = _changed_fields(device) if device_params is None else dict(device_params)
    else:
        built_device = create_device(device, device_params, device_file=device_file)
        overrides = dict(device_params or {})
    crossbar = Crossbar(imported, built_device, crossbar_config or CrossbarConfig())
    probe_model(crossbar, x[:PROBE_SAMPLES].to(target), where)
    # After the probe (which refuses memory bombs under its guard) and before any number: the torch
    # conversion must compute what onnxruntime computes from the file, on these very samples.
    check = verify_against_onnxruntime(imported, x[:PROBE_SAMPLES]) if verify else None
    eval_data = make_eval_data(crossbar, x, y, batch_size)
    if not eval_data.label_free:
        num_classes = crossbar.logits(eval_data.x[:1]).shape[1]
        check_labels(eval_data.labels, num_classes)
    return Setup(model_path, imported, dataset, built_device.name, built_device, crossbar, eval_data, overrides,
                 conversion_check=check)


def _tensor(value: Any) -> torch.Tensor:
    # A tensor stays where it is (CPU or GPU); arrays and lists become CPU tensors.
    return value.detach() if isinstance(value, torch.Tensor) else torch.as_tensor(np.asarray(value))


def _thg_list(thg: Any) -> list[float | None]:
    """``thg`` for :meth:`Setup.sweep`: ``None`` (the device's own box), a number, or several of those."""
    def one(value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, (str, bool)) or not isinstance(value, numbers.Real) and getattr(value, "ndim", 1) != 0:
            raise CimguardError(f"thg must be a number of levels or None (the device's own box), got {value!r}")
        return float(value)

    if thg is None or isinstance(thg, (str, numbers.Real)) or getattr(thg, "ndim", 1) == 0:
        return [one(thg)]
    return [one(value) for value in thg]


def _changed_fields(device: Device) -> dict[str, Any]:
    # A device built in Python: label it with the fields that differ from its config's defaults.
    defaults = type(device.config)()
    return {f.name: getattr(device.config, f.name) for f in dataclasses.fields(device.config)
            if getattr(device.config, f.name) != getattr(defaults, f.name)}


def _dataset(data: DataSource) -> Dataset:
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_dataset(data)
    if isinstance(data, tuple) and len(data) == 2:
        x, y = (None if value is None else _tensor(value) for value in data)
        if x is None or x.dim() == 0:
            raise CimguardError("data (x, y) needs inputs x with a sample axis")
        if y is not None:
            if y.dtype.is_floating_point or y.dtype == torch.bool:
                raise CimguardError(f"labels y must be integers, got {y.dtype}")
            if y.dim() != 1 or len(y) != len(x):
                raise CimguardError(f"labels y must be one per sample: x has {len(x)} samples, y has shape "
                                    f"{tuple(y.shape)}")
        return Dataset("arrays", f"{len(x)} samples given in memory", x, y)
    raise CimguardError(f"data must be a name, an .npz path, a Dataset or (x, y), got {type(data).__name__}")


def describe_device_choice(name: str, device: Device, overrides: Mapping[str, Any]) -> str:
    """``pcm, t=86400 s``: the device name and each overridden parameter with its unit (from the field's doc)."""
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
