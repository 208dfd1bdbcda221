"""``noise``: variation-aware training with the chosen device model.

Every mini-batch draws one simulated chip (``Crossbar.sample`` on the current,
re-mapped weights: each device deviates as the device model says, after
write-verify) and trains on ``W_q + ΔW``.
"""

from __future__ import annotations

import torch

from cimguard.plugin_api import Run, Trainer, TrainerConfig, hookimpl


class NoiseTrainer(Trainer):
    """Noise-injection training: ΔW drawn from the device model every mini-batch."""

    Config = TrainerConfig
    summary = "variation-aware training: a device-model chip per mini-batch"

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        chip = run.chip()
        loss, acc = run.cross_entropy(chip, x, y, chip.sample(run.noise_generator))
        run.step(loss)
        return float(loss.detach()), acc


@hookimpl
def register_trainers(register):
    register("noise", NoiseTrainer)
