"""``fefet``: multi-level ferroelectric FET cells with a Gaussian σ per level.

What the numbers are and where they come from:

* levels and conductance ratio: Jerry et al., "Ferroelectric FET analog synapse
  for acceleration of deep neural network training", IEDM 2017, measured a 5-bit
  (32-state) FeFET synapse with a 45x tunable conductance range.  cimguard stores
  4 bits per device by default (16 of those 32 states) because the weight bits
  (8) must be a multiple of the bits per device; ``g_max/g_min = 45`` is from the
  paper, the absolute scale (1 µS) is not: σ is given in level units, so the
  scale does not enter the results.
* σ per level: the authors under study (Yan, Hu, Shi, TCAD 2024, and their code
  MariusAnje/CIM_CW) model FeFET cells with a Gaussian σ per level of 0.1 – 0.3
  levels before write-verify; the default is 0.1 at every level.
* Measured state-dependent spreads: Manna, Saha, Jiang, Ni, Sengupta,
  "Variation-Resilient FeFET-Based In-Memory Computing Leveraging Probabilistic
  Deep Learning", IEEE TED 71(5):2963–2969, 2024 (arXiv 2312.15444), report
  device-to-device and cycle-to-cycle σ as a function of the conductance state for
  28 nm HKMG FeFETs.  Their per-state values were not available to us as text, so
  none is shipped; enter them as ``sigma_levels`` in a device file (one σ per level,
  level units, lowest level first).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.device import Device, DeviceConfig, check_non_negative
from cimguard.errors import CimguardError
from cimguard.hookspecs import hookimpl

FEFET_SOURCE = (
    "levels/ratio: Jerry et al., 'Ferroelectric FET analog synapse for acceleration of deep neural network "
    "training', IEDM 2017 (5-bit, 32 states, 45x conductance range; 4 bits used by default); "
    "sigma 0.1 level per level before write-verify: Yan, Hu, Shi, TCAD 2024 (arXiv 2312.06137) and their "
    "code MariusAnje/CIM_CW; measured per-state sigma to enter via sigma_levels: Manna et al., IEEE TED "
    "71(5) 2024 (arXiv 2312.15444)"
)


def _parse_levels(value: object) -> tuple[float, ...]:
    """``"0.1,0.12"`` (CLI), ``[0.1, 0.12]`` (TOML) or a tuple -> tuple of floats."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise CimguardError(f"sigma_levels must be a list of numbers, got {value!r}")
    try:
        return tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise CimguardError(f"sigma_levels must be a list of numbers, got {value!r}") from None


@dataclass(frozen=True)
class FeFETConfig(DeviceConfig):
    """A multi-level FeFET cell: one Gaussian programming σ per level."""

    bits_per_device: int = 4
    """Bits stored per device (B): 2**B of the 32 measured states (Jerry et al. 2017)."""
    g_min_us: float = 1.0
    """Lowest conductance in µS (scale is nominal; only the ratio g_max/g_min = 45 is measured)."""
    g_max_us: float = 45.0
    """Highest conductance in µS (45x the lowest, Jerry et al. 2017)."""
    sigma: float = 0.1
    """σ of one programming attempt in level units, at every level without sigma_levels (Yan et al. 2024)."""
    sigma_levels: tuple[float, ...] = ()
    """Optional σ per level (level units, lowest level first, 2**B values), e.g. from measurements."""

    def __post_init__(self) -> None:
        # TOML gives a list and the CLI a comma-separated string; store a hashable tuple.
        object.__setattr__(self, "sigma_levels", _parse_levels(self.sigma_levels))

    def validate(self) -> None:
        super().validate()
        check_non_negative("sigma", self.sigma, "level units")
        if self.sigma_levels:
            if len(self.sigma_levels) != self.levels:
                raise CimguardError(
                    f"sigma_levels needs one value per level ({self.levels} for {self.bits_per_device} bits), "
                    f"got {len(self.sigma_levels)}"
                )
            for value in self.sigma_levels:
                if math.isnan(value) or value < 0:
                    raise CimguardError(f"sigma_levels must all be >= 0 (level units), got {value}")


class FeFETDevice(Device):
    Config = FeFETConfig
    source = FEFET_SOURCE

    def sigma_table(self) -> torch.Tensor:
        """σ (level units) of each level, lowest first."""
        c = self.config
        return torch.tensor(c.sigma_levels if c.sigma_levels else (c.sigma,) * c.levels)

    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        # Levels are few discrete values: the state-dependent σ is a table lookup.
        table = self.sigma_table().to(device=target_levels.device, dtype=target_levels.dtype)
        index = target_levels.round().clamp(0, self.config.levels - 1).long()
        return table[index]


@hookimpl
def register_devices(register):
    register("fefet", FeFETDevice)
