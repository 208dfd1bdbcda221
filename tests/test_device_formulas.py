"""One formula per thing: the device's own formulas, quoted verbatim by README, docs and `devices --show`, and computed by the code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from cimguard.factories import create_device
from cimguard.plugins import registry

ROOT = Path(__file__).resolve().parents[1]
BUILTINS = ("gaussian", "pcm", "rram", "fefet")


def _text(relative: str) -> str:
    return (ROOT / relative).read_text().replace("\\|", "|")  # markdown tables escape | inside cells


@pytest.mark.parametrize("name", BUILTINS)
def test_every_formula_is_quoted_verbatim_everywhere(invoke, name):
    formulas = registry("devices").get(name).formulas
    assert formulas, f"{name} states no formula"
    shown = invoke("devices", "--show", name).output
    for formula in formulas:
        assert formula in shown
        assert formula in _text("docs/devices.md"), formula
        if name != "gaussian":  # README's device table describes gaussian in words
            assert formula in _text("README.md"), formula


def test_no_other_drift_formula_is_written_anywhere(invoke):
    texts = [_text("README.md"), _text("docs/devices.md"), (ROOT / "plugins/devices/pcm.py").read_text(),
             invoke("devices", "--show", "pcm").output]
    for stale in ("(t/t0)", "1 + t/t0", "t'/t0", "((t+t0)/t0)^-nu", "(t'"):
        for text in texts:
            assert stale not in text, stale


def test_pcm_drift_is_the_stated_formula():
    # g(t) = g_prog·((t + t0)/t0)^(−ν): at t = t0 the exponent's multiplier is ln 2 (it would be 0 for (t/t0)).
    device = create_device("pcm", {"t": 20.0, "thg": 0.0, "read_noise": False, "drift_compensation": False})
    assert device.log_time_ratio == pytest.approx(math.log(2.0))
    levels = torch.ones(20000, dtype=torch.float64)
    deviation = device.sample_deviation(levels, torch.Generator().manual_seed(0))
    g = 25.0 + deviation * device.level_step_us  # the on state, g_T = g_max
    nu = -torch.log(g / 25.0) / math.log(2.0)
    mu, sd = (float(v) for v in device.drift_parameters(torch.tensor(25.0, dtype=torch.float64)))
    assert float(nu.mean()) == pytest.approx(mu, rel=0.02)  # ν ~ |N(μ_ν, σ_ν)| with μ_ν >> σ_ν here
    assert float(nu.std()) == pytest.approx(sd, rel=0.1)


def test_pcm_and_rram_sigma_are_the_stated_formulas():
    pcm = create_device("pcm")
    r = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    expected = (0.26348 + 1.9650 * r - 1.1731 * r * r) * 25.0 / 25
    torch.testing.assert_close(pcm.programming_sigma_us(r * 25.0), expected)
    rram = create_device("rram")
    g = torch.tensor([50.0, 100.0, 225.0, 600.0], dtype=torch.float64)
    torch.testing.assert_close(rram.sigma_us(g), (-0.009107 * g + 4.782321).clamp_min(0.0))
    fefet = create_device("fefet")
    torch.testing.assert_close(fefet.programming_sigma(torch.zeros(1)), torch.tensor([38.0 / 400.0]))
