"""Device models: what one programmed non-volatile memory cell does.

A device stores one of ``levels = 2**bits_per_device`` conductance levels.  All
quantities handed between a device and the crossbar are in *level units* (one
level = the conductance step ``(g_max_us - g_min_us) / (levels - 1)``), so the
crossbar can turn them into weight perturbations without knowing the physics.
Devices that are characterised in µS convert with :meth:`Device.to_levels`.

A device's life has two stages, and the order matters:

1. *programming* with write-verify: one programming attempt deviates by
   ``N(0, programming_sigma(level))``; program-and-verify repeats it until
   ``|deviation| <= thg``, so the accepted deviation is that normal truncated to
   ``[-thg, thg]`` (exact inverse-CDF sampling, no rejection loop);
2. *after programming* (optional): drift and read noise act on the programmed
   conductance.  They happen after write-verify, so they are **not** truncated.

Monte Carlo draws millions of devices per chip, so the hot path is prepared once
per crossbar (:meth:`Device.sampler`): everything that depends only on the target
levels is computed up front, and one chip costs one uniform draw, one ``erfinv``
and a few multiplies per device.  ``sample_deviation`` runs the same code, so both
give identical numbers for the same generator.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch

from cimguard.errors import CimguardError
from cimguard.options import checked_config
from cimguard.options import field_docs as _field_docs


@dataclass(frozen=True)
class DeviceConfig:
    """Parameters every device has.  Subclass it to add a device's own."""

    bits_per_device: int = 1
    """Bits stored per device (B); the device has ``2**B`` conductance levels."""
    g_min_us: float = 0.0
    """Conductance of the lowest level, in µS."""
    g_max_us: float = 1.0
    """Conductance of the highest level, in µS."""
    thg: float = 0.03
    """Write-verify threshold in level units: a device is re-programmed until
    ``|g - g_target| <= thg`` levels.  ``inf`` disables write-verify."""

    def validate(self) -> None:
        """Raise :class:`CimguardError` for parameters that make no physical sense."""
        if self.bits_per_device < 1 or self.bits_per_device > 8:
            raise CimguardError(f"bits_per_device must be between 1 and 8 (levels >= 2), got {self.bits_per_device}")
        if not self.g_max_us > self.g_min_us or self.g_min_us < 0:
            raise CimguardError(
                f"the conductance range must satisfy 0 <= g_min_us < g_max_us, got {self.g_min_us}..{self.g_max_us} µS"
            )
        if math.isnan(self.thg) or self.thg < 0:
            raise CimguardError(f"thg must be >= 0 (level units), got {self.thg}")

    @property
    def levels(self) -> int:
        return 2**self.bits_per_device


DeviationSampler = Callable[[torch.Generator | None], torch.Tensor]
"""``draw(generator) -> deviation``: one chip's deviations (level units) for fixed target levels."""

AfterProgramming = Callable[[torch.Tensor, torch.Generator | None], torch.Tensor]
"""``apply(deviation, generator) -> deviation``: drift/read noise for fixed target levels."""


def check_non_negative(name: str, value: float, unit: str = "") -> None:
    """One-line error for a parameter that must be a number ``>= 0`` (NaN rejected)."""
    if math.isnan(value) or value < 0:
        raise CimguardError(f"{name} must be >= 0{' (' + unit + ')' if unit else ''}, got {value}")


class Device:
    """Base class of device models.

    Subclasses set ``Config`` to their frozen config dataclass and override
    :meth:`programming_sigma` (level units, may depend on the target level).
    Devices whose state changes after programming (drift, read noise) override
    :meth:`prepare_after_programming` (fast: constants computed once per crossbar)
    or, more simply, :meth:`after_programming`.
    """

    Config: ClassVar[type[DeviceConfig]] = DeviceConfig
    #: Where the parameters come from (paper, code, data sheet); shown to users.
    source: ClassVar[str] = ""
    #: The model's formulas exactly as the code computes them, one per line; shown by
    #: ``devices --show`` and quoted verbatim by README and docs/devices.md (a test checks both).
    formulas: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: DeviceConfig | None = None) -> None:
        self.config = checked_config(self, config, finite_first=True)
        #: The name labels and reports use: the registered (or profile) name when built by name.
        self.name: str = type(self).__name__

    # -- physics -------------------------------------------------------------------------
    def programming_sigma(self, target_levels: torch.Tensor) -> torch.Tensor:
        """Standard deviation (level units) of one programming attempt at each target level."""
        raise NotImplementedError

    def program(self, target_levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Deviation (level units) of each device from its target right after write-verify.

        Program-and-verify repeats an independent programming attempt until the
        device lands within ``thg``: the accepted deviation is the programming
        distribution truncated to ``[-thg, thg]``.
        """
        return self._programming_sampler(target_levels)(generator)

    def after_programming(
        self, target_levels: torch.Tensor, deviation: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Deviation at inference time, given the deviation right after programming.

        The default device is stable: it returns ``deviation`` unchanged.
        """
        apply = self.prepare_after_programming(target_levels)
        return deviation if apply is None else apply(deviation, generator)

    def prepare_after_programming(self, target_levels: torch.Tensor) -> AfterProgramming | None:
        """Drift/read noise for fixed target levels, prepared once; ``None`` for a stable device."""
        return None

    def sample_deviation(self, target_levels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Deviation (level units) of devices programmed to ``target_levels`` when they are read."""
        return self.sampler(target_levels)(generator)

    def sampler(self, target_levels: torch.Tensor) -> DeviationSampler:
        """Prepare to draw many chips for fixed ``target_levels``; ``draw(generator)`` gives one chip.

        ``sampler(levels)(g)`` and ``sample_deviation(levels, g)`` are the same numbers.
        The crossbar prepares one sampler per block of weights (see
        :data:`cimguard.sim.crossbar.CPU_SAMPLE_BLOCK`), so ``target_levels`` is a cache-sized block there.
        """
        program = self._programming_sampler(target_levels)
        if type(self).after_programming is not Device.after_programming:
            # A subclass that overrides after_programming directly (the simple way) keeps working.
            def after(deviation: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
                return self.after_programming(target_levels, deviation, generator)

            apply: AfterProgramming | None = after
        else:
            apply = self.prepare_after_programming(target_levels)
        if apply is None:
            return program
        return lambda generator: apply(program(generator), generator)

    def _programming_sampler(self, target_levels: torch.Tensor) -> DeviationSampler:
        """Write-verified programming, with every per-device constant computed here, once."""
        from cimguard.checks import config_text

        try:
            sigma = self.programming_sigma(target_levels).to(target_levels.dtype)
        except RuntimeError as exc:
            if "overflow" not in str(exc):
                raise
            raise CimguardError(f"{type(self).__name__}: a parameter overflows {target_levels.dtype} "
                                f"({config_text(self.config)})") from None
        if bool((sigma < 0).any()) or not bool(torch.isfinite(sigma).all()):
            raise CimguardError(f"{type(self).__name__} gave a negative or non-finite programming sigma "
                                f"(the parameters overflow? {config_text(self.config)})")
        bound = float(self.config.thg)
        shape, device, dtype = target_levels.shape, target_levels.device, target_levels.dtype
        if math.isinf(bound):
            def draw_plain(generator: torch.Generator | None) -> torch.Tensor:
                return torch.empty(shape, device=device, dtype=dtype).normal_(generator=generator).mul_(sigma)

            return draw_plain
        # Truncated to [-b, b]: x = sqrt(2)·σ·erfinv(e·v), v ~ U(-1, 1), e = erf(b / (sqrt(2)·σ)).
        # e is capped just below 1 so erfinv stays finite when the window is wide (|x| <= 5.3σ then).
        sigma64 = sigma.double()
        if sigma64.numel() and bool((sigma64 == sigma64.reshape(-1)[0]).all()):
            # One σ for every device (e.g. gaussian): scalars instead of per-device tensors, less memory traffic.
            sigma64 = sigma64.reshape(-1)[0]
        width = torch.special.erf(bound / (math.sqrt(2.0) * sigma64.clamp_min(1e-300)))
        width = width.clamp(max=1.0 - 2.0**-24).to(dtype)
        scale = (math.sqrt(2.0) * sigma64).to(dtype)
        if width.dim() == 0:
            width, scale = float(width), float(scale)  # type: ignore[assignment]

        # A threshold beyond the dtype's range truncates nothing; clamp at the range (a wider clamp overflows).
        limit = min(bound, torch.finfo(dtype).max)

        def draw_verified(generator: torch.Generator | None) -> torch.Tensor:
            v = torch.empty(shape, device=device, dtype=dtype).uniform_(-1.0, 1.0, generator=generator)
            return v.mul_(width).erfinv_().mul_(scale).clamp_(-limit, limit)

        return draw_verified

    def deviation_bound(self, target_levels: torch.Tensor | None = None) -> float | torch.Tensor:
        """The largest ``|deviation|`` (level units) the worst-case solvers must consider.

        With ``target_levels`` the answer is per device (same shape): the box of a device
        programmed to that level, which is what the crossbar builds the solvers' per-weight
        box from.  Without, one number: the largest bound over all levels.  The default is the
        write-verify threshold ``thg`` at every level.  Devices whose state moves after
        write-verify (drift, read noise) or whose spread depends on the level override it.
        An override ``deviation_bound(self) -> float`` (no argument) still works: that number
        is then every level's bound (see :meth:`level_bounds`).
        """
        if target_levels is None:
            return self.config.thg
        return torch.full_like(target_levels, self.config.thg)

    def level_bounds(self, target_levels: torch.Tensor) -> torch.Tensor:
        """:meth:`deviation_bound` per device, checked: finite, ``>= 0`` and shaped like ``target_levels``."""
        import inspect

        parameters = inspect.signature(self.deviation_bound).parameters
        if parameters:
            bound = self.deviation_bound(target_levels)
        else:  # a device written before per-level boxes: one number for every level
            bound = self.deviation_bound()  # type: ignore[call-arg]
        bound = torch.as_tensor(bound, dtype=target_levels.dtype, device=target_levels.device)
        try:
            bound = bound.expand_as(target_levels)
        except RuntimeError:
            raise CimguardError(f"{type(self).__name__}.deviation_bound gave shape {tuple(bound.shape)} "
                                f"for levels of shape {tuple(target_levels.shape)}") from None
        if not bool(torch.isfinite(bound).all()) or bool((bound < 0).any()):
            raise CimguardError(
                f"the worst-case box of {type(self).__name__} is not a finite number >= 0 at every level "
                "(deviation_bound); a worst-case search needs a finite write-verify threshold thg"
            )
        return bound

    # -- units ---------------------------------------------------------------------------
    @property
    def level_step_us(self) -> float:
        """Conductance of one level step, in µS."""
        return (self.config.g_max_us - self.config.g_min_us) / (self.config.levels - 1)

    def to_conductance_us(self, levels: torch.Tensor) -> torch.Tensor:
        return self.config.g_min_us + levels * self.level_step_us

    def to_levels(self, conductance_us: torch.Tensor) -> torch.Tensor:
        """A conductance *difference* in µS expressed in level units."""
        return conductance_us / self.level_step_us


# -- describing a config -----------------------------------------------------------------------


def describe_config(config: DeviceConfig) -> list[tuple[str, Any, str]]:
    """``(field, value, docstring)`` for every field, for ``devices --show``."""
    docs = _field_docs(type(config))
    return [(f.name, getattr(config, f.name), docs.get(f.name, "")) for f in dataclasses.fields(config)]


def device_box_levels(device: Device) -> list[float]:
    """The device's own worst-case box per target level (lowest level first, level units)."""
    levels = torch.arange(device.config.levels, dtype=torch.float64)
    return [float(b) for b in device.level_bounds(levels)]
