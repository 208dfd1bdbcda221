"""The gradient machinery solvers share: the Carlini–Wagner margin, its gradient w.r.t. ``ΔW``, the
F-LWC sign descent, and the box geometry (projection, distance to the surface).

They live in the core, not in a solver plugin, so ``flwc`` and ``pgd`` (and third-party
solvers, through :mod:`cimguard.plugin_api`) use them without importing each other.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from cimguard import distributed
from cimguard.sim.crossbar import Crossbar, Perturbation
from cimguard.sim.evaluate import EvalData, accuracy, local_part
from cimguard.sim.solve import AttackProblem, Tracker


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``; negative means wrong."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(true - others.max(dim=1).values, min=-kappa)


def margin_gradient(
    crossbar: Crossbar, data: EvalData, perturbation: Perturbation, kappa: float = 0.0
) -> tuple[Perturbation, float]:
    """Gradient of the summed margin over all of ``data`` w.r.t. ``ΔW``, and the summed margin."""
    grads, total, _ = margin_gradient_with_accuracy(crossbar, data, perturbation, kappa)
    return grads, total


def margin_gradient_with_accuracy(
    crossbar: Crossbar, data: EvalData, perturbation: Perturbation, kappa: float = 0.0
) -> tuple[Perturbation, float, float]:
    """:func:`margin_gradient` plus the accuracy of the chip ``perturbation``.

    The accuracy is read off the logits the gradient pass computes anyway, so a
    solver that reports it every iteration pays no extra forward pass.  Under torchrun
    each rank takes its share of the data and the sums are all-reduced: every rank
    gets the whole-set gradient, margin and accuracy (see :mod:`cimguard.distributed`).
    """
    delta = {name: value.detach().requires_grad_(True) for name, value in perturbation.items()}
    total = 0.0
    correct = 0
    grads = {name: torch.zeros_like(value) for name, value in perturbation.items()}
    for x, y in local_part(data).batches():
        logits = crossbar.logits(x, delta)
        loss = margin_loss(logits, y, kappa).sum()
        batch_grads = torch.autograd.grad(loss, list(delta.values()))
        for name, grad in zip(delta, batch_grads):
            grads[name] += grad
        total += float(loss.detach())
        correct += int((logits.detach().argmax(dim=1) == y).sum())
    if distributed.active():
        *summed, sums = distributed.all_reduce_sum([*grads.values(), torch.tensor([total, correct], dtype=torch.float64)])
        grads = dict(zip(grads, summed))
        total, correct = float(sums[0]), int(sums[1])
    return grads, total, correct / len(data.labels)


def sign_step(perturbation: Perturbation, gradient: Perturbation, step: Perturbation | float) -> Perturbation:
    """One FGSM step down the margin: ``ΔW - η · sign(∇)`` (η per layer or scalar)."""
    return {
        name: value - (step[name] if isinstance(step, dict) else step) * torch.sign(gradient[name])
        for name, value in perturbation.items()
    }


def sign_descent_passes(steps: int, stop_after: float | None = None) -> int:
    """Passes one :func:`sign_descent` of ``steps`` steps uses when nothing stops it early: one gradient pass per
    step and one read-out of the last iterate.  ``stop_after``: with ``stop_at_bound`` and steps of ``1/k`` of the
    bound from the nominal chip (F-LWC's), the bound is reached, and the descent stops, after ``ceil(k)`` steps."""
    return (steps if stop_after is None else min(steps, math.ceil(stop_after))) + 1


def sign_descent(
    problem: AttackProblem,
    start: Perturbation,
    steps: int,
    step: Perturbation,
    kappa: float,
    tracker: Tracker,
    *,
    stop_at_bound: bool = False,
    label: str = "flwc",
    schedule: Callable[[int], float] | None = None,
) -> tuple[Perturbation, int]:
    """Projected sign-gradient descent on the summed margin; every iterate goes to ``tracker``.

    ``schedule(t)`` (optional) scales the step at iteration ``t``.  Returns the last
    iterate and the number of steps taken.  Iterate ``t`` is scored from the logits of the gradient pass at ``t``;
    the final iterate costs one extra forward pass (counted as a pass: ``steps + 1`` passes in all when
    nothing stops it early).  A solver's budget (:meth:`Tracker.advance`) can end it at any pass.

    The descent stops early, and says why in the trace (``stopped``), when there is
    nothing left to find: the accuracy is 0 (every margin is negative: no chip can do
    worse) or the gradient vanished inside the box (every step would leave ΔW where it is,
    e.g. a label-free model whose margins are all clamped at ``-κ``).
    """
    delta = {name: value.clone() for name, value in start.items()}
    taken = 0
    stopped = f"{label}: used its {steps} steps"
    scored = False  # True when the last iterate's accuracy is already in the trace
    for t in range(steps):
        distance = linf_ratio(delta, problem.bounds)
        if stop_at_bound and distance >= 1.0 - 1e-6:
            stopped = f"{label}: reached the box (max |ΔW| = bound)"
            break
        tracker.advance()
        grads, margin, acc = margin_gradient_with_accuracy(problem.crossbar, problem.data, delta, kappa)
        tracker.record(delta, acc, phase=label, iteration=t, margin=margin, distance=distance)
        if acc <= 0.0:
            stopped, scored = f"{label}: accuracy 0 (every margin negative) after {t + 1} passes", True
            break
        if gradient_vanished(grads, problem.bounds):
            stopped, scored = f"{label}: the margin gradient vanished after {t + 1} passes", True
            break
        scale = 1.0 if schedule is None else schedule(t)
        with torch.no_grad():  # in place: this is sign_step + project without new full-size tensors
            for name, value in delta.items():
                value.addcmul_(torch.sign(grads[name]), step[name], value=-scale)
                torch.clamp(value, -problem.bounds[name], problem.bounds[name], out=value)
        taken += 1
    if not scored:
        tracker.advance()  # the last iterate's read-out is a forward pass of its own
        final = accuracy(problem.crossbar, problem.data, delta)
        tracker.record(delta, final, phase=label, iteration="final", distance=linf_ratio(delta, problem.bounds))
    tracker.stop(stopped)
    return delta, taken


def flwc_step(problem: AttackProblem, k: float) -> Perturbation:
    """The F-LWC step ``η = bound / k`` per weight."""
    return {name: bound / k for name, bound in problem.bounds.items()}


def gradient_vanished(gradient: Perturbation, bounds: Perturbation) -> bool:
    """True when no weight that may move (bound > 0) has a non-zero margin gradient: a sign step goes nowhere."""
    return not any(bool(((grad != 0) & (bounds[name] > 0)).any()) for name, grad in gradient.items())


def project(perturbation: Perturbation, bounds: Perturbation) -> Perturbation:
    """The nearest point of the box ``|ΔW| <= bound`` (what a solver does to stay feasible)."""
    return {name: torch.clamp(value, -bounds[name], bounds[name]) for name, value in perturbation.items()}


def linf_ratio(perturbation: Perturbation, bounds: Perturbation) -> float:
    """``max |ΔW| / bound`` over all weights: 1.0 means the box is reached (0-bound weights skipped)."""
    worst = 0.0
    with torch.no_grad():
        for name, value in perturbation.items():
            if not value.numel():
                continue
            # 0/0 (a weight with no box that did not move) is NaN -> 0; x/0 stays inf (a violation).
            ratio = value.abs().div_(bounds[name]).nan_to_num_(nan=0.0, posinf=float("inf"))
            worst = max(worst, float(ratio.max()))
    return worst
