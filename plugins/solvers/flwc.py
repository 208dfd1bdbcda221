"""``flwc``: fast worst-case search (F-LWC), FGSM-style sign steps on the whole evaluation set.

From ``ΔW = 0``, every iteration sums the Carlini–Wagner margin gradient over the
*whole* evaluation set (one chip serves every input) and steps
``ΔW ← clip(ΔW − η · sign(∇), −bound, bound)`` with ``η = bound / k``, until
``max |ΔW|`` reaches the bound or the iteration budget ends.  After Yan, Hu, Shi,
TCAD 2024 (arXiv 2312.06137); the clip keeps the answer feasible (the authors'
code relies on the stop rule alone).  The accuracy of every iterate is read off
the gradient pass itself, so the trace costs no extra forward passes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.plugin_api import (
    AttackProblem,
    CimguardError,
    Perturbation,
    Solver,
    SolverConfig,
    Tracker,
    accuracy,
    hookimpl,
    is_finite,
    linf_ratio,
    margin_gradient_with_accuracy,
)


@dataclass(frozen=True)
class FLWCConfig(SolverConfig):
    """F-LWC options (``iterations`` is the budget of sign steps)."""

    iterations: int = 60
    """Budget of sign steps (each one pass over the data); with ``stop_at_bound`` the box ends the
    search after about ``k`` steps.  The same default as ``pgd`` so that their guarantee holds with
    ``stop_at_bound=false`` too."""
    k: float = 10.0
    """Steps to cross the box: the step is ``η = bound / k`` (the authors use 10 or 20)."""
    stop_at_bound: bool = True
    """Stop once ``max |ΔW|`` reaches the bound (the paper's rule); False: use the whole budget.
    ``pgd`` is guaranteed no worse than ``flwc`` only when both use the same value (see ``pgd``)."""

    def validate(self) -> None:
        super().validate()
        if not is_finite(self.k) or self.k <= 0:
            raise CimguardError(f"k must be a finite number > 0, got {self.k}")


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
    schedule=None,
) -> tuple[Perturbation, int]:
    """Projected sign-gradient descent on the summed margin; every iterate goes to ``tracker``.

    ``schedule(t)`` (optional) scales the step at iteration ``t``.  Returns the last
    iterate and the number of steps taken.  Iterate ``t`` is scored from the logits of the gradient pass at ``t``;
    the final iterate costs one extra forward pass.

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
        grads, margin, acc = margin_gradient_with_accuracy(problem.crossbar, problem.data, delta, kappa)
        tracker.advance()
        tracker.record(delta, acc, phase=label, iteration=t, margin=margin, distance=distance)
        if acc <= 0.0:
            stopped, scored = f"{label}: accuracy 0 (every margin negative) after {t + 1} passes", True
            break
        if not any(bool(((grad != 0) & (problem.bounds[name] > 0)).any()) for name, grad in grads.items()):
            stopped, scored = f"{label}: the margin gradient vanished after {t + 1} passes", True
            break
        scale = 1.0 if schedule is None else schedule(t)
        with torch.no_grad():  # in place: this is sign_step + project without new full-size tensors
            for name, value in delta.items():
                value.addcmul_(torch.sign(grads[name]), step[name], value=-scale)
                torch.clamp(value, -problem.bounds[name], problem.bounds[name], out=value)
        taken += 1
    if not scored:
        final = accuracy(problem.crossbar, problem.data, delta)
        tracker.record(delta, final, phase=label, iteration="final", distance=linf_ratio(delta, problem.bounds))
    tracker.stop(stopped)
    return delta, taken


def flwc_step(problem: AttackProblem, k: float) -> Perturbation:
    """The F-LWC step ``η = bound / k`` per weight."""
    return {name: bound / k for name, bound in problem.bounds.items()}


class FLWC(Solver):
    Config = FLWCConfig
    summary = "F-LWC: sign steps of bound/k from ΔW=0 on the whole-set margin gradient (Yan et al. 2024)"

    def total_passes(self, problem: AttackProblem) -> int:
        config = self.config
        if config.stop_at_bound:
            return min(config.iterations, math.ceil(config.k))
        return config.iterations

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        sign_descent(problem, problem.crossbar.zeros(), self.config.iterations, flwc_step(problem, self.config.k),
                     self.config.kappa, tracker, stop_at_bound=self.config.stop_at_bound)


@hookimpl
def register_solvers(register):
    register("flwc", FLWC)
