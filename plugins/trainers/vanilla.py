"""``vanilla``: quantisation-aware fine-tuning on the chip without any variation.

The baseline hardening is measured against (``benchmarks/bench_hardening.py``):
the same loop, optimiser and data order as every trainer, but each mini-batch sees
the nominal quantised chip, no device deviation.
"""

from __future__ import annotations

import torch

from cimguard.plugin_api import Run, Trainer, TrainerConfig, hookimpl


class VanillaTrainer(Trainer):
    """Quantisation-aware fine-tuning without any variation: the baseline hardening is compared with."""

    Config = TrainerConfig
    summary = "fine-tune on the quantised chip without variation (baseline)"

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        loss, acc = run.cross_entropy(run.chip(), x, y)
        run.step(loss)
        return float(loss.detach()), acc


@hookimpl
def register_trainers(register):
    register("vanilla", VanillaTrainer)
