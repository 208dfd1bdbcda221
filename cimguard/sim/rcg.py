"""Right-censored Gaussian (RCG) device noise, as TRICE and A-TRICE train with: every device deviates by
``σ · min(ε, s)`` levels, ``ε ~ N(0, 1)`` (the tail above ``s·σ`` is cut: write-verify stops an overshoot)."""

from __future__ import annotations

import math

import torch

from cimguard.errors import CimguardError
from cimguard.sim.crossbar import Crossbar, Perturbation


def rcg_mean(sigma: float, threshold: float) -> float:
    """Mean of ``σ · min(ε, s)``, ``ε ~ N(0, 1)``: ``σ · (s · (1 - Φ(s)) - φ(s))``."""
    if math.isinf(threshold):
        return 0.0 if threshold > 0 else -math.inf
    pdf = math.exp(-0.5 * threshold * threshold) / math.sqrt(2 * math.pi)
    upper_tail = 0.5 * math.erfc(threshold / math.sqrt(2))
    return sigma * (threshold * upper_tail - pdf)



def rcg_perturbation(chip: Crossbar, sigma: float, threshold: float, generator: torch.Generator) -> Perturbation:
    """One draw of RCG noise: every device deviates by ``σ · min(ε, s)`` levels, mapped to ΔW by the crossbar.

    The censoring acts on each device's conductance deviation (a device cannot end
    more than ``s·σ`` levels above its target), so through the crossbar formula
    ``ΔW = sign(W) · s_fs · Σ_i Δg_i 2**(-iB)`` it scales with the layer's full scale.

    This differs on purpose from the authors' code, which draws one ``ε`` per *weight*,
    censors it, and adds ``s_L · σ · ε'`` with no sign: there the clipped tail is "the
    weight grows more positive".  Here the noise is what the devices do, as for every
    other chip cimguard simulates, so the clipped tail is "a device's conductance
    overshoots its target", which makes ``|W|`` grow (``sign(W)``) and the mean
    shift shrinks ``|W|``.  Both are right-censored Gaussians of the same σ and
    threshold; they differ in which direction of ΔW is clipped and in the spread over
    slices (see docs/hardening.md).
    """
    perturbation = {}
    for name, layer in chip.layers.items():
        shape = (chip.slices, *layer.nominal.shape)
        noise = torch.randn(shape, generator=generator, device=chip.torch_device)
        perturbation[name] = chip.weight_delta(name, sigma * noise.clamp(max=threshold))
    return perturbation



def rcg_mean_perturbation(chip: Crossbar, sigma: float, threshold: float) -> Perturbation:
    """ΔW when every device sits at the mean of the RCG distribution."""
    mean = rcg_mean(sigma, threshold)
    return {
        name: chip.weight_delta(name, torch.full((chip.slices, *layer.nominal.shape), mean, device=chip.torch_device))
        for name, layer in chip.layers.items()
    }



def check_rcg(sigma: float, threshold: float) -> None:
    """Refuse RCG parameters that cannot give finite noise.

    A threshold of ``+inf`` is allowed (no censoring: plain Gaussian noise); ``-inf``
    would censor every draw to ``-inf`` and train to NaN, so it is refused here,
    before any work, rather than surfacing later as a broken export.
    """
    if not sigma >= 0 or math.isinf(sigma):
        raise CimguardError(f"sigma must be a finite number >= 0 (level units), got {sigma}")
    if math.isnan(threshold) or threshold == -math.inf:
        raise CimguardError(
            f"the censoring threshold must be a number or +inf (in units of sigma), got {threshold}"
        )
