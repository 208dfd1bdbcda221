"""``pcm``: phase-change memory with programming noise, conductance drift and 1/f read noise.

The statistical model is IBM aihwkit's ``PCMLikeNoiseModel`` (after Nandakumar et
al., ICECS 2019).  Conductances in µS, ``g_max`` = 25 µS, target ``g_T``,
``r = g_T / g_max``:

* programming (one attempt): ``σ_prog = (c0 + c1·r + c2·r²) · g_max / 25`` µS,
  ``c = (0.26348, 1.9650, -1.1731)``; write-verify truncates the accepted
  deviation to ``±thg`` levels; the conductance cannot go below 0 µS
  (``g_prog = max(g_T + Δ, 0)``, as aihwkit clamps);
* drift, ``t`` seconds after programming (aihwkit counts time from ``t0``):
  ``g(t) = g_prog·((t + t0)/t0)^(−ν)``, ``t0`` = 20 s, ``ν ~ |N(μ_ν, σ_ν)|`` with
  ``μ_ν = clip(-0.0155·ln r + 0.0244, 0.049, 0.1)``,
  ``σ_ν = clip(-0.0125·ln r - 0.0059, 0.008, 0.045)``;
* 1/f read noise: ``Q_s = min(0.0088 / max((g_prog/g_max)^0.65, 1e-3), 0.2)``,
  ``g = max(g(t) + |g(t)| · Q_s · sqrt(ln((t + t0 + t_read)/(2·t_read))) · n, 0)``,
  ``n ~ N(0, 1)``, ``t_read`` = 250 ns;
* global drift compensation (on by default, as aihwkit's inference configuration
  applies ``GlobalDriftCompensation``): every conductance is multiplied by one
  factor ``α = 1 / E[((t + t0)/t0)^(−ν)]`` taken at ``g_max`` (closed form for a folded
  normal ν).  aihwkit measures its factor per tile from a reference read; a fixed
  expected factor is the deterministic stand-in (exact in expectation for one bit
  per device, where every "on" device sits at ``g_max``).

Write-verify happens at programming; drift and read noise come after it and are
not truncated.  So :meth:`PCMDevice.deviation_bound` (the box the worst-case
solvers search) is not ``thg`` once ``t`` matters: for each target level it is the
largest ``|deviation|`` when ν and the read noise stay within ``bound_z`` standard
deviations (default 3) and programming within ``±thg``; the crossbar turns these
per-level boxes into each weight's box.  It is an
envelope, not a hard limit — Gaussian read noise is unbounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from cimguard.plugin_api import (
    AfterProgramming,
    CimguardError,
    Device,
    DeviceConfig,
    check_non_negative,
    hookimpl,
)

AIHWKIT_SOURCE = (
    "IBM aihwkit PCMLikeNoiseModel (aihwkit.inference.noise.pcm), after Nandakumar et al., ICECS 2019: "
    "programming sigma = (0.26348 + 1.9650 r - 1.1731 r^2) * g_max/25 uS, r = g_T/g_max, g_max 25 uS; "
    "drift g(t) = g_prog·((t + t0)/t0)^(−ν), t0 = 20 s, nu ~ |N(mu_nu, sigma_nu)|, "
    "mu_nu = clip(-0.0155 ln r + 0.0244, 0.049, 0.1), sigma_nu = clip(-0.0125 ln r - 0.0059, 0.008, 0.045); "
    "1/f read noise Q_s = min(0.0088 / max((g/g_max)^0.65, 1e-3), 0.2), "
    "σ_read = g(t)·Q_s·sqrt(ln((t + t0 + t_read)/(2·t_read))), t_read = 250 ns; "
    "global drift compensation as aihwkit's default (here a fixed expected factor at g_max)."
)

#: aihwkit clips g_T/g_max from below before taking its logarithm.
_ZERO_CLIP = 1e-7
#: ``g/g_max`` below which ``(g/g_max)^0.65`` is under aihwkit's floor of 1e-3.
_READ_NOISE_FLOOR = 1e-3 ** (1 / 0.65)


@dataclass(frozen=True)
class PCMConfig(DeviceConfig):
    """PCM after IBM aihwkit's PCMLikeNoiseModel; times in seconds, conductances in µS."""

    bits_per_device: int = 1
    """Bits stored per device (B); 2**B levels spread evenly over g_min_us..g_max_us."""
    g_min_us: float = 0.0
    """Conductance of the lowest level, in µS (aihwkit maps weight 0 to 0 µS)."""
    g_max_us: float = 25.0
    """Conductance of the highest level, in µS (aihwkit's g_max)."""
    t: float = 0.0
    """Inference time: seconds since programming ended (aihwkit's t_inference), e.g. 86400 for one day."""
    t0: float = 20.0
    """Drift reference time t0 in seconds (aihwkit: 20 s)."""
    t_read: float = 250e-9
    """Duration of one read in seconds, sets the 1/f noise bandwidth (aihwkit: 250 ns)."""
    prog_c0: float = 0.26348
    """Programming σ polynomial, constant term, in µS for g_max = 25 µS (aihwkit prog_coeff[0])."""
    prog_c1: float = 1.9650
    """Programming σ polynomial, linear term in g_T/g_max, in µS (aihwkit prog_coeff[1])."""
    prog_c2: float = -1.1731
    """Programming σ polynomial, quadratic term in g_T/g_max, in µS (aihwkit prog_coeff[2])."""
    drift: bool = True
    """Apply conductance drift at time t."""
    read_noise: bool = True
    """Apply 1/f read noise accumulated up to time t."""
    drift_compensation: bool = True
    """Multiply conductances by the expected drift factor's inverse at g_max (global compensation)."""
    bound_z: float = 3.0
    """Standard deviations of ν and of the read noise covered by deviation_bound() (the solvers' box)."""

    def validate(self) -> None:
        super().validate()
        check_non_negative("t", self.t, "seconds")
        check_non_negative("bound_z", self.bound_z, "standard deviations")
        if not self.t0 > 0:
            raise CimguardError(f"t0 must be > 0 (seconds), got {self.t0}")
        if not self.t_read > 0:
            raise CimguardError(f"t_read must be > 0 (seconds), got {self.t_read}")
        # The σ polynomial must not go negative anywhere on the conductance range.
        lo, hi = self.g_min_us / self.g_max_us, 1.0
        points = [lo, hi]
        if self.prog_c2 != 0:
            vertex = -self.prog_c1 / (2 * self.prog_c2)
            if lo < vertex < hi:
                points.append(vertex)
        for r in points:
            sigma = self.prog_c0 + self.prog_c1 * r + self.prog_c2 * r * r
            if not sigma >= 0:
                raise CimguardError(
                    f"the PCM programming sigma polynomial is negative ({sigma:.4g} µS) at g/g_max = {r:.3g}"
                )


class PCMDevice(Device):
    Config = PCMConfig
    source = AIHWKIT_SOURCE
    formulas = (
        "σ_prog = (c0 + c1·r + c2·r²)·g_max/25 µS, r = g_T/g_max",
        "g(t) = g_prog·((t + t0)/t0)^(−ν), ν ~ |N(μ_ν, σ_ν)|",
        "σ_read = g(t)·Q_s·sqrt(ln((t + t0 + t_read)/(2·t_read)))",
    )

    # -- the model's formulas (µS, seconds) ------------------------------------------------------
    def programming_sigma_us(self, conductance_us: torch.Tensor) -> torch.Tensor:
        """σ of one programming attempt at target conductance ``g_T``, in µS."""
        c = self.config
        r = conductance_us / c.g_max_us
        return (c.prog_c0 + c.prog_c1 * r + c.prog_c2 * r * r) * (c.g_max_us / 25.0)

    def drift_parameters(self, conductance_us: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(μ_ν, σ_ν)`` of the drift exponent at target conductance ``g_T``."""
        log_r = torch.log((conductance_us / self.config.g_max_us).abs().clamp_min(_ZERO_CLIP))
        mu = (-0.0155 * log_r + 0.0244).clamp(0.049, 0.1)
        sd = (-0.0125 * log_r - 0.0059).clamp(0.008, 0.045)
        return mu, sd

    def read_noise_q(self, programmed_us: torch.Tensor) -> torch.Tensor:
        """Relative 1/f noise amplitude ``Q_s`` at the programmed conductance."""
        relative = (programmed_us.abs() / self.config.g_max_us).pow(0.65).clamp_min(1e-3)
        return (0.0088 / relative).clamp_max(0.2)

    @property
    def log_time_ratio(self) -> float:
        """``ln((t + t0) / t0)``: the drift exponent's multiplier."""
        return math.log((self.config.t + self.config.t0) / self.config.t0)

    @property
    def read_noise_time_factor(self) -> float:
        """``sqrt(ln((t + t0 + t_read) / (2 t_read)))`` (aihwkit counts t from t0)."""
        c = self.config
        return math.sqrt(math.log((c.t + c.t0 + c.t_read) / (2 * c.t_read)))

    def drift_compensation_factor(self) -> float:
        """``α = 1 / E[((t + t0)/t0)^(-ν)]`` for ν at ``g_max``; 1 without drift or compensation."""
        c = self.config
        log_t = self.log_time_ratio
        if not (c.drift and c.drift_compensation) or log_t == 0:
            return 1.0
        mu, sd = (float(v) for v in self.drift_parameters(torch.tensor(c.g_max_us, dtype=torch.float64)))
        return 1.0 / expected_folded_normal_decay(mu, sd, log_t)

    # -- the Device interface (level units) --------------------------------------------------------
    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        return self.to_levels(self.programming_sigma_us(self.to_conductance_us(target_levels)))

    def prepare_after_programming(self, target_levels: torch.Tensor) -> AfterProgramming:
        c = self.config
        step = self.level_step_us
        target_us = self.to_conductance_us(target_levels)
        target_in_steps = target_us / step
        below_zero = -target_in_steps  # the deviation that reaches 0 µS
        log_t = self.log_time_ratio
        drift = c.drift and log_t > 0
        mu, sd = self.drift_parameters(target_us) if drift else (None, None)
        read_factor = self.read_noise_time_factor if c.read_noise else 0.0
        to_levels = self.drift_compensation_factor() / step  # compensation and µS -> levels in one multiply

        def apply(deviation: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
            # No conductance below 0 µS, applied in level units so that a quiet device returns exactly
            # its write-verified deviation.
            floored = torch.maximum(deviation, below_zero)
            if not (read_factor or drift):
                return floored
            # In-place chains on fresh tensors: this runs for every device of every chip.
            g = floored.mul_(step).add_(target_us).clamp_min_(0.0)  # g_prog, µS
            if read_factor:
                # Q_s(g_prog)·sqrt(ln(...)); x^0.65 as exp(0.65·ln x), about twice as fast as pow on CPU.
                # max(x^0.65, 1e-3) = max(x, 1e-3^(1/0.65))^0.65: clamping before the log keeps exact
                # zeros (every device at 0 µS) out of ln, which is several times slower on them.
                amplitude = (
                    g.div(c.g_max_us).clamp_min_(_READ_NOISE_FLOOR).log_().mul_(0.65).exp_().clamp_min_(1e-3)
                    .reciprocal_().mul_(0.0088).clamp_max_(0.2).mul_(read_factor)
                )
            if drift:
                nu = torch.empty_like(g).normal_(generator=generator).mul_(sd).add_(mu).abs_()
                g.mul_(nu.mul_(-log_t).exp_())  # g(t) = g_prog · ((t + t0)/t0)^(-ν)
            if read_factor:
                noise = torch.empty_like(g).normal_(generator=generator)
                g.addcmul_(amplitude.mul_(g), noise).clamp_min_(0.0)  # g(t) >= 0, so |g(t)| = g(t)
            return g.mul_(to_levels).sub_(target_in_steps)

        return apply

    def deviation_bound(self, target_levels: torch.Tensor | None = None) -> float | torch.Tensor:
        """``thg`` plus the drift/read-noise envelope at time ``t`` (level units), per target level.

        Without ``target_levels``: the largest bound over all levels.  See the module doc.
        """
        table = self.bound_table()
        if target_levels is None:
            return max(table)
        values = torch.tensor(table, dtype=target_levels.dtype, device=target_levels.device)
        return values[target_levels.round().clamp(0, self.config.levels - 1).long()]

    def bound_table(self) -> list[float]:
        """The box of a device programmed to each level (lowest first), in level units."""
        c = self.config
        if not (c.drift or c.read_noise):
            return [c.thg] * c.levels
        if math.isinf(c.thg):
            return [math.inf] * c.levels
        step = self.level_step_us
        z = c.bound_z
        log_t = self.log_time_ratio
        alpha = self.drift_compensation_factor()
        read_factor = self.read_noise_time_factor if c.read_noise else 0.0
        targets = self.to_conductance_us(torch.arange(c.levels, dtype=torch.float64))
        mus, sds = self.drift_parameters(targets)
        table = []
        for target, mu, sd in zip(targets.tolist(), mus.tolist(), sds.tolist()):
            worst = c.thg
            if c.drift and log_t > 0:
                low_nu = max(mu - z * sd, 0.0)  # ν = |X|: the fold puts 0 in range when mu - z·sd < 0
                decays = (math.exp(-log_t * (mu + z * sd)), math.exp(-log_t * low_nu))
            else:
                decays = (1.0,)
            for programmed in (max(target - c.thg * step, 0.0), target + c.thg * step):
                q = float(self.read_noise_q(torch.tensor(programmed, dtype=torch.float64)))
                for decay in decays:
                    for n in (-z, z):
                        g = max(programmed * decay * (1.0 + q * read_factor * n), 0.0) * alpha
                        worst = max(worst, abs(g - target) / step)
            table.append(worst)
        return table


def expected_folded_normal_decay(mu: float, sd: float, rate: float) -> float:
    """``E[exp(-rate·|X|)]`` for ``X ~ N(mu, sd²)`` (closed form; ``sd = 0`` allowed)."""
    if sd == 0:
        return math.exp(-rate * abs(mu))

    def phi(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2.0))

    spread = rate * rate * sd * sd / 2
    return math.exp(-rate * mu + spread) * phi(mu / sd - rate * sd) + math.exp(rate * mu + spread) * phi(
        -mu / sd - rate * sd
    )


@hookimpl
def register_devices(register):
    register("pcm", PCMDevice)
