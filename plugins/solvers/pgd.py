"""``pgd``: projected sign-gradient descent with step decay and random restarts (beyond the paper).

A stronger, slower search than F-LWC for the same box ``|ΔW| <= bound``:

1. the first start *is* F-LWC with the same ``k``, ``κ`` and ``stop_at_bound``: the same
   sign steps of ``bound / k`` from ``ΔW = 0``, by the same code, for up to
   ``max(iterations, ⌈k⌉ + 1)`` steps (with ``stop_at_bound``, until the box is reached,
   normally after ``⌈k⌉`` steps).  It then continues from the best chip so far with
   decaying steps until the start has used ``iterations`` steps;
2. every further restart starts from a uniform random point of the box and runs
   the decaying schedule;
3. the best chip over all starts is returned.

**When pgd ≤ flwc is guaranteed.**  Both keep the best chip they score, so pgd is
never worse than an ``flwc`` run whose iterates are a prefix of pgd's first start:
same ``k``, ``κ`` and ``stop_at_bound``, and flwc stops no later than pgd's F-LWC phase,
i.e. ``flwc.iterations <= max(pgd.iterations, ⌈k⌉ + 1)`` or (with ``stop_at_bound``) the
phase reaches the box.  The defaults (both ``stop_at_bound=true``, both 60 iterations)
satisfy it; so does ``cimguard attack --iterations N`` with unprefixed ``--solver-param
k=…``/``stop_at_bound=…``, which set both solvers alike.  An flwc run without the stop
rule and a longer budget than pgd's explores corners pgd never visits and may do better.

The step of the decaying phase starts at ``step · bound`` and halves ``halvings``
times, evenly over the phase; every iterate is projected back into the box.
"""

from __future__ import annotations

import math
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
class PGDConfig(SolverConfig):
    """PGD options (``iterations`` is the budget of sign steps *per start*)."""

    iterations: int = 60
    """Sign steps per start (each is one pass over the evaluation data); the first start
    always completes its F-LWC phase (about ``k`` steps) even when this is smaller."""
    restarts: int = 2
    """Random starts after the first (F-LWC) start."""
    k: float = 10.0
    """Step of the first start's F-LWC phase: ``bound / k`` (as ``flwc``'s ``k``)."""
    stop_at_bound: bool = True
    """The first start's F-LWC phase stops at the box (as ``flwc``'s option); False: it uses
    the whole first start, like ``flwc`` with ``stop_at_bound=false``."""
    step: float = 0.25
    """First step of the decaying phase, as a fraction of the bound."""
    halvings: int = 4
    """How many times the step halves, evenly spread over the decaying phase."""

    def validate(self) -> None:
        super().validate()
        if self.restarts < 0 or self.halvings < 0:
            raise CimguardError(f"restarts and halvings must be >= 0, got {self.restarts} and {self.halvings}")
        if not is_finite(self.k) or self.k <= 0:
            raise CimguardError(f"k must be a finite number > 0, got {self.k}")
        if not is_finite(self.step) or self.step <= 0:
            raise CimguardError(f"step must be a finite number > 0, got {self.step}")


def _halving_schedule(length: int, halvings: int):
    def scale(t: int) -> float:
        return 0.5 ** min(halvings, (t * (halvings + 1)) // max(length, 1))

    return scale


class PGD(Solver):
    Config = PGDConfig
    summary = "projected sign-gradient descent, step decay, random restarts; first start = F-LWC"

    def flwc_phase(self) -> int:
        """Step budget of the first start's F-LWC phase (flwc with at most this budget is a prefix of it)."""
        # +1: float rounding may leave the k-th iterate a hair inside the box; the stop rule decides.
        return max(self.config.iterations, math.ceil(self.config.k) + 1)

    def planned_passes(self, problem: AttackProblem) -> int:
        # The F-LWC phase, the decay over the iterations it left, then each restart's full descent.
        config = self.config
        phase = sign_descent_passes(self.flwc_phase(), config.k if config.stop_at_bound else None)
        decay = config.iterations - (phase - 1)  # the phase's steps: its passes less the read-out
        return (phase + (sign_descent_passes(decay) if decay > 0 else 0)
                + config.restarts * sign_descent_passes(config.iterations))

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        config = self.config
        kappa = config.kappa
        # Start 0 is the F-LWC trajectory (same k, κ, stop rule and code), so any flwc run that
        # stops no later is a prefix of it and pgd's best is never worse than flwc's.
        _, flwc_passes = sign_descent(problem, problem.crossbar.zeros(), self.flwc_phase(),
                                      flwc_step(problem, config.k), kappa, tracker,
                                      stop_at_bound=config.stop_at_bound, label="start 0 (flwc)")
        decay_step = {name: bound * config.step for name, bound in problem.bounds.items()}
        remaining = config.iterations - flwc_passes
        if tracker.nothing_left:  # accuracy 0: decay and restarts cannot find a worse chip
            tracker.stop("accuracy 0 reached: decay phase and restarts skipped")
            return
        if remaining > 0 and tracker.best is not None:
            sign_descent(problem, tracker.best, remaining, decay_step, kappa, tracker, label="start 0 (decay)",
                         schedule=_halving_schedule(remaining, config.halvings))
        for restart in range(1, config.restarts + 1):
            if tracker.nothing_left:
                tracker.stop(f"accuracy 0 reached: restarts {restart}..{config.restarts} skipped")
                return
            start = {
                name: (2 * torch.rand(bound.shape, generator=generator, device=bound.device, dtype=bound.dtype) - 1) * bound
                for name, bound in problem.bounds.items()
            }
            sign_descent(problem, start, config.iterations, decay_step, kappa, tracker, label=f"start {restart}",
                         schedule=_halving_schedule(config.iterations, config.halvings))


@hookimpl
def register_solvers(register):
    register("pgd", PGD)
