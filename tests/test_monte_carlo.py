"""Monte Carlo: the fast flat path equals the documented per-layer formula, chip by chip, for a seed."""

from __future__ import annotations

import torch

from cimguard.seeds import chip_seed
from cimguard.sim.crossbar import Crossbar
from cimguard.sim.evaluate import accuracy, monte_carlo, weights_accuracy


def test_flat_sample_is_the_documented_weight_delta(setup):
    crossbar = setup.crossbar
    flat = crossbar._flat_layout()
    generator = crossbar.generator(5)
    deviation = flat.deviations(generator)  # (M, all weights), the device's own draws
    chip = crossbar.sample(crossbar.generator(5))
    start = 0
    for name, layer in crossbar.layers.items():
        count = layer.nominal.numel()
        per_layer = deviation[:, start : start + count].reshape(layer.levels.shape)
        start += count
        expected = crossbar.weight_delta(name, per_layer)
        assert chip[name].shape == layer.nominal.shape
        assert torch.allclose(chip[name], expected, rtol=1e-5, atol=1e-7)
    # A crossbar built afresh draws the same chip for the same seed.
    again = Crossbar(crossbar.imported, crossbar.device, crossbar.config).sample(crossbar.generator(5))
    assert all(torch.equal(chip[name], again[name]) for name in chip)


def test_chip_weights_equal_nominal_plus_delta(setup):
    crossbar = setup.crossbar
    delta = crossbar.sample_flat(crossbar.generator(1))
    weights = crossbar.chip_weights(delta)
    perturbation = crossbar.unflatten(delta)
    for name, layer in crossbar.layers.items():
        assert torch.equal(weights[name], layer.nominal + perturbation[name])


def test_monte_carlo_chips_are_reproducible_one_by_one(setup):
    crossbar, data = setup.crossbar, setup.data
    stats = monte_carlo(crossbar, data, samples=6, seed=3, progress=False)
    # Each chip has its own stream: the slow public path (sample + accuracy) gives the same numbers,
    # whatever order or grouping the chips are drawn in.
    for chip in (5, 0, 2):
        perturbation = crossbar.sample(crossbar.generator(chip_seed(3, chip)))
        assert accuracy(crossbar, data, perturbation) == stats.accuracies[chip]
    # A shorter run is a prefix of a longer one.
    assert monte_carlo(crossbar, data, samples=3, seed=3, progress=False).accuracies == stats.accuracies[:3]
    # The same seed again is identical; another seed differs.
    assert monte_carlo(crossbar, data, samples=6, seed=3, progress=True).accuracies == stats.accuracies
    assert monte_carlo(crossbar, data, samples=6, seed=4, progress=False).accuracies != stats.accuracies


def test_prefetching_chips_on_a_thread_gives_the_same_numbers(setup):
    crossbar, data = setup.crossbar, setup.data
    serial = monte_carlo(crossbar, data, samples=5, seed=7, progress=False, prefetch=False)
    prefetched = monte_carlo(crossbar, data, samples=5, seed=7, progress=False, prefetch=True)
    assert prefetched.accuracies == serial.accuracies
    assert monte_carlo(crossbar, data, samples=1, seed=7, progress=False, prefetch=True).accuracies == serial.accuracies[:1]


def test_prefetch_draws_one_chip_ahead_and_stops_on_an_error(setup, monkeypatch):
    import threading

    import pytest

    import cimguard.sim.evaluate as evaluate_module

    crossbar = setup.crossbar
    draws, forwards = [], []
    real_sample_flat = crossbar.sample_flat

    def counting_sample_flat(generator=None):
        draws.append(1)
        return real_sample_flat(generator)

    def failing_forward(crossbar, data, weights):
        forwards.append(1)
        if len(forwards) == 3:
            raise KeyboardInterrupt
        return 0.5

    monkeypatch.setattr(crossbar, "sample_flat", counting_sample_flat)
    monkeypatch.setattr(evaluate_module, "weights_accuracy", failing_forward)
    with pytest.raises(KeyboardInterrupt):
        monte_carlo(crossbar, setup.data, samples=50, progress=False, prefetch=True)
    # Chips 0-2 were evaluated and chip 3 was in flight: memory and work stay one chip ahead.
    assert len(forwards) == 3 and len(draws) == 4
    assert not [t for t in threading.enumerate() if t.name.startswith("cimguard-chip-sampler")]


def test_chip_seeds_are_distinct_over_the_whole_seed_range():
    seeds = {chip_seed(seed, chip) for seed in (0, 1, 2**40, 2**64 - 1) for chip in range(50)}
    assert len(seeds) == 4 * 50


def test_weights_accuracy_of_nominal_weights_is_the_clean_accuracy(setup):
    crossbar, data = setup.crossbar, setup.data
    assert weights_accuracy(crossbar, data, crossbar.nominal_weights()) == accuracy(crossbar, data)


def test_larger_variation_lowers_monte_carlo_accuracy(default_model_path):
    from cimguard.api import build_setup

    mild = build_setup(default_model_path, "digits", "gaussian", {"sigma": 0.1, "thg": 0.03}, torch_device="cpu")
    harsh = build_setup(default_model_path, "digits", "gaussian", {"sigma": 1.5, "thg": float("inf")},
                        torch_device="cpu")
    mild_stats = monte_carlo(mild.crossbar, mild.data, samples=8, seed=0, progress=False)
    harsh_stats = monte_carlo(harsh.crossbar, harsh.data, samples=8, seed=0, progress=False)
    assert harsh_stats.mean < mild_stats.mean - 0.05


def test_plot_monte_carlo_writes_a_new_png(setup, tmp_path):
    import pytest

    from cimguard.errors import CimguardError
    from cimguard.plot import plot_monte_carlo

    stats = monte_carlo(setup.crossbar, setup.data, samples=10, seed=0, progress=False)
    out = tmp_path / "mc.png"
    figure = plot_monte_carlo(stats, 0.98, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    assert any("p1" in label for label in labels) and any("clean" in label for label in labels)
    with pytest.raises(CimguardError, match="already exists"):
        plot_monte_carlo(stats, 0.98, out)
