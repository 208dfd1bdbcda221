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

from dataclasses import dataclass

import torch

from cimguard.plugin_api import (
    AttackProblem,
    CimguardError,
    Solver,
    SolverConfig,
    Tracker,
    flwc_step,
    hookimpl,
    is_finite,
    sign_descent,
    sign_descent_passes,
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


class FLWC(Solver):
    Config = FLWCConfig
    summary = "F-LWC: sign steps of bound/k from ΔW=0 on the whole-set margin gradient (Yan et al. 2024)"

    def planned_passes(self, problem: AttackProblem) -> int:
        config = self.config
        return sign_descent_passes(config.iterations, config.k if config.stop_at_bound else None)

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        sign_descent(problem, problem.crossbar.zeros(), self.config.iterations, flwc_step(problem, self.config.k),
                     self.config.kappa, tracker, stop_at_bound=self.config.stop_at_bound)


@hookimpl
def register_solvers(register):
    register("flwc", FLWC)
