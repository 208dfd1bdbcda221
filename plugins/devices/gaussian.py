"""``gaussian``: state-independent Gaussian device variation, the authors' model.

Each device deviates from its target level by ``N(0, σ)`` levels; write-verify
truncates the deviation to ``[-thg, thg]``.  Defaults after Yan et al., TCAD 2024
(σ 0.1 before write-verify, thg 0.03) and their code (MariusAnje/CIM_CW).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cimguard.plugin_api import CimguardError, Device, DeviceConfig, hookimpl


@dataclass(frozen=True)
class GaussianConfig(DeviceConfig):
    """A device with the same Gaussian programming spread at every level."""

    sigma: float = 0.1
    """Standard deviation of one programming attempt, in level units."""

    def validate(self) -> None:
        super().validate()
        if not self.sigma >= 0:
            raise CimguardError(f"sigma must be >= 0 (level units), got {self.sigma}")


class GaussianDevice(Device):
    Config = GaussianConfig
    source = (
        "Yan, Hu, Shi, 'Compute-in-Memory based Neural Network Accelerators for Safety-Critical Systems', "
        "TCAD 2024 (arXiv 2312.06137): sigma 0.1-0.3 per level before write-verify, thg 0.03"
    )

    formulas = ("Δg ~ N(0, σ) levels, truncated to [−thg, thg] by write-verify",)

    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        return torch.full_like(target_levels, self.config.sigma)


@hookimpl
def register_devices(register):
    register("gaussian", GaussianDevice)
