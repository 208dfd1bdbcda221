"""Seeds: the one accepted range, and the one way a seed becomes a random stream.

Every ``--seed`` (Monte Carlo, solvers, trainers) is an integer in ``0 .. 2**64 - 1``, the range
torch's generators take.  A seed becomes a ``torch.Generator`` only through
:func:`torch_generator`; Monte Carlo gives each chip its own stream (:func:`chip_seed`), and a
trainer derives its noise stream from its data-order seed (:func:`stream_seed`), so the same seed
always gives the same numbers however the work is split.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from cimguard.errors import CimguardError

#: The largest seed: seeds are unsigned 64-bit integers.
SEED_MAX = 2**64 - 1

_MASK64 = SEED_MAX


def check_seed(seed: object) -> int:
    """``seed`` (a Python or numpy integer) as an int in ``0 .. 2**64 - 1``; anything else is one line."""
    try:
        value = None if isinstance(seed, (bool, np.bool_)) else operator.index(seed)
    except TypeError:
        value = None
    if value is None or not 0 <= value <= SEED_MAX:
        raise CimguardError(f"seed must be an integer from 0 to 2^64 - 1, got {seed!r}")
    return value


def torch_generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A ``torch.Generator`` on ``device`` seeded with ``seed`` (checked)."""
    generator = torch.Generator(device=device)
    generator.manual_seed(check_seed(seed))
    return generator


def stream_seed(seed: int, stream: int) -> int:
    """The seed of independent stream number ``stream`` (>= 1) derived from ``seed`` (stream 0 is ``seed``)."""
    return (check_seed(seed) + stream * 0x9E3779B1) & _MASK64


def chip_seed(seed: int, chip: int) -> int:
    """Generator seed of chip number ``chip`` in a Monte Carlo run seeded with ``seed``.

    Every chip has its own random stream, so chip ``k`` is the same whether chips are
    drawn one by one, in groups, or alone:
    ``crossbar.sample(crossbar.generator(chip_seed(seed, k)))`` reproduces it.
    The mix is splitmix64 (a bijection of 64-bit integers), applied twice: distinct
    chips of one run always get distinct seeds, and it costs microseconds per chip.
    """
    return _splitmix64((_splitmix64(check_seed(seed)) + chip * 0x9E3779B97F4A7C15) & _MASK64)


def _splitmix64(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)
