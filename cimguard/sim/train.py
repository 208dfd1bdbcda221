"""Hardening: fine-tune a model's crossbar weights so the chip tolerates device variation.

A trainer fine-tunes the *float* weights ``W`` of the mapped layers.  Every step
re-maps them onto the crossbar (``Crossbar.remapped``), so the forward pass sees
what a chip would compute with, ``W_q + ΔW``: the quantised weights at the
current per-layer scale plus a perturbation drawn by the trainer.  Quantisation
is bridged with a straight-through estimator: the value is ``W_q + ΔW`` while
the gradient flows to ``W`` unchanged.

Only the mapped weights learn.  Biases, BatchNorm and every other parameter stay
frozen (and BatchNorm keeps its running statistics), so the exported ONNX file
is the vendor's graph with exactly the crossbar weights replaced.

This module holds the shared machinery: the :class:`Trainer` base class and its
frozen :class:`TrainerConfig`, the seeded training loop, and checkpoints that make
an interrupted run resume to bit-identical weights (the RCG noise TRICE and A-TRICE
draw is in :mod:`cimguard.sim.rcg`).  The trainer plugins subclass :class:`Trainer`
and implement :meth:`Trainer.train_batch`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import torch
from torch.nn import functional as F

from cimguard import distributed
from cimguard.errors import CimguardError
from cimguard.options import checked_config, config_values
from cimguard.progress import progress_bar
from cimguard.seeds import check_seed, stream_seed, torch_generator
from cimguard.sim.crossbar import Crossbar, Perturbation

#: Bumped when the checkpoint layout changes; older checkpoints are refused.
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True)
class TrainerConfig:
    """Options every trainer understands."""

    epochs: int = 20
    """Passes over the training split."""
    lr: float = 2e-3
    """Adam learning rate."""
    batch_size: int = 64
    """Training samples per mini-batch."""
    seed: int = 0
    """Seeds the data order and every noise draw; the same seed gives the same weights."""

    def validate(self) -> None:
        """Raise :class:`CimguardError` for values no training run can use."""
        if self.epochs < 1:
            raise CimguardError(f"epochs must be >= 1, got {self.epochs}")
        if not self.lr > 0 or math.isinf(self.lr):
            raise CimguardError(f"the learning rate must be a positive number, got {self.lr}")
        if self.batch_size < 1:
            raise CimguardError(f"the batch size must be >= 1, got {self.batch_size}")
        check_seed(self.seed)


@dataclass
class TrainResult:
    """What a training run produced."""

    weights: dict[str, torch.Tensor]
    """The fine-tuned float weights of the mapped layers, by torch name (export writes these)."""
    trainer: str
    config: dict[str, Any]
    chosen: dict[str, Any] = field(default_factory=dict)
    """Values the trainer chose itself (e.g. TRICE's searched σ and threshold)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """One record per epoch: mean training loss and the accuracy on the perturbed chips seen."""
    resumed_from_epoch: int | None = None


@dataclass
class Run:
    """The mutable state of one training run, handed to :meth:`Trainer.train_batch`.

    Everything a checkpoint must hold to continue bit-identically lives here:
    the weights, the optimiser, both random generators and the trainer's own values.
    """

    crossbar: Crossbar
    """The starting mapping (its device and layout are reused by every remap)."""
    weights: dict[str, torch.nn.Parameter]
    optimiser: torch.optim.Optimizer
    data_generator: torch.Generator
    """CPU generator for the mini-batch order."""
    noise_generator: torch.Generator
    """Generator on the crossbar's device for every perturbation drawn."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Trainer-chosen values (kept in checkpoints)."""
    epoch: int = 0
    """Completed epochs."""
    history: list[dict[str, float]] = field(default_factory=list)
    batch_size: int = 0
    """Samples in the current mini-batch over all ranks (under torchrun each rank holds a share)."""

    def chip(self) -> Crossbar:
        """The current weights as programmed: quantised at their current scale, with their device levels."""
        return self.crossbar.remapped({name: w.detach() for name, w in self.weights.items()})

    def straight_through(self, chip: Crossbar, perturbation: Mapping[str, torch.Tensor] | None = None) -> Perturbation:
        """A perturbation that makes ``chip.logits`` compute with ``W_q + ΔW`` and pass gradients to ``W``.

        ``chip.logits`` adds the perturbation to its (detached) nominal ``W_q``;
        adding ``W - W.detach()`` (value zero, gradient one) is the straight-through estimator.
        A device's ΔW is proportional to the layer's full scale ``max|W|``, so ΔW is
        multiplied by ``max|W| / max|W|.detach()`` (value one): the loss then also sees
        how the layer's largest weight sets the size of every perturbation.
        """
        scaled = self.follows_scale(chip, perturbation) if perturbation is not None else None
        return {name: (w - w.detach()) + scaled[name] if scaled is not None else w - w.detach()
                for name, w in self.weights.items()}

    def follows_scale(self, chip: Crossbar, perturbation: Mapping[str, torch.Tensor]) -> Perturbation:
        """``perturbation`` (detached) times ``max|W| / max|W|.detach()`` per layer (value one, gradient to ``W``):
        a device's ΔW, or a box, is proportional to the layer's full scale.  A quantized file's scale is fixed,
        so its layers' ΔW does not follow ``W``."""
        result = {}
        for name, w in self.weights.items():
            delta = perturbation[name].detach()
            if chip.layers[name].codes is None:
                scale = w.abs().max()
                delta = delta * (scale / scale.detach().clamp_min(1e-12))
            result[name] = delta
        return result

    def cross_entropy(
        self, chip: Crossbar, x: torch.Tensor, y: torch.Tensor, perturbation: Mapping[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, float]:
        """Cross-entropy of the chip ``W_q + ΔW`` on a batch, and the batch accuracy (for the log).

        Under torchrun ``x`` is this rank's share of the batch and both values are this
        share's part of the whole batch's mean: summed over ranks they are the batch's
        loss and accuracy (and :meth:`step` sums the gradients).
        """
        logits = chip.logits(x, self.straight_through(chip, perturbation))
        if distributed.active():
            hits = (logits.detach().argmax(dim=1) == y).sum()
            return F.cross_entropy(logits, y, reduction="sum") / self.batch_size, float(hits) / self.batch_size
        correct = float((logits.detach().argmax(dim=1) == y).float().mean())
        return F.cross_entropy(logits, y), correct

    def step(self, loss: torch.Tensor) -> None:
        """One optimiser update of the float weights from ``loss``."""
        self.optimiser.zero_grad(set_to_none=True)
        loss.backward()
        distributed.sum_gradients(self.weights.values())  # torchrun: every rank steps with the whole batch's gradient
        self.optimiser.step()


class Trainer:
    """Base class of hardening trainers.

    Subclasses set ``Config`` (a frozen dataclass deriving from
    :class:`TrainerConfig`, one docstring per field) and implement
    :meth:`train_batch`; they may override :meth:`prepare` to choose values
    before training (kept in checkpoints, reported in :attr:`TrainResult.chosen`).
    """

    Config: ClassVar[type[TrainerConfig]] = TrainerConfig
    #: One line for ``cimguard plugins`` and help texts.
    summary: ClassVar[str] = ""

    def __init__(self, config: TrainerConfig | None = None) -> None:
        self.config = checked_config(self, config)
        #: The name reports use: the registered name when built by name, else the class name.
        self.name: str = type(self).__name__

    @classmethod
    def from_options(cls, name: str | None = None, **options: Any) -> "Trainer":
        """Build from option values (text is typed by the config); ``None`` means "not given".

        An option given explicitly that this trainer does not have is an error
        (``--alpha`` means nothing to the ``noise`` trainer).
        """
        given = {k: v for k, v in options.items() if v is not None}
        trainer = cls(cls.Config(**config_values("trainer", name or cls.__name__, cls.Config, given)))
        trainer.name = name or cls.__name__
        return trainer

    # -- what subclasses implement ----------------------------------------------------------
    def prepare(self, crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor, *, progress: bool = False) -> dict[str, Any]:
        """Values to fix before training starts (default: none)."""
        return {}

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Update ``run.weights`` on one mini-batch; return (loss, accuracy) for the log."""
        raise NotImplementedError

    # -- the shared loop ------------------------------------------------------------------
    def fit(
        self,
        crossbar: Crossbar,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        checkpoint: str | Path | None = None,
        resume: bool = False,
        progress: bool = False,
        on_epoch_end: Callable[[Run], None] | None = None,
    ) -> TrainResult:
        """Fine-tune the mapped weights of ``crossbar`` on ``(x, y)``.

        Args:
            crossbar: the model mapped onto its device; its weights are the start.
            x, y: training inputs (already shaped for the model) and class labels.
            checkpoint: file rewritten after every epoch; must not exist unless ``resume``.
            resume: continue from ``checkpoint`` (made with the same trainer, options,
                model and data); the result equals an uninterrupted run.
            progress: show a progress bar.
            on_epoch_end: called after each epoch's checkpoint is written.
        """
        checkpoint = check_checkpoint(checkpoint, resume)
        x, y = _check_training_data(crossbar, x, y)
        fingerprint = _fingerprint(crossbar, x, y)

        run = self.new_run(crossbar)
        resumed_from = None
        if resume:
            assert checkpoint is not None
            self._load(run, checkpoint, fingerprint)
            resumed_from = run.epoch
        if "prepared" not in run.extra:
            run.extra.update(self.prepare(crossbar, x, y, progress=progress))
            run.extra["prepared"] = True
            if checkpoint is not None:
                self._save(run, checkpoint, fingerprint)

        batches = math.ceil(len(x) / self.config.batch_size)
        bar = progress_bar(self.config.epochs * batches, f"training ({type(self).__name__})", "batch", progress,
                           initial=run.epoch * batches)
        try:
            while run.epoch < self.config.epochs:
                losses, correct = [], []
                order = torch.randperm(len(x), generator=run.data_generator).to(x.device)
                for start, stop in distributed.mini_batches(len(x), self.config.batch_size):
                    index = order[start:stop]
                    run.batch_size = len(index)
                    index = index[distributed.local_slice(len(index))]  # torchrun: this rank's share
                    loss, acc = self.train_batch(run, x[index], y[index])
                    losses.append(loss)
                    correct.append(acc)
                    bar.update()
                    bar.set_postfix(epoch=run.epoch + 1, loss=f"{loss:.3f}")
                run.epoch += 1
                loss_sum, correct_sum = distributed.sum_floats(sum(losses), sum(correct))  # torchrun: shares summed
                run.history.append(
                    {"epoch": run.epoch, "loss": loss_sum / len(losses), "accuracy": correct_sum / len(correct)}
                )
                if checkpoint is not None:
                    self._save(run, checkpoint, fingerprint)
                if on_epoch_end is not None:
                    on_epoch_end(run)
        finally:
            bar.close()
        return TrainResult(
            weights={name: w.detach().clone() for name, w in run.weights.items()},
            trainer=type(self).__name__,
            config=dataclasses.asdict(self.config),
            chosen={k: v for k, v in run.extra.items() if k != "prepared"},
            history=list(run.history),
            resumed_from_epoch=resumed_from,
        )

    def new_run(self, crossbar: Crossbar, *, seed: int | None = None) -> Run:
        """Fresh state: float copies of the mapped weights, a new Adam, seeded generators."""
        seed = self.config.seed if seed is None else seed
        start = dict(crossbar.imported.weights()) | dict(crossbar.source_weights or {})
        weights = {
            name: torch.nn.Parameter(start[name].detach().to(crossbar.torch_device, torch.float32).clone())
            for name in crossbar.names
        }
        optimiser = torch.optim.Adam(list(weights.values()), lr=self.config.lr)
        data_generator = torch_generator(seed)
        # A different stream for noise, so the data order does not depend on how much noise is drawn.
        noise_generator = crossbar.generator(stream_seed(seed, 1))
        return Run(crossbar, weights, optimiser, data_generator, noise_generator)

    # -- checkpoints ----------------------------------------------------------------------
    def _identity(self, fingerprint: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "trainer": f"{type(self).__module__}.{type(self).__qualname__}",
            "config": _plain(dataclasses.asdict(self.config)),
            "fingerprint": fingerprint,
        }

    def _save(self, run: Run, path: Path, fingerprint: str) -> None:
        if not distributed.is_main():  # torchrun: every rank holds the same state; rank 0 writes it
            return
        state = self._identity(fingerprint) | {
            "epoch": run.epoch,
            "weights": {name: w.detach() for name, w in run.weights.items()},
            "optimiser": run.optimiser.state_dict(),
            "data_rng": run.data_generator.get_state(),
            "noise_rng": run.noise_generator.get_state(),
            "extra": _plain(run.extra),
            "history": run.history,
        }
        # Written beside the target and renamed over it, so an interruption never leaves half a checkpoint.
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        try:
            torch.save(state, tmp_name)
            os.replace(tmp_name, path)
        finally:
            Path(tmp_name).unlink(missing_ok=True)

    def _load(self, run: Run, path: Path, fingerprint: str) -> None:
        # torchrun: rank 0 reads the file (only its host may have it) and sends the state to every rank.
        state = distributed.from_main(lambda: _read_checkpoint(path))
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise CimguardError(f"{path} is not a cimguard training checkpoint of this version")
        expected = self._identity(fingerprint)
        for key, what in (
            ("trainer", "trainer"),
            ("config", "training options"),
            ("fingerprint", "model, device mapping or training data"),
        ):
            if state.get(key) != expected[key]:
                raise CimguardError(
                    f"checkpoint {path} was made with a different {what}; resume with the same settings or start a new checkpoint"
                )
        with torch.no_grad():
            for name, w in run.weights.items():
                w.copy_(state["weights"][name])
        run.optimiser.load_state_dict(state["optimiser"])
        run.data_generator.set_state(state["data_rng"])
        run.noise_generator.set_state(state["noise_rng"])
        run.extra = dict(state["extra"])
        run.epoch = int(state["epoch"])
        run.history = list(state["history"])


def _read_checkpoint(path: Path) -> Any:
    try:
        # On the CPU: generator states must stay CPU byte tensors; weights and Adam's
        # moments are moved to the parameters' device as they are copied in.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user problem
        raise CimguardError(f"{path} is not a cimguard training checkpoint ({type(exc).__name__})") from None


def check_checkpoint(checkpoint: str | Path | None, resume: bool) -> Path | None:
    """The checkpoint rules, checked before any work (by :meth:`Trainer.fit` and early by the CLI).

    Without ``resume`` the checkpoint is a new output: it must not exist (a run never
    overwrites another run's checkpoint) and its folder must.  With ``resume`` it is
    an input and must exist.
    """
    if checkpoint is None:
        if resume:
            raise CimguardError("--resume needs --checkpoint PATH (the checkpoint of the interrupted run)")
        return None
    path = Path(checkpoint)
    if not distributed.is_main():  # torchrun: the file is rank 0's to read and write, and rank 0 checks it
        return path
    if resume:
        if not path.is_file():
            raise CimguardError(f"cannot resume: checkpoint {path} does not exist")
    elif path.exists():
        raise CimguardError(f"checkpoint {path} already exists; pass --resume to continue from it or choose a new path")
    elif not path.parent.is_dir():
        raise CimguardError(f"checkpoint folder {path.parent} does not exist")
    return path


# -- right-censored Gaussian noise (TRICE) ----------------------------------------------------


# -- helpers --------------------------------------------------------------------------------


def _check_training_data(crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if len(x) == 0:
        raise CimguardError("the training split is empty")
    if len(x) != len(y):
        raise CimguardError(f"the training split has {len(x)} inputs but {len(y)} labels")
    x = x.to(crossbar.torch_device)
    x = x.float() if x.is_floating_point() else x  # integer token ids stay integers
    y = y.to(crossbar.torch_device).long()
    num_classes = crossbar.logits(x[:1]).shape[1]
    if y.dim() != 1 or int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise CimguardError(f"training labels must be class indices 0..{num_classes - 1}")
    return x, y


def _fingerprint(crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor) -> str:
    """A hash of the starting weights, the crossbar layout, the device and the training data."""
    digest = hashlib.sha256()
    start = dict(crossbar.imported.weights()) | dict(crossbar.source_weights or {})
    for name in crossbar.names:
        digest.update(name.encode())
        digest.update(start[name].detach().float().cpu().numpy().tobytes())
    digest.update(repr(dataclasses.asdict(crossbar.config)).encode())
    digest.update(f"{type(crossbar.device).__name__}{dataclasses.asdict(crossbar.device.config)}".encode())
    digest.update(x.detach().cpu().numpy().tobytes())
    digest.update(y.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _plain(value: Any) -> Any:
    """Config values as plain lists/dicts (what ``torch.load(weights_only=True)`` returns for them)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
