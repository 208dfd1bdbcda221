"""Worst-case search: the problem, the result, the shared gradient step, and the core's check.

A solver looks for one perturbation ``ΔW`` (one chip: shared by every input)
inside the write-verify box ``|ΔW| <= bound`` that minimises accuracy.  Accuracy
is relaxed to the Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``, which
is negative exactly when a sample is misclassified.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from cimguard.crossbar import Crossbar, Perturbation, check_within_bounds
from cimguard.errors import CimguardError
from cimguard.evaluate import EvalData, accuracy


@dataclass(frozen=True)
class AttackProblem:
    """What every solver receives."""

    crossbar: Crossbar
    """The mapped model (nominal quantised weights) and its device."""
    data: EvalData
    """Evaluation inputs and the labels accuracy is measured against."""
    bounds: Perturbation
    """Per-weight box ``|ΔW| <= bound`` from the crossbar mapping and write-verify threshold."""
    thg: float
    """The write-verify threshold the bounds come from (level units)."""


@dataclass
class WorstCase:
    """A solver's answer: one chip's ΔW, the accuracy it gives, and how the search went."""

    perturbation: Perturbation
    accuracy: float
    trace: list[dict[str, Any]] = field(default_factory=list)
    """One record per iteration or search run (accuracy, loss, distance, …)."""
    interrupted: bool = False
    """True when the search was stopped early (Ctrl-C); the result is the best so far."""


@dataclass(frozen=True)
class SolverConfig:
    """Options every solver understands."""

    iterations: int = 100
    """Iteration budget (each iteration is one pass over the evaluation data)."""
    kappa: float = 0.0
    """Confidence margin κ of the Carlini–Wagner loss."""


class Solver:
    """Base class of worst-case solvers; subclasses implement :meth:`solve`."""

    Config: ClassVar[type[SolverConfig]] = SolverConfig
    #: One line for ``cimguard plugins`` and help texts.
    summary: ClassVar[str] = ""

    def __init__(self, config: SolverConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    @classmethod
    def from_options(cls, **options: Any) -> "Solver":
        """Build with only the options this solver's config has (others are ignored)."""
        names = {f.name for f in dataclasses.fields(cls.Config)}
        return cls(cls.Config(**{k: v for k, v in options.items() if k in names and v is not None}))

    def solve(self, problem: AttackProblem, generator: torch.Generator) -> WorstCase:
        raise NotImplementedError


def margin_loss(logits: torch.Tensor, labels: torch.Tensor, kappa: float = 0.0) -> torch.Tensor:
    """Per-sample Carlini–Wagner margin ``max(Z_y - max_{j≠y} Z_j, -κ)``; negative means wrong."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(torch.nn.functional.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
    return torch.clamp(true - others.max(dim=1).values, min=-kappa)


def margin_gradient(
    crossbar: Crossbar, data: EvalData, perturbation: Perturbation, kappa: float = 0.0
) -> tuple[Perturbation, float]:
    """Gradient of the summed margin over all of ``data`` w.r.t. ``ΔW``, and the summed margin."""
    delta = {name: value.detach().requires_grad_(True) for name, value in perturbation.items()}
    total = 0.0
    grads = {name: torch.zeros_like(value) for name, value in perturbation.items()}
    for x, y in data.batches():
        loss = margin_loss(crossbar.logits(x, delta), y, kappa).sum()
        batch_grads = torch.autograd.grad(loss, list(delta.values()))
        for name, grad in zip(delta, batch_grads):
            grads[name] += grad
        total += float(loss.detach())
    return grads, total


def sign_step(perturbation: Perturbation, gradient: Perturbation, step: Perturbation | float) -> Perturbation:
    """One FGSM step down the margin: ``ΔW - η · sign(∇)`` (η per layer or scalar)."""
    return {
        name: value - (step[name] if isinstance(step, dict) else step) * torch.sign(gradient[name])
        for name, value in perturbation.items()
    }


def verified(problem: AttackProblem, result: WorstCase, solver_name: str) -> WorstCase:
    """The core's independent check of a solver's answer.

    The perturbation must lie in the box (a violation is an error, never clipped),
    and the accuracy is recomputed from scratch; the recomputed value is returned.
    """
    try:
        check_within_bounds(result.perturbation, problem.bounds)
    except CimguardError as exc:
        raise CimguardError(f"solver {solver_name!r} returned an invalid worst case: {exc}") from None
    recomputed = accuracy(problem.crossbar, problem.data, result.perturbation)
    return dataclasses.replace(result, accuracy=recomputed)
