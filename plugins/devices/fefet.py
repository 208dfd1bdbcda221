"""``fefet``: multi-level ferroelectric FET cells, σ of the programmed threshold voltage per level.

Measured source: Soliman, Chatterjee, Laleni, Müller, Kirchner, Wehn, Kämpfe,
Chauhan, Amrouch, "First demonstration of in-memory computing crossbar using
multi-level cell FeFET", Nature Communications 14, 6272 (2023),
doi:10.1038/s41467-023-42110-y.  GlobalFoundries 28 nm HKMG FeFETs (450 × 450 nm²,
1FeFET-1R cells) written by write-verify to 4 states (2 bits), Vth read at 80 nA:

* level spacing: the Methods' targets are 0.3, 0.7, 1.1 and 1.5 V, a 400 mV step;
* σ: "The maximum standard deviation of 38 mV is obtained for the difference in
  actual and target Vth" over three measured target sets (steps of 400, 333 and
  300 mV); the authors simulate 40 mV "for each state".  Per-state values appear
  only in their Fig. 5 (states 2 and 3 spread less than 0 and 1), so every level
  gets the measured maximum, 38 mV / 400 mV = 0.095 level: an upper bound per level;
* truncation: the authors' Monte Carlo netlist (TUM-AIPro/NatureCommunications_CiM_FeFET,
  ``Circuit_netlists_SPICE/id_vg.sp``: ``vary del_vth dist=gauss std=0.040``,
  ``truncate tr=3.0``) cuts the Gaussian at 3σ; the default ``thg`` is 3 × 38 mV.

The σ is measured after the paper's own write-verify, so it is the σ of the accepted
state: cimguard's truncation at ``thg`` then plays the role of the netlist's 3σ cut.
A FeFET's state is its threshold voltage, so σ is given in mV and turned into level
units by the Vth step; the conductance range is nominal (the series resistor limits
the cell current to about 0.1 µA) and does not enter the results.  Measured per-level
values, e.g. from Manna et al., IEEE TED 71(5), 2024 (state-dependent
device-to-device σ on 28 nm FeFETs), go into ``sigma_levels_mv`` in a device file.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.plugin_api import CimguardError, Device, DeviceConfig, check_non_negative, hookimpl

FEFET_SOURCE = (
    "Soliman et al., 'First demonstration of in-memory computing crossbar using multi-level cell FeFET', "
    "Nature Communications 14, 6272 (2023), doi:10.1038/s41467-023-42110-y: 28 nm HKMG FeFET, 4 states "
    "written by write-verify, Vth targets 0.3/0.7/1.1/1.5 V (400 mV step), measured max sigma(Vth) 38 mV "
    "(Results, Fig. 5); 3-sigma truncation as in the authors' netlist (TUM-AIPro/NatureCommunications_CiM_FeFET, "
    "id_vg.sp)"
)

_MEASURED_SIGMA_MV = 38.0
_VTH_STEP_MV = 400.0


def _parse_levels(value: object) -> tuple[float, ...]:
    """``"40,38"`` (CLI), ``[40, 38]`` (TOML) or a tuple -> tuple of floats."""
    if isinstance(value, str):
        parts = [p for p in value.replace(";", ",").split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise CimguardError(f"sigma_levels_mv must be a list of numbers, got {value!r}")
    try:
        return tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise CimguardError(f"sigma_levels_mv must be a list of numbers, got {value!r}") from None


@dataclass(frozen=True)
class FeFETConfig(DeviceConfig):
    """A multi-level FeFET cell: Gaussian threshold-voltage spread per level (Soliman et al. 2023)."""

    bits_per_device: int = 2
    """Bits stored per device (B): 2 bits, the 4 states measured by Soliman et al. (2023)."""
    g_min_us: float = 0.0
    """Lowest conductance in µS (nominal: σ is defined in Vth and does not use the conductance scale)."""
    g_max_us: float = 1.0
    """Highest conductance in µS (nominal: the 1 MΩ series resistor limits the cell current to about 0.1 µA)."""
    vth_step_mv: float = _VTH_STEP_MV
    """Threshold-voltage spacing of adjacent levels in mV (targets 0.3/0.7/1.1/1.5 V, Soliman et al. Methods)."""
    sigma_mv: float = _MEASURED_SIGMA_MV
    """σ of the programmed Vth around its target in mV, every level (measured maximum over states: 38 mV)."""
    sigma_levels_mv: tuple[float, ...] = ()
    """Optional σ of Vth per level in mV, lowest level first (2**B values); overrides sigma_mv."""
    thg: float = 3 * _MEASURED_SIGMA_MV / _VTH_STEP_MV
    """Write-verify threshold in level units: 3σ = 114 mV, the authors' netlist truncation (truncate tr=3.0).
    ``inf`` disables write-verify."""

    def __post_init__(self) -> None:
        # TOML gives a list and the CLI a comma-separated string; store a hashable tuple.
        object.__setattr__(self, "sigma_levels_mv", _parse_levels(self.sigma_levels_mv))

    def validate(self) -> None:
        super().validate()
        check_non_negative("sigma_mv", self.sigma_mv, "mV")
        if not self.vth_step_mv > 0:
            raise CimguardError(f"vth_step_mv must be > 0 (mV), got {self.vth_step_mv}")
        if self.sigma_levels_mv:
            if len(self.sigma_levels_mv) != self.levels:
                raise CimguardError(
                    f"sigma_levels_mv needs one value per level ({self.levels} for {self.bits_per_device} bits), "
                    f"got {len(self.sigma_levels_mv)}"
                )
            for value in self.sigma_levels_mv:
                if math.isnan(value) or value < 0:
                    raise CimguardError(f"sigma_levels_mv must all be >= 0 (mV), got {value}")


class FeFETDevice(Device):
    Config = FeFETConfig
    source = FEFET_SOURCE
    formulas = ("σ = σ(Vth)/vth_step_mv levels (38 mV / 400 mV = 0.095 level)",)

    def sigma_table_mv(self) -> torch.Tensor:
        """σ of Vth (mV) of each level, lowest first."""
        c = self.config
        return torch.tensor(c.sigma_levels_mv if c.sigma_levels_mv else (c.sigma_mv,) * c.levels)

    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        # Levels are few discrete values: the state-dependent σ is a table lookup, mV -> level units.
        table = (self.sigma_table_mv() / self.config.vth_step_mv).to(device=target_levels.device, dtype=target_levels.dtype)
        index = target_levels.round().clamp(0, self.config.levels - 1).long()
        return table[index]


@hookimpl
def register_devices(register):
    register("fefet", FeFETDevice)
