"""Accuracy of simulated chips: clean, one perturbation, and Monte Carlo over many chips."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from tqdm.auto import tqdm

from cimguard.crossbar import Crossbar

#: Percentiles reported as KPP (k-th percentile performance), as in TRICE.
KPP_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 50.0)


@dataclass(frozen=True)
class EvalData:
    """Evaluation inputs on the crossbar's device, with the labels accuracy is measured against.

    In label-free mode ``labels`` are the clean chip's own predictions, so the
    "accuracy" is agreement with the unperturbed model.
    """

    x: torch.Tensor
    labels: torch.Tensor
    label_free: bool = False
    batch_size: int = 1024

    def batches(self):
        for start in range(0, len(self.x), self.batch_size):
            yield self.x[start : start + self.batch_size], self.labels[start : start + self.batch_size]


def make_eval_data(crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor | None, batch_size: int = 1024) -> EvalData:
    """Move data to the crossbar's device; without labels, use the clean chip's predictions."""
    x = x.to(crossbar.torch_device)
    if y is None:
        labels = predictions(crossbar, x, None, batch_size)
        return EvalData(x, labels, label_free=True, batch_size=batch_size)
    return EvalData(x, y.to(crossbar.torch_device), batch_size=batch_size)


@torch.no_grad()
def predictions(
    crossbar: Crossbar, x: torch.Tensor, perturbation: Mapping[str, torch.Tensor] | None, batch_size: int = 1024
) -> torch.Tensor:
    return torch.cat(
        [crossbar.logits(x[i : i + batch_size], perturbation).argmax(dim=1) for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def accuracy(crossbar: Crossbar, data: EvalData, perturbation: Mapping[str, torch.Tensor] | None = None) -> float:
    """Fraction of ``data`` classified as its label by the chip ``W_q + perturbation``."""
    correct = 0
    for x, y in data.batches():
        correct += int((crossbar.logits(x, perturbation).argmax(dim=1) == y).sum())
    return correct / len(data.labels)


@torch.no_grad()
def float_accuracy(crossbar: Crossbar, data: EvalData) -> float:
    """Accuracy of the imported (unquantised) model itself."""
    correct = 0
    for x, y in data.batches():
        output = crossbar.imported.module(x)
        output = output if isinstance(output, torch.Tensor) else output[0]
        correct += int((output.argmax(dim=1) == y).sum())
    return correct / len(data.labels)


@dataclass(frozen=True)
class MonteCarloStats:
    """Accuracy over simulated chips (each chip: one ΔW for the whole evaluation set)."""

    samples: int
    seed: int
    mean: float
    std: float
    min: float
    max: float
    percentiles: dict[str, float]
    """KPP: ``{"1": p1, "10": p10, "50": p50}``, accuracy percentiles over chips."""
    accuracies: list[float]


def monte_carlo(
    crossbar: Crossbar, data: EvalData, samples: int = 100, seed: int = 0, *, progress: bool = True
) -> MonteCarloStats:
    """Accuracy of ``samples`` chips drawn from the device model, reproducible for a seed."""
    generator = crossbar.generator(seed)
    accuracies = []
    for _ in tqdm(range(samples), desc="Monte Carlo chips", unit="chip", disable=not progress, leave=False):
        accuracies.append(accuracy(crossbar, data, crossbar.sample(generator)))
    return summarise(accuracies, seed)


def summarise(accuracies: list[float], seed: int) -> MonteCarloStats:
    values = np.asarray(accuracies, dtype=np.float64)
    return MonteCarloStats(
        samples=len(values),
        seed=seed,
        mean=float(values.mean()),
        std=float(values.std(ddof=1)) if len(values) > 1 else 0.0,
        min=float(values.min()),
        max=float(values.max()),
        percentiles={f"{p:g}": float(np.percentile(values, p)) for p in KPP_PERCENTILES},
        accuracies=[float(v) for v in values],
    )
