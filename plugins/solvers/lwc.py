"""``lwc``: Lagrangian worst-case search (LWC) with the Carlini–Wagner margin and Adam.

For a multiplier ``c`` one *run* minimises, with Adam over ``u = ΔW / bound``
(from the best chip so far with ``warm_start``, else from 0; mini-batches of the
evaluation set, ``passes`` passes)::

    c · Σ_batch margin(W + ΔW)  +  D(u),     D(u) = thg · Σ u²   (CW-style squared distance)

The run's *achieved distance* is ``d = max |u|`` (1.0 = the write-verify box).  The
multiplier is searched as in Yan, Hu, Shi, TCAD 2024: ``c ← 10 c`` until a run
reaches the box, then bisection between the last ``c`` that stayed inside and the
first that reached it; the search stops early when ``|d − 1| · thg < tol``.  Since
``c`` moves by factors of 10, the bisection is geometric (``c = √(inside · outside)``,
and ``c ← c / 10`` while no run has stayed inside).  With ``warm_start`` (default) a
run starts from the best chip found so far instead of ``ΔW = 0``.
Every run's answer is projected into the box (a no-op for runs that stayed
inside) and scored, as is (``score_passes``, default on) the projected iterate after
every pass; the best chip seen is returned.  Scoring more than the run ends costs one
forward pass per pass and finds much better chips: a run whose ``c`` overshoots the
box passes through strong chips on its way.

Why a squared distance in the objective: Adam rescales every coordinate, so with an
L∞ distance (gradient on one weight only) ``c`` would not change the answer; with
``Σ u²`` every weight settles where ``c·∂margin`` balances ``2·thg·u``, so ``c``
trades distance for damage as the Lagrangian relaxation intends.  The box itself is
the L∞ constraint ``d <= 1``.
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
    is_main,
    linf_ratio,
    local_slice,
    margin_loss,
    mini_batches,
    project,
    sum_gradients,
)


@dataclass(frozen=True)
class LWCConfig(SolverConfig):
    """LWC options (``iterations`` is the total budget of passes over the data, all runs together)."""

    iterations: int = 100
    """Total passes over the evaluation data (runs × passes): 10 runs of c by default;
    1000 is the authors' full budget (100 runs × 10 passes)."""
    runs: int = 100
    """At most this many values of ``c`` (the authors' cap)."""
    passes: int = 10
    """Passes over the evaluation data per run (authors: 10)."""
    batch_size: int = 128
    """Mini-batch of one Adam step (authors: 128)."""
    c0: float = 1e-4
    """First multiplier (authors: 1e-4)."""
    lr: float = 0.0
    """Adam learning rate in units of the bound; 0 = automatic: ``2.6 / (Adam steps per run)``,
    the distance the authors' lr 1e-4 covers in one run at thg 0.03 on MNIST (790 steps)."""
    tol: float = 1e-5
    """Stop the search when ``|d − 1| · thg`` is below this (authors: 1e-5)."""
    score_passes: bool = True
    """Also score the projected iterate after every pass (one more pass each; the run's end is the last of
    them), not only each run's end (one pass per run)."""
    warm_start: bool = True
    """Start each run from the best chip found so far (False: from ``ΔW = 0``, as the authors)."""

    def validate(self) -> None:
        super().validate()
        if self.runs < 1 or self.passes < 1 or self.batch_size < 1:
            raise CimguardError(f"runs, passes and batch_size must be >= 1, got {self.runs}, {self.passes}, "
                                f"{self.batch_size}")
        if not is_finite(self.c0) or self.c0 <= 0:
            raise CimguardError(f"c0 must be a finite number > 0, got {self.c0}")
        if not is_finite(self.lr) or self.lr < 0:
            raise CimguardError(f"lr must be a finite number >= 0 (0: automatic), got {self.lr}")
        if not is_finite(self.tol) or self.tol < 0:
            raise CimguardError(f"tol must be a finite number >= 0, got {self.tol}")
        if self.budget == 1:
            raise CimguardError("budget must be 0 (no cap) or >= 2: one Adam pass and its read-out")


class LWC(Solver):
    Config = LWCConfig
    summary = "LWC: Lagrangian relaxation, CW margin, Adam over ΔW, search over c (Yan et al. 2024)"

    def run_cost(self, adam_passes: int) -> int:
        """Passes one run of ``adam_passes`` Adam passes costs: each pass's read-out (the run's end is the
        last of them) with ``score_passes``, else one read-out of the run's end."""
        return 2 * adam_passes if self.config.score_passes else adam_passes + 1

    def planned_passes(self, problem: AttackProblem) -> int:
        config = self.config
        return min(config.runs, config.iterations // config.passes) * self.run_cost(config.passes)

    def search(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker) -> None:
        config = self.config
        n = len(problem.data.labels)
        steps_per_run = config.passes * math.ceil(n / config.batch_size)
        lr = config.lr or 2.6 / steps_per_run
        adam_passes = config.iterations  # ``iterations`` counts Adam passes, all runs together
        c, inside, outside = config.c0, None, None
        for run in range(config.runs):
            if adam_passes < config.passes:
                tracker.stop(f"used its budget of {config.iterations} passes")
                return
            adam_passes -= config.passes
            run_passes = config.passes
            if tracker.remaining is not None:  # a pass budget shortens the last run to what it can pay for
                while run_passes and self.run_cost(run_passes) > tracker.remaining:
                    run_passes -= 1
                if not run_passes:
                    tracker.stop(f"used its budget of {tracker.budget} passes")
                    return
            start = tracker.best if config.warm_start else None
            delta, reached, acc = self._run(problem, generator, tracker, c, lr, run, start, run_passes)
            feasible = project(delta, problem.bounds)
            if acc is None:  # not read out with the passes: one forward of its own
                tracker.advance()
                acc = accuracy(problem.crossbar, problem.data, feasible)
            tracker.record(feasible, acc, record="run", run=run, c=c, distance=reached, lr=lr)
            if abs(reached - 1.0) * problem.thg < config.tol:
                tracker.stop(f"run {run}: the distance reached the box within tol")
                return
            if tracker.nothing_left:
                tracker.stop(f"accuracy 0 (every margin negative) after run {run}")
                return
            if reached >= 1.0:
                outside = c
            else:
                inside = c
            # c moves by factors of 10, so the bisection is geometric: the midpoint in log c.
            if outside is None:
                c *= 10.0
            elif inside is None:
                c /= 10.0
            else:
                c = math.sqrt(inside * outside)
        tracker.stop(f"tried {config.runs} values of c")

    def _run(self, problem: AttackProblem, generator: torch.Generator, tracker: Tracker, c: float, lr: float,
             run: int, start: Perturbation | None = None, passes: int | None = None):
        """One Adam run of ``passes`` passes (default: the config's) at multiplier ``c`` from ``start`` (feasible;
        None: ``ΔW = 0``): its end, distance and (with ``score_passes``) the accuracy of its projected end,
        else None."""
        bounds = problem.bounds
        live = {name: bound > 0 for name, bound in bounds.items()}
        u = {}
        for name, bound in bounds.items():
            if start is None:
                u[name] = torch.zeros_like(bound, requires_grad=True)
            else:  # u = ΔW / bound; weights with a zero bound stay at 0
                ratio = torch.where(live[name], start[name] / torch.where(live[name], bound, 1.0), 0.0)
                u[name] = ratio.detach().clone().requires_grad_(True)
        optimiser = torch.optim.Adam(list(u.values()), lr=lr)
        x_all, y_all = problem.data.x, problem.data.labels
        done = 0
        acc = None
        for _ in range(self.config.passes if passes is None else passes):
            tracker.advance()
            order = torch.randperm(len(y_all), generator=generator, device=y_all.device)
            for start, stop in mini_batches(len(order), self.config.batch_size):
                index = order[start:stop]
                index = index[local_slice(len(index))]  # torchrun: this rank's share of the batch
                # Weights with a zero bound (layers outside the box) stay exactly zero.
                delta = {name: u[name] * bounds[name] for name in u}
                margin = margin_loss(problem.crossbar.logits(x_all[index], delta), y_all[index], self.config.kappa)
                distance = sum(((u[name] * live[name]) ** 2).sum() for name in u)
                # The distance term is counted once: on rank 0 (always, in one process).
                loss = c * margin.sum() + (problem.thg * distance if is_main() else 0.0)
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                sum_gradients(u.values())
                optimiser.step()
            if self.config.score_passes:
                with torch.no_grad():
                    feasible = project({name: u[name] * bounds[name] for name in u}, bounds)
                tracker.advance()
                acc = accuracy(problem.crossbar, problem.data, feasible)
                tracker.record(feasible, acc, record="pass", run=run, c=c, **{"pass": done + 1})
            done += 1
            if tracker.nothing_left:
                break  # accuracy 0: the rest of this run cannot find a worse chip
        with torch.no_grad():
            delta = {name: (u[name] * bounds[name]).detach() for name in u}
        return delta, linf_ratio(delta, bounds), acc


@hookimpl
def register_solvers(register):
    register("lwc", LWC)
