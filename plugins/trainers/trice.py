"""``trice``: training with right-censored Gaussian noise (TRICE, Yan, Hu, Shi, ICCAD 2023).

Every mini-batch draws RCG noise: each device deviates by ``σ · min(ε, s)``
levels, ``ε ~ N(0, 1)`` (the right tail is clipped to the threshold ``s``, the
left tail is untouched), mapped to ΔW through the crossbar formula, and the model
trains on ``W_q + ΔW``.

σ and ``s`` are chosen automatically, as the paper does, unless both are given:
a bounded grid of candidates (``sigmas`` × ``thresholds``, at most
``MAX_CANDIDATES``) is each trained for ``search_epochs`` epochs on the training
split minus a held-out validation part (``validation_fraction`` of the *training*
data, never the evaluation split) and scored by KPP: the ``kpp``-th percentile of
accuracy over ``search_chips`` Monte Carlo chips drawn from the chosen device
model on that validation part.  The best score wins (ties: higher mean, then the
earlier candidate); the final run trains from the starting weights on the whole
training split with the winner.  The device model is used only for this score.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch

from cimguard.plugin_api import (
    KPP_PERCENTILES,
    CimguardError,
    Crossbar,
    EvalData,
    Run,
    Trainer,
    TrainerConfig,
    check_rcg,
    hookimpl,
    monte_carlo,
    rcg_perturbation,
    torch_generator,
)

#: Upper bound on the number of (σ, threshold) candidates one search may train.
MAX_CANDIDATES = 25


@dataclass(frozen=True)
class TriceConfig(TrainerConfig):
    """TRICE: RCG-noise injection, σ and threshold searched by KPP unless given."""

    sigma: float | None = None
    """σ of the RCG noise in device level units; ``None``: searched over ``sigmas``."""
    threshold: float | None = None
    """Censoring threshold s in units of σ; ``None``: searched over ``thresholds``; ``inf``: no censoring."""
    sigmas: tuple[float, ...] = (0.1, 0.2, 0.4)
    """σ candidates of the search (level units)."""
    thresholds: tuple[float, ...] = (0.0, 1.0, 2.0)
    """Threshold candidates of the search (units of σ)."""
    search_epochs: int = 3
    """Epochs each candidate is trained for during the search."""
    search_chips: int = 50
    """Monte Carlo chips that score each candidate."""
    kpp: float = 1.0
    """The percentile of Monte Carlo accuracy that scores a candidate (1: the 1st percentile); one
    of the percentiles ``cimguard.sim.evaluate.monte_carlo`` reports (1, 10, 50), read from its result."""
    validation_fraction: float = 0.2
    """Share of the training split held out to score candidates."""

    def validate(self) -> None:
        super().validate()
        sigmas = (self.sigma,) if self.sigma is not None else self.sigmas
        thresholds = (self.threshold,) if self.threshold is not None else self.thresholds
        if not sigmas or not thresholds:
            raise CimguardError("the TRICE search needs at least one sigma and one threshold candidate")
        if len(sigmas) * len(thresholds) > MAX_CANDIDATES:
            raise CimguardError(
                f"the TRICE search is bounded to {MAX_CANDIDATES} (sigma, threshold) candidates, "
                f"got {len(sigmas)} x {len(thresholds)}"
            )
        for sigma in sigmas:
            for threshold in thresholds:
                check_rcg(sigma, threshold)
        if self.search_epochs < 1 or self.search_chips < 1:
            raise CimguardError("search_epochs and search_chips must be >= 1")
        if self.kpp not in KPP_PERCENTILES:
            reported = ", ".join(f"{p:g}" for p in KPP_PERCENTILES)
            raise CimguardError(f"kpp must be one of the Monte Carlo report's percentiles ({reported}), got {self.kpp:g}")
        if not 0 < self.validation_fraction < 1:
            raise CimguardError(f"validation_fraction must be between 0 and 1, got {self.validation_fraction}")


class TriceTrainer(Trainer):
    """Right-censored Gaussian noise injection with a KPP-scored search over σ and threshold."""

    Config = TriceConfig
    summary = "TRICE: right-censored Gaussian noise, sigma/threshold searched by KPP"
    config: TriceConfig

    def prepare(self, crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor, *, progress: bool = False) -> dict[str, Any]:
        config = self.config
        if config.sigma is not None and config.threshold is not None:
            return {"sigma": config.sigma, "threshold": config.threshold}
        sigmas = (config.sigma,) if config.sigma is not None else config.sigmas
        thresholds = (config.threshold,) if config.threshold is not None else config.thresholds
        x_fit, y_fit, validation = self._split(crossbar, x, y)
        if len(x_fit) == 0 or len(validation.labels) == 0:
            raise CimguardError("the training split is too small to hold out a validation part for the TRICE search")
        table = []
        for sigma in sigmas:
            for threshold in thresholds:
                candidate = type(self)(
                    dataclasses.replace(config, sigma=sigma, threshold=threshold, epochs=config.search_epochs)
                )
                result = candidate.fit(crossbar, x_fit, y_fit, progress=False)
                chip = crossbar.remapped(result.weights)
                stats = monte_carlo(chip, validation, config.search_chips, config.seed, progress=False)
                # The Monte Carlo report's own percentile, so the search scores exactly what
                # `cimguard evaluate` / `attack` report as KPP for the same chips.
                kpp = stats.percentiles[f"{config.kpp:g}"]
                table.append({"sigma": sigma, "threshold": threshold, "kpp": kpp, "mean": stats.mean})
                if progress:
                    from tqdm.auto import tqdm

                    tqdm.write(f"TRICE search: sigma {sigma:g}, threshold {threshold:g}: KPP{config.kpp:g} {kpp:.4f}, mean {stats.mean:.4f}")
        best = max(enumerate(table), key=lambda item: (item[1]["kpp"], item[1]["mean"], -item[0]))[1]
        return {"sigma": best["sigma"], "threshold": best["threshold"], "search": table}

    def _split(self, crossbar: Crossbar, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, EvalData]:
        """Hold out part of the *training* split (seeded) to score the candidates on."""
        order = torch.randperm(len(x), generator=torch_generator(self.config.seed)).to(x.device)
        held = int(round(len(x) * self.config.validation_fraction))
        validation, fit = order[:held], order[held:]
        return x[fit], y[fit], EvalData(x[validation], y[validation])

    def train_batch(self, run: Run, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        chip = run.chip()
        noise = rcg_perturbation(chip, run.extra["sigma"], run.extra["threshold"], run.noise_generator)
        loss, acc = run.cross_entropy(chip, x, y, noise)
        run.step(loss)
        return float(loss.detach()), acc


@hookimpl
def register_trainers(register):
    register("trice", TriceTrainer)
