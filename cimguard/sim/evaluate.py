"""Accuracy of simulated chips: clean, one perturbation, and Monte Carlo over many chips."""

from __future__ import annotations

import dataclasses
import numbers
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from cimguard import distributed
from cimguard.errors import CimguardError
from cimguard.progress import progress_bar
from cimguard.seeds import check_seed, chip_seed
from cimguard.sim.crossbar import Crossbar

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
    # The chip's weights are formed once, not once per batch.
    weights = crossbar.perturbed_weights(perturbation)
    if distributed.active():  # under torchrun each rank counts its share of the data; the counts are summed
        (correct,) = distributed.all_reduce_sum([correct_count(crossbar, local_part(data), weights)])
        return int(correct) / len(data.labels)
    return weights_accuracy(crossbar, data, weights)


@torch.no_grad()
def weights_accuracy(crossbar: Crossbar, data: EvalData, weights: Mapping[str, torch.Tensor]) -> float:
    """Fraction of ``data`` classified as its label with the mapped weights set to ``weights``."""
    return int(correct_count(crossbar, data, weights)) / len(data.labels)


@torch.no_grad()
def correct_count(crossbar: Crossbar, data: EvalData, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """How many samples of ``data`` the chip with ``weights`` classifies as their label (a tensor on the device)."""
    correct = torch.zeros((), dtype=torch.int64, device=data.labels.device)
    for x, y in data.batches():
        # Counted on the device and read once per chip: no host sync per batch on CUDA.
        correct += (crossbar.logits_for_weights(x, weights).argmax(dim=1) == y).sum()
    return correct


def local_part(data: EvalData) -> EvalData:
    """This rank's contiguous share of the samples (all of them in one process)."""
    if not distributed.active():
        return data
    part = distributed.local_slice(len(data.labels))
    return dataclasses.replace(data, x=data.x[part], labels=data.labels[part])


@torch.no_grad()
def float_accuracy(crossbar: Crossbar, data: EvalData) -> float:
    """Accuracy of the unquantised model: the imported one, or the float weights a crossbar was
    :meth:`~cimguard.sim.crossbar.Crossbar.remapped` with (a hardened model)."""
    source = {name: weight.to(crossbar.torch_device) for name, weight in (crossbar.source_weights or {}).items()}
    correct = 0
    for x, y in local_part(data).batches():  # torchrun: this rank's share; the counts are summed below
        output = crossbar.logits_for_weights(x, source)
        correct += int((output.argmax(dim=1) == y).sum())
    (correct,) = distributed.sum_floats(correct)
    return int(correct) / len(data.labels)


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

    def to_dict(self) -> dict[str, Any]:
        """Plain data (the ``monte_carlo`` section of the reports)."""
        return dataclasses.asdict(self)

    def rows(self, metric: str = "accuracy") -> list[tuple[str, float]]:
        """``(label, value)``: mean, std, min and the KPP percentiles, as ``evaluate`` prints them."""
        return [(f"Monte Carlo mean ({self.samples} chips, seed {self.seed})", self.mean), ("Monte Carlo std", self.std),
                ("Monte Carlo min", self.min)] + [(f"KPP {ordinal(p)} percentile", v) for p, v in self.percentiles.items()]

    def table(self) -> str:
        """The statistics, one per line."""
        return "\n".join(_value_lines(self.rows()))

    def __str__(self) -> str:
        return self.table()


@dataclass
class Evaluation:
    """Float, clean-chip and Monte Carlo accuracy of one setup: what ``cimguard evaluate`` reports."""

    metric: str
    """``accuracy``, or ``agreement`` with the clean chip in label-free mode."""
    seed: int
    float_accuracy: float
    """The unquantised torch model."""
    clean_accuracy: float
    """The perfect chip: quantised weights, no device error."""
    monte_carlo: MonteCarloStats | None
    """``None`` when Monte Carlo was skipped (0 chips)."""

    def to_dict(self) -> dict[str, Any]:
        """Plain data, as in the ``evaluate`` report."""
        return {"metric": self.metric, "seed": self.seed, "float_accuracy": self.float_accuracy,
                "clean_accuracy": self.clean_accuracy,
                "monte_carlo": None if self.monte_carlo is None else self.monte_carlo.to_dict()}

    def table(self) -> str:
        """One figure per line, labels aligned (what ``cimguard evaluate`` prints)."""
        rows = [(f"float model {self.metric}", self.float_accuracy), (f"clean chip {self.metric}", self.clean_accuracy)]
        if self.monte_carlo is not None:
            rows += self.monte_carlo.rows()
        lines = _value_lines(rows)
        if self.monte_carlo is None:
            lines.append("Monte Carlo skipped (--samples 0)")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


def evaluation(crossbar: Crossbar, data: EvalData, samples: int = 100, seed: int = 0, *,
               progress: bool = False) -> Evaluation:
    """Float, clean-chip and Monte Carlo accuracy (``samples`` chips; 0 skips Monte Carlo)."""
    seed, samples = check_seed(seed), chip_count(samples)
    clean = accuracy(crossbar, data)
    floating = float_accuracy(crossbar, data)
    stats = monte_carlo(crossbar, data, samples, seed, progress=progress) if samples else None
    return Evaluation("agreement" if data.label_free else "accuracy", seed, floating, clean, stats)


def ordinal(number: str) -> str:
    """``"1"`` -> ``"1st"``, ``"12"`` -> ``"12th"`` (the KPP percentile labels)."""
    suffix = {"1": "st", "2": "nd", "3": "rd"}.get(number[-1:], "th")
    return f"{number}{'th' if number.endswith(('11', '12', '13')) else suffix}"


def _value_lines(rows: list[tuple[str, float]]) -> list[str]:
    width = max(len(label) for label, _ in rows)
    return [f"{label:<{width}}  {value:.4f}" for label, value in rows]


def chip_count(samples: object, *, allow_none: bool = True) -> int:
    """``samples`` as a whole number of Monte Carlo chips: ``>= 1``, or ``>= 0`` where 0 means "skip
    Monte Carlo" (``allow_none``); anything else is one line."""
    minimum = 0 if allow_none else 1
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or samples < minimum:
        skip = " (0 skips Monte Carlo)" if allow_none else ""
        raise CimguardError(f"Monte Carlo needs a whole number of chips >= {minimum}{skip}, got {samples!r}")
    return int(samples)


@torch.no_grad()
def monte_carlo(
    crossbar: Crossbar,
    data: EvalData,
    samples: int = 100,
    seed: int = 0,
    *,
    progress: bool = True,
    prefetch: bool | None = None,
    chips_per_pass: int | None = None,
) -> MonteCarloStats:
    """Accuracy of ``samples`` chips drawn from the device model, reproducible for a seed.

    Cost per chip: one draw of every device (prepared once per crossbar), one
    addition ``W_q + ΔW``, and one forward pass over the data.  Chips run one after
    the other: on CPU a plain loop over chips measured faster than ``vmap`` over chips
    or grouped convolutions for a small CNN.  With ``prefetch`` (the default on a CPU
    with more than one core) the next chip is drawn on a second thread while this
    chip's forward pass runs, so the draw adds no wall time while a core is free for
    it.  Each chip has its own generator (:func:`chip_seed`), so the numbers are the
    same with or without prefetch, and for any grouping of chips.

    ``chips_per_pass`` > 1 evaluates that many chips in one forward pass (their weights
    stacked, ``torch.func.vmap`` over chips): on an accelerator a small model does not
    fill the device with one chip's pass.  Default: 1 on CPU, :func:`chips_per_pass_for`
    elsewhere.  The accuracies are those of the one-chip loop.
    """
    seed, samples = check_seed(seed), chip_count(samples, allow_none=False)
    if prefetch is None:
        prefetch = crossbar.torch_device.type == "cpu" and usable_cores() > 1
    accuracies = []
    group = chips_per_pass_for(crossbar, data) if chips_per_pass is None else max(1, int(chips_per_pass))
    # Under torchrun each rank evaluates its own block of chip indices (all of them in one process).
    chips = distributed.chip_range(samples)
    # closing(): an error or Ctrl-C in a forward pass stops the sampler thread now, not at garbage collection.
    with closing(_chip_deltas(crossbar, chips, seed, prefetch)) as deltas:
        bar = progress_bar(len(chips), "Monte Carlo chips", "chip", progress)
        try:
            for group_deltas in _groups(deltas, group):
                if len(group_deltas) == 1:
                    accuracies.append(weights_accuracy(crossbar, data, crossbar.chip_weights(group_deltas[0])))
                else:
                    weights = [crossbar.chip_weights(delta) for delta in group_deltas]
                    try:
                        accuracies.extend(stacked_weights_accuracy(crossbar, data, weights))
                    except (RuntimeError, NotImplementedError):
                        # An op vmap cannot batch over weights, or the stack does not fit in memory:
                        # the same chips one by one (the numbers of the one-chip loop by definition).
                        accuracies.extend(weights_accuracy(crossbar, data, chip) for chip in weights)
                bar.update(len(group_deltas))
                if distributed.stop_requested():  # Ctrl-C under torchrun: stop at the gather, with every rank
                    break
        finally:
            bar.close()
    return summarise(distributed.gather_chips(accuracies, chips, samples), seed)


#: On an accelerator, chips are stacked into one forward pass until it holds about this many samples.
ACCELERATOR_SAMPLES_PER_PASS = 4096
#: At most this many chips per forward pass.
MAX_CHIPS_PER_PASS = 64


def chips_per_pass_for(crossbar: Crossbar, data: EvalData) -> int:
    """Chips per forward pass: 1 on CPU (measured fastest there); on an accelerator enough to fill a pass.

    Stacking helps when one chip's pass is small (LeNet on 360 digits: 100 forwards of the data
    cost 26x more than one forward of 100x the data on an H200); a large evaluation set fills the
    device alone and gets 1.
    """
    if crossbar.torch_device.type == "cpu":
        return 1
    per_pass = min(len(data.labels), data.batch_size)
    return max(1, min(MAX_CHIPS_PER_PASS, ACCELERATOR_SAMPLES_PER_PASS // max(per_pass, 1)))


def _groups(items: Iterator[torch.Tensor], size: int) -> Iterator[list[torch.Tensor]]:
    group: list[torch.Tensor] = []
    for item in items:
        group.append(item)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


@torch.no_grad()
def stacked_weights_accuracy(crossbar: Crossbar, data: EvalData, chips: list[Mapping[str, torch.Tensor]]) -> list[float]:
    """:func:`weights_accuracy` of several chips in one forward pass per batch (vmap over stacked weights)."""
    stacked = {name: torch.stack([chip[name] for chip in chips]) for name in chips[0]}
    per_chip = torch.func.vmap(crossbar.logits_for_weights, in_dims=(None, 0))
    correct = torch.zeros(len(chips), dtype=torch.int64, device=data.labels.device)
    for x, y in data.batches():
        correct += (per_chip(x, stacked).argmax(dim=-1) == y).sum(dim=1)
    return [int(c) / len(data.labels) for c in correct.tolist()]


def _chip_deltas(crossbar: Crossbar, chips: range, seed: int, prefetch: bool) -> Iterator[torch.Tensor]:
    """Flat ΔW of ``chips`` in order; with ``prefetch`` the next one is drawn on a thread."""

    @torch.no_grad()  # grad mode is per thread: the worker needs its own
    def draw(chip: int) -> torch.Tensor:
        return crossbar.sample_flat(crossbar.generator(chip_seed(seed, chip)))

    if not prefetch or len(chips) < 2:
        yield from map(draw, chips)
        return
    first = draw(chips[0])  # in this thread: prepares the crossbar's sampling layout before the worker uses it
    # torch releases the GIL inside its kernels, so the draw and the forward pass run on two cores.
    # Leaving the block (end, error, Ctrl-C) waits for the one draw in flight, then stops the thread.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="cimguard-chip-sampler") as worker:
        pending = worker.submit(draw, chips[1])
        yield first
        for chip in chips[2:]:
            delta = pending.result()
            pending = worker.submit(draw, chip)
            yield delta
        yield pending.result()


def usable_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # no sched_getaffinity outside Linux
        return os.cpu_count() or 1


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
