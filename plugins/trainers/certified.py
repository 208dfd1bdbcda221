"""``certified``: certified hardening, the weight-box analogue of IBP / CROWN-IBP training.

Per mini-batch, on the current weights re-mapped onto the crossbar, the loss is

    (1 - κ) · CE(W_q, clean logits) + κ · CE(-m)

where ``m_j`` is the certifier's lower bound of the margin ``z_y - z_j`` over every chip in the box
(:meth:`cimguard.plugin_api.BoundGraph.margin_bounds`; ``-m`` are the worst-case logits, as in
CROWN-IBP).  The bound is differentiable in the weights, so training pushes up what can be *proved*,
not only what a solver fails to find.  As in IBP training the box is ramped: its size grows
linearly from 0 to ``thg`` over the first ``ramp`` fraction of the epochs, and κ from 0 to ``kappa``,
so the clean model is not destroyed by a bound that is loose at the start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from cimguard.plugin_api import BoundGraph, CimguardError, Crossbar, Run, Trainer, TrainerConfig, hookimpl


@dataclass(frozen=True)
class CertifiedConfig(TrainerConfig):
    """Certified hardening: clean cross-entropy mixed with the cross-entropy of the certified worst logits."""

    thg: float | None = None
    """The box trained for, in device level units (the weight box is the crossbar's at this thg); default:
    the device's write-verify threshold."""
    kappa: float = 0.3
    """Final weight κ of the bound loss (``1 - κ`` stays on the clean loss); 0.3 kept the shipped LeNet's clean
    accuracy at 0.975 (benchmarks/bench_hardening.py)."""
    ramp: float = 0.5
    """Fraction of the epochs over which the box (and κ) grow linearly from 0 to full."""
    method: str = "interval"
    """The bound trained against: ``interval`` (IBP, fast) or ``crown`` (tighter, much slower)."""

    def validate(self) -> None:
        super().validate()
        if self.thg is not None and not 0 <= self.thg < float("inf"):
            raise CimguardError(f"thg must be a finite number >= 0 (level units), got {self.thg}")
        if not 0 <= self.kappa <= 1:
            raise CimguardError(f"kappa must be between 0 and 1, got {self.kappa}")
        if not 0 <= self.ramp <= 1:
            raise CimguardError(f"ramp must be between 0 and 1, got {self.ramp}")
        if self.method not in ("interval", "crown"):
            raise CimguardError(f"method must be interval or crown, got {self.method!r}")


class CertifiedTrainer(Trainer):
    """Trains against the certified margin bound over the weight box (IBP / CROWN-IBP style)."""

    Config = CertifiedConfig
    summary = "certified hardening: clean CE + CE of the certified worst logits over a ramped weight box"
    config: CertifiedConfig
    _graph: BoundGraph | None = None
    _epoch: int = -1
    _batch: int = 0

    def prepare(self, crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor, *, progress: bool = False) -> dict[str, Any]:
        thg = self.config.thg
        if thg is None:
            thg = crossbar.device.deviation_bound()
            if not thg < float("inf"):
                raise CimguardError("the device has no write-verify threshold; give the box with --trainer-param thg=...")
        return {"thg": float(thg), "batches_per_epoch": -(-len(x) // self.config.batch_size)}

    def share(self, run: Run) -> float:
        """The share of the full box and of κ now: the ramp over epochs, advanced batch by batch."""
        ramp_epochs = self.config.ramp * self.config.epochs
        if ramp_epochs <= 0:
            return 1.0
        if self._epoch != run.epoch:  # a new epoch (or a resumed run): count its batches from 0
            self._epoch, self._batch = run.epoch, 0
        self._batch += 1
        position = run.epoch + (self._batch - 1) / run.extra["batches_per_epoch"]
        return min(1.0, position / ramp_epochs)

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        chip = run.chip()
        if self._graph is None:  # the fx graph's bound rules: once per trainer, not checkpointed
            self._graph = BoundGraph(chip.imported.module, set(chip.layers))
        share = self.share(run)
        clean_loss, acc = run.cross_entropy(chip, x, y)
        loss = clean_loss
        if share > 0 and self.config.kappa > 0:
            # W_q with straight-through gradients to W; the box scales with the layer's max |W| as the chip's does.
            weights = {name: layer.nominal + delta for (name, layer), delta in
                       zip(chip.layers.items(), run.straight_through(chip).values())}
            radii = run.follows_scale(chip, chip.bounds(run.extra["thg"] * share))
            gaps = self._graph.margin_bounds(weights, radii, x, y, self.config.method, dtype=x.dtype)
            kappa = self.config.kappa * share
            loss = (1 - kappa) * clean_loss + kappa * F.cross_entropy(-gaps, y)
        run.step(loss)
        return float(loss.detach()), acc


@hookimpl
def register_trainers(register):
    register("certified", CertifiedTrainer)
