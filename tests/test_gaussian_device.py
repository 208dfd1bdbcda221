"""The foundation's gaussian device: write-verify truncation against the analytic distribution."""

from __future__ import annotations

import math

import pytest
import torch

from cimguard.factories import create_device

N = 200_000


def _truncated_std(sigma: float, bound: float) -> float:
    alpha = bound / sigma
    pdf = math.exp(-alpha * alpha / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(alpha / math.sqrt(2))
    return sigma * math.sqrt(1 - 2 * alpha * pdf / mass)


@pytest.mark.parametrize("sigma,thg", [(0.1, 0.03), (0.1, 0.2), (0.05, 0.1)])
def test_write_verify_truncates_to_the_threshold(sigma, thg):
    device = create_device("gaussian", {"sigma": sigma, "thg": thg})
    generator = torch.Generator().manual_seed(0)
    deviation = device.sample_deviation(torch.zeros(N), generator)
    assert float(deviation.abs().max()) <= thg
    expected = _truncated_std(sigma, thg)
    # The sample std's standard error is about std / sqrt(2N); allow 5 of them.
    assert float(deviation.std()) == pytest.approx(expected, abs=5 * expected / math.sqrt(2 * N))
    assert abs(float(deviation.mean())) < 5 * expected / math.sqrt(N)


def test_without_write_verify_the_spread_is_plain_gaussian():
    device = create_device("gaussian", {"sigma": 0.1, "thg": float("inf")})
    deviation = device.sample_deviation(torch.zeros(N), torch.Generator().manual_seed(1))
    assert float(deviation.std()) == pytest.approx(0.1, abs=5 * 0.1 / math.sqrt(2 * N))
    assert float(deviation.abs().max()) > 0.4  # tails are there: about 4 sigma in 200k draws
