"""``rram``: RRAM with a measured, state-dependent programming spread.

Programming error after Milo et al.'s IGVVA program-and-verify algorithm, as fitted
by Sandia's CrossSim (``RRAMMilo``)::

    σ_G(G) = max(A·G + B, 0) µS,   A = -0.009107,  B = 4.782321 µS,   G in µS,

over the measured range 50–225 µS (CrossSim's suggested on/off ratio 4.5).
Converted to level units with the level step ``(g_max - g_min) / (levels - 1)``.
Milo's spread is what their own verify loop leaves; cimguard's ``thg`` adds the
verify window of the paper under study on top (``thg = inf`` turns it off).  The
worst-case box of a device is ``min(thg, bound_z·σ_G(level))`` levels: the verify
window, or the spread's ``bound_z``-σ envelope (default 3σ) where that is tighter,
which is per level because σ_G falls with G.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cimguard.plugin_api import CimguardError, Device, DeviceConfig, check_non_negative, hookimpl

MILO_SOURCE = (
    "V. Milo et al., 'Optimized programming algorithms for multilevel RRAM in hardware neural networks', "
    "IEEE IRPS 2021 (https://ieeexplore.ieee.org/document/9405119), Fig. 4 (IGVVA-100); linear fit "
    "sigma_G = -0.009107*G + 4.782321 uS over 50-225 uS as in Sandia CrossSim "
    "(simulator/devices/custom/RRAM_Milo.py, class RRAMMilo). Levels per device (2 bits) and thg are "
    "cimguard defaults, not from the source."
)


@dataclass(frozen=True)
class RRAMConfig(DeviceConfig):
    """A multi-level RRAM cell whose programming spread is linear in its conductance."""

    bits_per_device: int = 2
    """Bits stored per device (B); 2**B levels spread evenly over g_min_us..g_max_us (cimguard's choice)."""
    g_min_us: float = 50.0
    """Lowest programmed conductance, in µS (CrossSim RRAMMilo: g_max / on-off ratio 4.5)."""
    g_max_us: float = 225.0
    """Highest programmed conductance, in µS (CrossSim RRAMMilo Gmax)."""
    sigma_slope: float = -0.009107
    """A in σ_G = A·G + B: change of the programming σ per µS of target conductance (µS/µS)."""
    sigma_offset_us: float = 4.782321
    """B in σ_G = A·G + B, in µS."""
    bound_z: float = 3.0
    """Standard deviations of the programming spread covered by deviation_bound() when that is
    tighter than thg (the solvers' box per level is min(thg, bound_z·σ_G(level)))."""

    def validate(self) -> None:
        super().validate()
        check_non_negative("bound_z", self.bound_z, "standard deviations")
        for end in (self.g_min_us, self.g_max_us):
            sigma = self.sigma_slope * end + self.sigma_offset_us
            if not sigma >= 0:
                raise CimguardError(
                    f"the RRAM sigma fit sigma_slope*G + sigma_offset_us is negative ({sigma:.4g} µS) at G = {end:g} µS"
                )


class RRAMDevice(Device):
    Config = RRAMConfig
    source = MILO_SOURCE
    formulas = ("σ_G = max(−0.009107·G + 4.782321, 0) µS (sigma_slope·G + sigma_offset_us)",)

    def sigma_us(self, conductance_us: torch.Tensor) -> torch.Tensor:
        """σ_G of one programming attempt at a target conductance, in µS."""
        return (self.config.sigma_slope * conductance_us + self.config.sigma_offset_us).clamp_min(0.0)

    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        return self.to_levels(self.sigma_us(self.to_conductance_us(target_levels)))

    def deviation_bound(self, target_levels: torch.Tensor | None = None) -> float | torch.Tensor:
        """``min(thg, bound_z·σ_G)`` per level (level units): σ_G shrinks as G grows, so with a
        loose verify window (or ``thg = inf``, Milo's own loop only) high levels get a smaller box."""
        levels = torch.arange(self.config.levels, dtype=torch.float64) if target_levels is None else target_levels
        bound = (self.config.bound_z * self.programming_sigma(levels)).clamp_max(self.config.thg)
        return float(bound.max()) if target_levels is None else bound


@hookimpl
def register_devices(register):
    register("rram", RRAMDevice)
