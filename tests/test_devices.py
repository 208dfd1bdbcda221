"""Device plugins against their cited formulae: σ per level, truncation, drift, read noise, bounds.

Statistical checks draw N devices with a fixed seed and allow 5 standard errors:
a mean's standard error is ``std / sqrt(N)``, a standard deviation's about ``std / sqrt(2N)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from cimguard.errors import CimguardError
from cimguard.factories import create_device
from cimguard.sim.device import Device, DeviceConfig

N = 200_000


def _draw(device: Device, level: int, seed: int = 0, n: int = N) -> torch.Tensor:
    return device.sample_deviation(torch.full((n,), float(level)), torch.Generator().manual_seed(seed)).double()


def _truncated_std(sigma: float, bound: float) -> float:
    c = bound / sigma
    pdf = math.exp(-c * c / 2) / math.sqrt(2 * math.pi)
    return sigma * math.sqrt(1 - 2 * c * pdf / math.erf(c / math.sqrt(2)))


def _assert_std(sample: torch.Tensor, expected: float) -> None:
    assert float(sample.std()) == pytest.approx(expected, abs=5 * expected / math.sqrt(2 * len(sample)))


def _assert_mean(sample: torch.Tensor, expected: float, spread: float) -> None:
    assert float(sample.mean()) == pytest.approx(expected, abs=5 * spread / math.sqrt(len(sample)))


# -- RRAM: CrossSim's Milo fit ---------------------------------------------------------------------


def _milo_sigma_levels(g_us: float, step_us: float) -> float:
    return max(-0.009107 * g_us + 4.782321, 0.0) / step_us


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_rram_programming_sigma_follows_the_milo_fit(level):
    device = create_device("rram", {"thg": float("inf")})
    step = (225.0 - 50.0) / 3
    expected = _milo_sigma_levels(50.0 + level * step, step)
    assert float(device.programming_sigma(torch.tensor([float(level)]))) == pytest.approx(expected, rel=1e-6)
    sample = _draw(device, level, seed=level)
    _assert_std(sample, expected)
    _assert_mean(sample, 0.0, expected)


@pytest.mark.parametrize("level", [0, 3])
def test_rram_write_verify_truncates_the_state_dependent_spread(level):
    device = create_device("rram", {"thg": 0.05})
    step = (225.0 - 50.0) / 3
    sigma = _milo_sigma_levels(50.0 + level * step, step)
    sample = _draw(device, level, seed=10 + level)
    assert float(sample.abs().max()) <= 0.05
    _assert_std(sample, _truncated_std(sigma, 0.05))


def test_rram_default_range_and_levels():
    device = create_device("rram")
    assert (device.config.g_min_us, device.config.g_max_us, device.config.levels) == (50.0, 225.0, 4)
    assert "Milo" in device.source and "CrossSim" in device.source


# -- FeFET: a σ per level ----------------------------------------------------------------------------


def test_fefet_uses_its_per_level_sigma_table_in_mv_and_truncates():
    # σ per level in mV over a 400 mV Vth step: 20, 40, 80, 120 mV are 0.05 … 0.3 level.
    device = create_device("fefet", {"sigma_levels_mv": "20,40,80,120", "thg": 0.15})
    for level, sigma in enumerate((0.05, 0.1, 0.2, 0.3)):
        sample = _draw(device, level, seed=20 + level)
        assert float(sample.abs().max()) <= 0.15
        _assert_std(sample, _truncated_std(sigma, 0.15))
    finer = create_device("fefet", {"sigma_levels_mv": [20, 40, 80, 120], "vth_step_mv": 200.0, "thg": float("inf")})
    assert finer.config.sigma_levels_mv == (20.0, 40.0, 80.0, 120.0)
    _assert_std(_draw(finer, 3, seed=4), 0.6)


def test_fefet_default_is_the_measured_soliman_profile_cut_at_three_sigma():
    # Soliman et al., Nat. Commun. 2023: 4 states, 400 mV apart, measured max σ(Vth) 38 mV; netlist cut at 3σ.
    device = create_device("fefet")
    assert device.config.levels == 4
    assert torch.allclose(device.programming_sigma(torch.arange(4.0)), torch.full((4,), 38.0 / 400.0))
    assert device.config.thg == pytest.approx(3 * 38.0 / 400.0)
    sample = _draw(device, 2, seed=3)
    assert float(sample.abs().max()) <= 3 * 0.095
    _assert_std(sample, _truncated_std(0.095, 3 * 0.095))  # 0.986 σ: 37.5 mV
    assert "Soliman" in device.source and "10.1038/s41467-023-42110-y" in device.source


# -- PCM: aihwkit's PCMLikeNoiseModel -----------------------------------------------------------------

PCM_QUIET = {"drift": False, "read_noise": False}


def _pcm_prog_sigma_us(g_us: float, g_max: float = 25.0) -> float:
    r = g_us / g_max
    return (0.26348 + 1.9650 * r - 1.1731 * r * r) * g_max / 25.0


def test_pcm_programming_noise_polynomial_at_the_top_level():
    device = create_device("pcm", PCM_QUIET | {"thg": float("inf")})
    expected = _pcm_prog_sigma_us(25.0) / 25.0  # one level is 25 µS for one bit per device
    sample = _draw(device, 1, seed=1)
    _assert_std(sample, expected)
    _assert_mean(sample, 0.0, expected)


def test_pcm_programming_noise_scales_with_g_max_and_floors_at_zero_conductance():
    device = create_device("pcm", PCM_QUIET | {"thg": float("inf"), "g_max_us": 50.0, "bits_per_device": 2})
    step = 50.0 / 3
    assert float(device.programming_sigma(torch.tensor([2.0]))) == pytest.approx(
        _pcm_prog_sigma_us(2 * step, 50.0) / step, rel=1e-5
    )
    # Level 0 is 0 µS: g_prog = max(0 + N(0, σ0), 0), a rectified normal with mean σ0/sqrt(2π).
    sigma0 = _pcm_prog_sigma_us(0.0, 50.0) / step
    sample = _draw(device, 0, seed=2)
    assert float(sample.min()) == 0.0
    _assert_mean(sample, sigma0 / math.sqrt(2 * math.pi), sigma0)


def test_pcm_write_verify_truncates_programming_only():
    device = create_device("pcm", PCM_QUIET | {"thg": 0.02})
    sigma = _pcm_prog_sigma_us(25.0) / 25.0
    sample = _draw(device, 1, seed=4)
    assert float(sample.abs().max()) <= 0.02
    _assert_std(sample, _truncated_std(sigma, 0.02))
    assert device.deviation_bound() == 0.02


def _folded_moments(mu: float, sd: float) -> tuple[float, float]:
    mean = sd * math.sqrt(2 / math.pi) * math.exp(-mu * mu / (2 * sd * sd)) + mu * math.erf(mu / (sd * math.sqrt(2)))
    return mean, math.sqrt(mu * mu + sd * sd - mean * mean)


@pytest.mark.parametrize("level", [1, 7])
def test_pcm_drift_exponent_distribution(level):
    # thg = 0 pins programming to the target, so g(t)/g_T = ((t + t0)/t0)^(-ν) exactly.
    t = 86_400.0
    device = create_device(
        "pcm", {"bits_per_device": 3, "thg": 0.0, "t": t, "read_noise": False, "drift_compensation": False}
    )
    g_t = 25.0 * level / 7
    g = g_t + _draw(device, level, seed=30 + level) * (25.0 / 7)
    nu = -torch.log(g / g_t) / math.log((t + 20.0) / 20.0)
    r = g_t / 25.0
    mu = min(max(-0.0155 * math.log(r) + 0.0244, 0.049), 0.1)
    sd = min(max(-0.0125 * math.log(r) - 0.0059, 0.008), 0.045)
    mean, std = _folded_moments(mu, sd)
    _assert_mean(nu, mean, std)
    _assert_std(nu, std)
    assert float(nu.min()) >= 0


def test_pcm_drift_compensation_restores_the_mean_at_g_max():
    device = create_device("pcm", {"thg": 0.0, "t": 86_400.0, "read_noise": False})
    sample = _draw(device, 1, seed=5)
    _assert_mean(sample, 0.0, float(sample.std()))
    uncompensated = create_device("pcm", {"thg": 0.0, "t": 86_400.0, "read_noise": False, "drift_compensation": False})
    assert float(_draw(uncompensated, 1, seed=5).mean()) < -0.25  # a day of drift loses about a third


def test_pcm_expected_drift_factor_closed_form():
    from cimguard_plugins.devices.pcm import expected_folded_normal_decay

    generator = torch.Generator().manual_seed(6)
    for mu, sd, rate in [(0.049, 0.008, 8.37), (0.03, 0.045, 5.0), (0.1, 0.02, 1.0)]:
        x = (mu + sd * torch.randn(N, generator=generator, dtype=torch.float64)).abs()
        empirical = torch.exp(-rate * x)
        assert expected_folded_normal_decay(mu, sd, rate) == pytest.approx(
            float(empirical.mean()), abs=5 * float(empirical.std()) / math.sqrt(N)
        )


@pytest.mark.parametrize("t", [0.0, 3600.0])
def test_pcm_read_noise_amplitude(t):
    device = create_device("pcm", {"thg": 0.0, "t": t, "drift": False})
    expected = 0.0088 * math.sqrt(math.log((t + 20.0 + 250e-9) / (2 * 250e-9)))  # Q_s at g_max, in levels
    sample = _draw(device, 1, seed=7)
    _assert_std(sample, expected)
    _assert_mean(sample, 0.0, expected)


def test_pcm_bound_covers_drift_and_read_noise():
    quiet = create_device("pcm", PCM_QUIET)
    assert quiet.deviation_bound() == quiet.config.thg
    day = create_device("pcm", {"t": 86_400.0})
    bound = day.deviation_bound()
    assert bound > create_device("pcm", {"t": 0.0}).deviation_bound() > day.config.thg
    sample = _draw(day, 1, seed=8)
    # The envelope covers ν and read noise within 3 σ: almost every device stays inside.
    assert float((sample.abs() > bound).double().mean()) < 1e-3


# -- the device interface -----------------------------------------------------------------------------


@pytest.mark.parametrize("name,params", [("gaussian", {}), ("rram", {}), ("fefet", {}), ("pcm", {"t": 600.0})])
def test_prepared_sampler_matches_sample_deviation(name, params):
    device = create_device(name, params)
    levels = torch.randint(0, device.config.levels, (4, 1000), generator=torch.Generator().manual_seed(0)).float()
    draw = device.sampler(levels)
    a = draw(torch.Generator().manual_seed(11))
    b = device.sample_deviation(levels, torch.Generator().manual_seed(11))
    assert torch.equal(a, b)
    assert not torch.equal(a, draw(torch.Generator().manual_seed(12)))


def test_a_device_overriding_after_programming_is_honoured_by_the_sampler():
    class Shifted(Device):
        def programming_sigma(self, target_levels):
            return torch.zeros_like(target_levels)

        def after_programming(self, target_levels, deviation, generator=None):
            return deviation + 0.5

    device = Shifted(DeviceConfig())
    assert torch.equal(device.sampler(torch.zeros(3))(None), torch.full((3,), 0.5))


@pytest.mark.parametrize(
    "name,params,message",
    [
        ("gaussian", {"sigma": "-0.1"}, "sigma must be >= 0"),
        ("fefet", {"sigma_mv": -1}, "sigma_mv must be >= 0"),
        ("fefet", {"vth_step_mv": 0}, "vth_step_mv must be > 0"),
        ("fefet", {"sigma_levels_mv": "40,38"}, "one value per level"),
        ("fefet", {"bits_per_device": 1, "sigma_levels_mv": "40,-2"}, "sigma_levels_mv must all be >= 0"),
        ("fefet", {"sigma_levels_mv": "a,b"}, "list of numbers"),
        ("rram", {"bits_per_device": 0}, "levels >= 2"),
        ("rram", {"thg": -0.01}, "thg must be >= 0"),
        ("rram", {"sigma_offset_us": -1.0}, "negative"),
        ("rram", {"g_min_us": 300}, "g_min_us < g_max_us"),
        ("pcm", {"t": -1}, "t must be >= 0"),
        ("pcm", {"t0": 0}, "t0 must be > 0"),
        ("pcm", {"prog_c0": -2}, "polynomial is negative"),
        ("pcm", {"drift": "maybe"}, "must be a bool"),
        ("pcm", {"sigma": 0.1}, "unknown device parameter 'sigma'"),
    ],
)
def test_bad_parameters_are_one_line_errors(name, params, message):
    with pytest.raises(CimguardError) as excinfo:
        create_device(name, params)
    assert message in str(excinfo.value)
    assert "\n" not in str(excinfo.value)


def test_crossbars_draw_cache_sized_blocks_and_keep_each_levels_statistics(monkeypatch, default_model_path):
    import cimguard.sim.crossbar as crossbar_module
    from cimguard.api import build_setup

    monkeypatch.setattr(crossbar_module, "CPU_SAMPLE_BLOCK", 1000)
    crossbar = build_setup(default_model_path, "digits", "rram", {"thg": 0.05}, torch_device="cpu").crossbar
    flat = crossbar._flat_layout()
    m, per_block = crossbar.slices, 1000 // crossbar.slices
    assert len(flat.blocks) == math.ceil(crossbar.num_weights / per_block)
    assert [start for start, _, _ in flat.blocks] == list(range(0, crossbar.num_weights, per_block))
    # Each block's sampler got its own weights' levels: every level keeps the Milo σ of its conductance.
    levels = torch.cat([layer.levels.reshape(m, -1) for layer in crossbar.layers.values()], dim=1)
    draws = torch.cat([flat.deviations(crossbar.generator(seed)) for seed in range(4)], dim=1)
    levels = levels.repeat(1, 4)
    assert draws.shape == levels.shape and float(draws.abs().max()) <= 0.05
    step = (225.0 - 50.0) / 3
    for level in range(4):
        sample = draws[levels == level].double()
        _assert_std(sample, _truncated_std(_milo_sigma_levels(50.0 + level * step, step), 0.05))