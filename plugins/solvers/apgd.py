"""``apgd``: the default worst-case search, parameter-free and budget-aware (after AutoAttack's APGD).

Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
parameter-free attacks", ICML 2020, adapted from an input box to cimguard's weight box
``|ΔW| <= bound`` (per weight: a uniform thg or the device's own per-level box):

- every iterate costs exactly one pass: the whole-set margin gradient, whose logits also give
  the iterate's accuracy (``margin_gradient_with_accuracy``), so read-outs are free;
- the first step is the F-LWC direction from ``ΔW = 0`` with step ``2 · bound``: the box's corner
  ``-bound · sign(∇)``, which is where F-LWC ends after its ``k`` steps;
- then sign steps of ``η · bound`` with momentum 0.75 (``x ← P(x + 0.75 (z − x) + 0.25 (x − x_prev))``,
  ``z = P(x − η · bound · sign(∇))``), every iterate projected into the box;
- at checkpoints placed as fractions of the budget (0.22, then shrinking gaps of at least 0.06) the
  step halves, and the search restarts from the best chip so far (its stored gradient: no extra pass),
  when fewer than 75 % of the steps since the last checkpoint lowered the summed margin, or when the
  step was not halved last time and the best chip did not improve since;
- an iterate whose margin gradient vanished (a step so large it silenced the network: every margin
  flat) that is not the best chip counts as a failed checkpoint: halve, back to the best chip;
- the best chip (lowest accuracy, ties: lowest summed margin) is returned.

The schedule is a function of the budget alone (``budget`` if set, else ``iterations``), so it spends
any budget without hand-set options.  No randomness: the answer is the same for every seed.  It stops
early, as every solver, when a chip has accuracy 0 or the gradient vanishes at the best chip.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.plugin_api import (
    AttackProblem,
    Perturbation,
    Solver,
    SolverConfig,
    Tracker,
    gradient_vanished,
    hookimpl,
    linf_ratio,
    margin_gradient_with_accuracy,
    project,
    sign_step,
)

#: APGD's constants (Croce & Hein 2020): the momentum weight, the fraction of improving steps a
#: checkpoint asks for, the first step (in bounds: from ΔW = 0 it lands on the box's corner).
MOMENTUM = 0.75
PROGRESS = 0.75
FIRST_STEP = 2.0


def checkpoints(budget: int) -> list[int]:
    """The passes at which APGD checks its progress: ``⌈p_j · budget⌉`` with ``p_0 = 0``, ``p_1 = 0.22``,
    ``p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06)`` (Croce & Hein 2020), those before the budget's end."""
    fractions = [0.0, 0.22]
    while fractions[-1] < 1.0:
        fractions.append(fractions[-1] + max(fractions[-1] - fractions[-2] - 0.03, 0.06))
    return sorted({math.ceil(p * budget) for p in fractions[1:] if 0 < math.ceil(p * budget) < budget})


@dataclass(frozen=True)
class APGDConfig(SolverConfig):
    """APGD has no tuning options: only the passes it may use (``budget`` caps ``iterations``)."""

    iterations: int = 100
    """Passes the search plans for when no ``budget`` is given (each: one iterate's gradient and accuracy)."""


class APGD(Solver):
    Config = APGDConfig
    summary = "APGD (default): budget-aware sign steps, momentum, step halving with restarts from the best chip"

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        budget = self.total_passes(problem)  # the schedule is laid out over min(iterations, budget)
        bounds = problem.bounds
        kappa = self.config.kappa
        marks = set(checkpoints(budget))
        eta = FIRST_STEP
        x = problem.crossbar.zeros()
        previous = x
        best: tuple[float, float] = (float("inf"), float("inf"))  # (accuracy, summed margin)
        best_x: Perturbation = x
        best_grad: Perturbation | None = None
        last_margin = float("inf")
        improving = since = 0
        eta_at_mark, best_at_mark = eta, best
        stopped = f"apgd: used its {budget} passes"
        for t in range(budget):
            tracker.advance()
            grad, margin, acc = margin_gradient_with_accuracy(problem.crossbar, problem.data, x, kappa)
            tracker.record(x, acc, phase="apgd", iteration=t, margin=margin, step=eta,
                           distance=linf_ratio(x, bounds))
            if (acc, margin) < best:
                best, best_x, best_grad = (acc, margin), x, grad
            if acc <= 0.0:
                stopped = f"apgd: accuracy 0 (every margin negative) after {t + 1} passes"
                break
            vanished = gradient_vanished(grad, bounds)
            if vanished and best_x is x:
                stopped = f"apgd: the margin gradient vanished after {t + 1} passes"
                break
            improving += margin < last_margin
            since += 1
            last_margin = margin
            if t in marks or vanished:
                stalled = improving < PROGRESS * since
                unchanged = eta == eta_at_mark and best == best_at_mark
                eta_at_mark, best_at_mark = eta, best
                # A flat iterate that is not the best (e.g. a step that silenced every ReLU) is a failed step.
                if stalled or unchanged or vanished:
                    # Halve the step and go back to the best chip, whose gradient is kept: no extra pass.
                    eta /= 2.0
                    x, previous, grad = best_x, best_x, best_grad
                    last_margin = best[1]
                improving = since = 0
            x, previous = self._step(x, previous, grad, eta, bounds, first=t == 0), x
        tracker.stop(stopped)

    @staticmethod
    def _step(x: Perturbation, previous: Perturbation, grad: Perturbation, eta: float, bounds: Perturbation,
              first: bool) -> Perturbation:
        """One projected sign step with momentum (the first step from ``ΔW = 0`` has none)."""
        weight = 1.0 if first else MOMENTUM
        with torch.no_grad():
            z = project(sign_step(x, grad, {name: eta * bound for name, bound in bounds.items()}), bounds)
            moved = {name: value + weight * (z[name] - value) + (1.0 - weight) * (value - previous[name])
                     for name, value in x.items()}
            return project(moved, bounds)


@hookimpl
def register_solvers(register):
    register("apgd", APGD)
