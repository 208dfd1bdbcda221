"""``pgd``: projected sign-gradient descent with step decay and random restarts (beyond the paper).

A stronger, slower search than F-LWC for the same box ``|ΔW| <= bound``:

1. the first start *is* F-LWC: the same sign steps of ``bound / k`` from ``ΔW = 0``
   until the box is reached (F-LWC's stop rule).  F-LWC with the same ``k`` and ``κ``
   and any budget sees a prefix of this trajectory, so pgd's answer is never worse
   than flwc's, by construction.  It then continues from the best chip so far with
   decaying steps until the start has used ``iterations`` steps;
2. every further restart starts from a uniform random point of the box and runs
   the decaying schedule;
3. the best chip over all starts is returned.

The step of the decaying phase starts at ``step · bound`` and halves ``halvings``
times, evenly over the phase; every iterate is projected back into the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.errors import CimguardError
from cimguard.hookspecs import hookimpl
from cimguard.solve import AttackProblem, Solver, SolverConfig, Tracker
from cimguard_plugins.solvers.flwc import flwc_step, sign_descent


@dataclass(frozen=True)
class PGDConfig(SolverConfig):
    """PGD options (``iterations`` is the budget of sign steps *per start*)."""

    iterations: int = 60
    """Sign steps per start (each is one pass over the evaluation data); the first start
    always completes its F-LWC phase (about ``k`` steps) even when this is smaller."""
    restarts: int = 2
    """Random starts after the first (F-LWC) start."""
    k: float = 10.0
    """Step of the first start's F-LWC phase: ``bound / k`` (as ``flwc``'s ``k``)."""
    step: float = 0.25
    """First step of the decaying phase, as a fraction of the bound."""
    halvings: int = 4
    """How many times the step halves, evenly spread over the decaying phase."""

    def validate(self) -> None:
        if self.iterations < 0 or self.restarts < 0 or self.halvings < 0:
            raise CimguardError("pgd: iterations, restarts and halvings must be >= 0")
        if not self.k > 0 or not self.step > 0:
            raise CimguardError(f"pgd: k and step must be > 0, got k={self.k}, step={self.step}")


def _halving_schedule(length: int, halvings: int):
    def scale(t: int) -> float:
        return 0.5 ** min(halvings, (t * (halvings + 1)) // max(length, 1))

    return scale


class PGD(Solver):
    Config = PGDConfig
    summary = "projected sign-gradient descent, step decay, random restarts; first start = F-LWC"

    def total_passes(self, problem: AttackProblem) -> int:
        first = max(self.config.iterations, math.ceil(self.config.k) + 1)
        return first + self.config.iterations * self.config.restarts

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        config = self.config
        config.validate()
        kappa = config.kappa
        # Start 0 is the whole F-LWC trajectory (same k, κ, code and stop rule).  F-LWC with
        # any budget sees a prefix of it, so pgd's best is never worse than flwc's.
        # (+1: float rounding may leave the k-th iterate a hair inside the box; the stop rule decides.)
        _, flwc_passes = sign_descent(problem, problem.crossbar.zeros(), math.ceil(config.k) + 1,
                                      flwc_step(problem, config.k), kappa, tracker, stop_at_bound=True,
                                      label="start 0 (flwc)")
        decay_step = {name: bound * config.step for name, bound in problem.bounds.items()}
        remaining = config.iterations - flwc_passes
        if remaining > 0 and tracker.best is not None:
            sign_descent(problem, tracker.best, remaining, decay_step, kappa, tracker, label="start 0 (decay)",
                         schedule=_halving_schedule(remaining, config.halvings))
        for restart in range(1, config.restarts + 1):
            start = {
                name: (2 * torch.rand(bound.shape, generator=generator, device=bound.device, dtype=bound.dtype) - 1) * bound
                for name, bound in problem.bounds.items()
            }
            sign_descent(problem, start, config.iterations, decay_step, kappa, tracker, label=f"start {restart}",
                         schedule=_halving_schedule(config.iterations, config.halvings))


@hookimpl
def register_solvers(register):
    register("pgd", PGD)
