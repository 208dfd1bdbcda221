"""Mapping weights onto crossbars: the one place that turns device deviations into ΔW.

A mapped weight tensor ``W`` (one layer) is stored as follows:

* full scale ``s = max|W|``; magnitudes are quantised to ``K`` bits,
  ``q = round(|W| / s * (2**K - 1))`` (so ``q = 2**K - 1`` is exactly ``s``);
* ``q`` is sliced over ``M = K / B`` devices of ``B`` bits each, most significant
  first: ``q = Σ_i g_i · 2**((M - i) B)``, ``g_i ∈ {0 … 2**B - 1}``;
* the nominal weight is ``W_q = sign(W) · s_fs · Σ_i g_i 2**(-iB)`` with
  ``s_fs = s · 2**K / (2**K - 1)``, i.e. ``sign(W) · s · q / (2**K - 1)``;
* a device that deviates by ``Δg_i`` levels perturbs the weight by
  ``ΔW = sign(W) · s_fs · Σ_i Δg_i 2**(-iB)``;
* a write-verify threshold ``|Δg_i| <= thg`` therefore bounds each weight by
  ``|ΔW| <= s_fs · thg · Σ_i 2**(-iB) = s · thg / (2**B - 1)`` (exactly ``s·thg``
  for one bit per device, the paper's ``|ΔW| / max|W| <= thg``).

The sign is held by a differential pair (or offset column) that is not modelled
as a separate device, as in the authors' reference code.

A perturbation is plain data: ``{torch_name: ΔW}``.  Evaluating a chip never
mutates the model; it calls the module functionally with ``W_q + ΔW``.

Sampling is done on one flat layout of every mapped weight, prepared once per
crossbar, so one chip costs a few tensor operations per block of weights whatever
the number of layers (see :meth:`Crossbar.sample_flat`).  On CPU the weights are
drawn in blocks of about :data:`CPU_SAMPLE_BLOCK` devices, each block turned into
ΔW at once, so the temporaries of the device's arithmetic stay in cache and the
``(M, total weights)`` deviations of a large model never exist in memory at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Mapping

import torch
from torch.func import functional_call

from cimguard.errors import CimguardError
from cimguard.onnx.model import MAPPABLE_OPS, ImportedModel, MappedWeight
from cimguard.onnx.quantized import CodeLayout, code_layout
from cimguard.seeds import torch_generator
from cimguard.sim.device import DeviationSampler, Device

Perturbation = dict[str, torch.Tensor]
"""``{torch_name: ΔW}`` over the mapped weights; one simulated chip."""

#: Devices drawn per block on CPU.  32,768 float32 values are 128 KiB per temporary (in L2 cache),
#: and torch runs element-wise ops of this size on one thread, so a sampler thread running
#: beside the forward pass (see :func:`cimguard.sim.evaluate.monte_carlo`) keeps to one core.
CPU_SAMPLE_BLOCK = 1 << 15

#: Weight bits (K) of a float model when none are given.
DEFAULT_WEIGHT_BITS = 8

#: Devices drawn per block on accelerators: large, to launch few kernels, but bounded in memory.
ACCELERATOR_SAMPLE_BLOCK = 1 << 24


@dataclass(frozen=True)
class CrossbarConfig:
    """How weights are laid out on crossbars."""

    weight_bits: int | None = None
    """Bits per weight magnitude (K); must be a multiple of the device's bits per device.  ``None``: the
    file's own width for a quantized file (8 for int8, 4 for int4), else :data:`DEFAULT_WEIGHT_BITS`."""
    layers: tuple[str, ...] = MAPPABLE_OPS
    """Which ONNX layer kinds are mapped to crossbars (others stay digital and exact)."""

    def validate(self, bits_per_device: int) -> None:
        if self.weight_bits is None:
            raise CimguardError("weight bits are not resolved (Crossbar resolves None from the model)")
        if self.weight_bits < 1 or self.weight_bits > 16:
            raise CimguardError(f"weight bits must be between 1 and 16, got {self.weight_bits}")
        if self.weight_bits % bits_per_device:
            raise CimguardError(
                f"weight bits ({self.weight_bits}) must be a multiple of the device's bits per device ({bits_per_device})"
            )
        unknown = set(self.layers) - set(MAPPABLE_OPS)
        if unknown:
            raise CimguardError(f"unknown layer kind(s) {', '.join(sorted(unknown))}; choose from {', '.join(MAPPABLE_OPS)}")


@dataclass
class MappedLayer:
    """One weight tensor as programmed: its quantised value and its device levels."""

    weight: MappedWeight
    scale: float
    """``max|W|`` of the layer."""
    nominal: torch.Tensor
    """The quantised weight ``W_q`` (what a perfect chip computes with)."""
    sign: torch.Tensor
    """``sign(W)`` with zeros counted as positive."""
    levels: torch.Tensor
    """Target level of every device, shape ``(M, *W.shape)``, most significant slice first."""
    full_scale: float | torch.Tensor = 0.0
    """``s_fs``: the weight one unit of ``Σ_i g_i 2**(-iB)`` stands for.  A float layer's
    ``max|W| · 2**K / (2**K - 1)``; a quantized file's layer ``2**K`` times its scale per weight
    (a tensor shaped like ``W``: one least significant level is one step of the file's scale)."""
    codes: CodeLayout | None = None
    """A quantized file's scale and zero point per weight (``None``: a float layer)."""


@dataclass
class Crossbar:
    """A model's mapped weights on simulated crossbars built from one device model."""

    imported: ImportedModel
    device: Device
    config: CrossbarConfig = field(default_factory=CrossbarConfig)
    source_weights: Mapping[str, torch.Tensor] | None = field(default=None, repr=False)
    """Weights to map instead of the module's own (trainers remap as they learn)."""
    layers: dict[str, MappedLayer] = field(init=False)
    torch_device: torch.device = field(init=False)

    def __post_init__(self) -> None:
        bits = self.device.config.bits_per_device
        self.config = _resolved_config(self.config, self.imported)
        self.config.validate(bits)
        chosen = [m for m in self.imported.mapped if m.op_type in self.config.layers]
        if not chosen:
            raise CimguardError(f"no layer of kind {', '.join(self.config.layers)} in the model to map to crossbars")
        state = dict(self.imported.weights()) | dict(self.source_weights or {})
        self.torch_device = next(iter(state.values())).device
        self.layers = {m.torch_name: self._map(m, state[m.torch_name].detach()) for m in chosen}
        # Slice significances 2**(-iB), i = 1..M, shaped to contract with the slice axis.
        self._significance = torch.tensor(
            [2.0 ** (-i * bits) for i in range(1, self.slices + 1)], device=self.torch_device
        )
        self._flat: _FlatLayout | None = None

    def remapped(self, weights: Mapping[str, torch.Tensor]) -> "Crossbar":
        """The same model, device and layout with other weight values programmed."""
        return Crossbar(self.imported, self.device, self.config, source_weights=weights)

    # -- geometry ---------------------------------------------------------------------------
    @property
    def slices(self) -> int:
        """Devices per weight (M = K / B)."""
        return self.config.weight_bits // self.device.config.bits_per_device

    @property
    def full_scale_factor(self) -> float:
        """``s_fs / s = 2**K / (2**K - 1)``."""
        k = self.config.weight_bits
        return 2.0**k / (2.0**k - 1)

    @property
    def names(self) -> list[str]:
        return list(self.layers)

    @property
    def num_weights(self) -> int:
        return sum(layer.nominal.numel() for layer in self.layers.values())

    def _map(self, mapped: MappedWeight, weight: torch.Tensor) -> MappedLayer:
        weight = weight.float()
        scale = float(weight.abs().max()) if weight.numel() else 0.0
        record = self.imported.quantization.weights.get(mapped.initializer) if self.imported.quantization else None
        if record is not None and math.isfinite(scale):
            return self._map_codes(mapped, weight, code_layout(record, mapped.transposed, mapped.scale, weight.device))
        if not math.isfinite(scale):
            # Models are checked at load time, so here it is weights a trainer produced.
            raise CimguardError(f"the weights of layer {mapped.node} are not finite (NaN or ±Inf): the training "
                                "diverged; lower --lr or the noise")
        k, b = self.config.weight_bits, self.device.config.bits_per_device
        top = 2**k - 1
        q = torch.round(weight.abs() / scale * top).clamp(0, top) if scale > 0 else torch.zeros_like(weight)
        sign = torch.where(weight < 0, -1.0, 1.0)
        nominal = sign * q * (scale / top if scale > 0 else 0.0)
        return MappedLayer(mapped, scale, nominal, sign, self._levels(q), scale * self.full_scale_factor)

    def _levels(self, q: torch.Tensor) -> torch.Tensor:
        """The K-bit magnitudes ``q`` as base-``2**B`` digits, one device each, most significant first."""
        base = 2**self.device.config.bits_per_device
        digits = []
        remaining = q.to(torch.int64)
        for _ in range(self.slices):
            digits.append(remaining % base)
            remaining = remaining // base
        return torch.stack(digits[::-1]).float()

    def _map_codes(self, mapped: MappedWeight, weight: torch.Tensor, layout: CodeLayout) -> MappedLayer:
        """A quantized file's weight: the devices hold ``|c - z|`` in K bits, the sign of ``c - z`` sits on
        the differential pair, and one least significant level is one step of the file's scale, so the
        nominal chip is the file's dequantized weight ``(c - z) · s`` exactly.  Weights a trainer
        produced are re-coded with the file's scale and zero point (rounded half to even, saturated)."""
        offset = layout.codes(weight) - layout.zero_point  # c - z, whole numbers
        sign = torch.where(offset < 0, -1.0, 1.0)
        nominal = offset * layout.step
        scale = float(nominal.abs().max()) if nominal.numel() else 0.0
        return MappedLayer(mapped, scale, nominal, sign, self._levels(offset.abs()),
                           layout.step * 2.0**self.config.weight_bits, layout)

    # -- the one formula ----------------------------------------------------------------------
    def weight_delta(self, name: str, deviation: torch.Tensor) -> torch.Tensor:
        """``ΔW = sign(W) · s_fs · Σ_i Δg_i 2**(-iB)`` for deviations ``(M, *W.shape)`` in level units."""
        layer = self.layers[name]
        summed = torch.tensordot(self._significance.to(deviation.dtype), deviation, dims=1)
        return layer.sign * (layer.full_scale * summed)

    def weight_bound(self, name: str, thg: float) -> float | torch.Tensor:
        """Largest ``|ΔW|`` of layer ``name`` when every device is within ``thg`` levels (per weight for a
        quantized file's per-channel or per-block scales)."""
        return self.layers[name].full_scale * thg * float(self._significance.sum())

    def bounds(self, thg: float | None = None) -> Perturbation:
        """The per-weight box ``|ΔW| <= bound`` the worst-case solvers must stay in.

        With ``thg``: every device within ``thg`` levels, a uniform box per layer (a sweep).
        Without: the device's own box, which may differ per target level
        (:meth:`cimguard.sim.device.Device.deviation_bound`); a weight whose devices sit at
        levels ``g_i`` gets ``s_fs · Σ_i b(g_i) 2**(-iB)``, the exact box of the bit-sliced
        mapping when each device ``i`` stays within ``b(g_i)``.
        """
        if thg is None:
            bounds = {name: self.weight_delta(name, self.device.level_bounds(layer.levels)) * layer.sign
                      for name, layer in self.layers.items()}
            for name, bound in bounds.items():
                if not bool(torch.isfinite(bound).all()):
                    raise CimguardError(f"the device's own box gives layer {name} bounds wider than {bound.dtype} can "
                                        "hold; choose a smaller write-verify threshold")
            return bounds
        if not 0 <= thg < float("inf"):
            raise CimguardError("a worst-case bound needs a finite write-verify threshold thg >= 0")
        widths = {name: self.weight_bound(name, thg) for name in self.layers}
        for name, width in widths.items():
            dtype = self.layers[name].nominal.dtype
            widest = float(width.max()) if isinstance(width, torch.Tensor) else width
            if not widest <= torch.finfo(dtype).max:
                raise CimguardError(f"thg {thg:g} gives layer {name} a box of ±{widest:.3g}, wider than {dtype} can "
                                    "hold; choose a smaller write-verify threshold")
        return {name: widths[name].expand_as(layer.nominal).clone() if isinstance(widths[name], torch.Tensor)
                else torch.full_like(layer.nominal, widths[name]) for name, layer in self.layers.items()}

    # -- chips ----------------------------------------------------------------------------------
    def sample(self, generator: torch.Generator | None = None) -> Perturbation:
        """ΔW of one simulated chip: every device of every layer drawn from the device model."""
        return self.unflatten(self.sample_flat(generator))

    def sample_flat(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """ΔW of one chip as one flat vector over all mapped weights (layer order of :attr:`names`).

        Same formula as :meth:`weight_delta`, applied block by block to all layers at once:
        ``ΔW = sign(W) · s_fs · Σ_i Δg_i 2**(-iB)`` with ``Δg`` from the device's prepared samplers.
        """
        flat = self._flat_layout()
        delta = torch.empty_like(flat.nominal)
        for start, stop, draw in flat.blocks:
            deviation = draw(generator)  # (M, block weights), level units
            torch.mv(deviation.t(), self._significance.to(deviation.dtype), out=delta[start:stop])
        delta.mul_(flat.factor)
        if not bool(torch.isfinite(delta).all()):
            # A chip is never an accuracy when its ΔW is not: the device parameters overflow somewhere.
            from cimguard.checks import config_text

            raise CimguardError(
                f"a simulated chip has {int((~torch.isfinite(delta)).sum())} non-finite ΔW values (NaN or ±Inf): "
                f"the weights or the {type(self.device).__name__} parameters overflow ({config_text(self.device.config)})"
            )
        return delta

    def unflatten(self, flat_delta: torch.Tensor) -> Perturbation:
        """Split a flat vector (from :meth:`sample_flat`) into ``{name: tensor shaped like W}`` views."""
        layout = self._flat_layout()
        return {
            name: flat_delta[start:stop].view(shape) for name, (start, stop, shape) in layout.spans.items()
        }

    def chip_weights(self, flat_delta: torch.Tensor) -> dict[str, torch.Tensor]:
        """``W_q + ΔW`` for every mapped layer from a flat ΔW: one addition for the whole chip."""
        return self.unflatten(self._flat_layout().nominal + flat_delta)

    def _flat_layout(self) -> "_FlatLayout":
        if self._flat is None:
            m = self.slices
            spans: dict[str, tuple[int, int, torch.Size]] = {}
            start = 0
            for name, layer in self.layers.items():
                spans[name] = (start, start + layer.nominal.numel(), layer.nominal.shape)
                start += layer.nominal.numel()
            levels = torch.cat([layer.levels.reshape(m, -1) for layer in self.layers.values()], dim=1)
            factor = torch.cat([(layer.sign * layer.full_scale).reshape(-1) for layer in self.layers.values()])
            nominal = torch.cat([layer.nominal.reshape(-1) for layer in self.layers.values()])
            block_devices = CPU_SAMPLE_BLOCK if self.torch_device.type == "cpu" else ACCELERATOR_SAMPLE_BLOCK
            per_block = max(1, block_devices // m)
            total = nominal.numel()
            blocks = [
                (begin, min(begin + per_block, total), self.device.sampler(levels[:, begin : begin + per_block].contiguous()))
                for begin in range(0, total, per_block)
            ]
            self._flat = _FlatLayout(spans, factor, nominal, blocks)
        return self._flat

    def zeros(self) -> Perturbation:
        return {name: torch.zeros_like(layer.nominal) for name, layer in self.layers.items()}

    def nominal_weights(self) -> dict[str, torch.Tensor]:
        return {name: layer.nominal for name, layer in self.layers.items()}

    def generator(self, seed: int) -> torch.Generator:
        """A generator on the crossbar's torch device, seeded (:func:`cimguard.seeds.torch_generator`)."""
        return torch_generator(seed, self.torch_device)

    # -- running the model ------------------------------------------------------------------
    def perturbed_weights(self, perturbation: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The chip's weights ``W_q + ΔW`` by layer (``perturbation=None``: a perfect chip)."""
        return {
            name: layer.nominal if perturbation is None else layer.nominal + perturbation[name]
            for name, layer in self.layers.items()
        }

    def logits(self, x: torch.Tensor, perturbation: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Model output on ``x`` for the chip ``W_q + ΔW`` (``perturbation=None``: a perfect chip)."""
        return self.logits_for_weights(x, self.perturbed_weights(perturbation))

    def logits_for_weights(self, x: torch.Tensor, weights: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Model output on ``x`` with the mapped weights replaced by ``weights`` (e.g. :meth:`chip_weights`)."""
        return self.imported.scores(functional_call(self.imported.module, dict(weights), (x,), strict=False))


@dataclass
class _FlatLayout:
    """Every mapped weight of a crossbar in one flat vector, with the prepared device samplers."""

    spans: dict[str, tuple[int, int, torch.Size]]
    """``name -> (start, stop, shape)`` of each layer in the flat vector."""
    factor: torch.Tensor
    """``sign(W) · s_fs`` per weight."""
    nominal: torch.Tensor
    """``W_q`` per weight."""
    blocks: list[tuple[int, int, DeviationSampler]]
    """``(start, stop, draw)``: weights ``start:stop`` and the sampler of their ``(M, stop - start)`` devices.

    A chip draws the blocks in this order from one generator."""

    def deviations(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One chip's device deviations, shape ``(M, total weights)``, level units (the same stream as a chip)."""
        return torch.cat([draw(generator) for _, _, draw in self.blocks], dim=1)


def _resolved_config(config: CrossbarConfig, imported: ImportedModel) -> CrossbarConfig:
    """``weight_bits=None`` becomes the file's width; a quantized file refuses any other width."""
    quantization = imported.quantization
    widths = sorted({record.bits for name, record in quantization.weights.items()
                     if any(m.initializer == name for m in imported.mapped)}) if quantization else []
    if len(widths) > 1:
        raise CimguardError(f"the file quantizes its crossbar weights with different widths ({', '.join(map(str, widths))} "
                            "bits); cimguard maps one width per chip")
    if not widths:
        return config if config.weight_bits is not None else replace(config, weight_bits=DEFAULT_WEIGHT_BITS)
    if config.weight_bits is None:
        return replace(config, weight_bits=widths[0])
    if config.weight_bits != widths[0]:
        raise CimguardError(f"--weight-bits {config.weight_bits} differs from the file's {widths[0]}-bit weights: a "
                            "quantized file's codes are the device levels (leave --weight-bits out)")
    return config


def check_within_bounds(perturbation: Mapping[str, torch.Tensor], bounds: Mapping[str, torch.Tensor], *, slack: float = 1e-6) -> None:
    """Raise :class:`CimguardError` if any ΔW leaves its box (relative slack for float rounding)."""
    missing = set(bounds) - set(perturbation)
    extra = set(perturbation) - set(bounds)
    if missing or extra:
        raise CimguardError(f"perturbation layers do not match the crossbar (missing {sorted(missing)}, unexpected {sorted(extra)})")
    for name, delta in perturbation.items():
        bound = bounds[name]
        if not delta.is_floating_point():
            raise CimguardError(f"perturbation of layer {name} must be floating-point, got {delta.dtype}")
        if not bool(torch.isfinite(delta).all()):
            # NaN <= bound is never false: a non-finite ΔW is refused outright, never compared.
            raise CimguardError(f"perturbation of layer {name} holds {int((~torch.isfinite(delta)).sum())} "
                                "non-finite values (NaN or ±Inf)")
        excess = (delta.abs() - bound * (1 + slack) - 1e-12).max()
        if excess > 0:
            raise CimguardError(
                f"perturbation of layer {name} exceeds the write-verify bound by {float(excess):.3g} "
                f"(bound {float(bound.max()):.3g})"
            )

