"""Several Monte Carlo chips per forward pass (stacked weights, vmap) give the one-chip loop's numbers."""

from __future__ import annotations

from cimguard.sim.evaluate import chips_per_pass_for, monte_carlo


def test_stacked_chips_equal_the_one_chip_loop(setup):
    one = monte_carlo(setup.crossbar, setup.data, 7, seed=5, progress=False, chips_per_pass=1)
    stacked = monte_carlo(setup.crossbar, setup.data, 7, seed=5, progress=False, chips_per_pass=3)  # 3 + 3 + 1
    assert stacked.accuracies == one.accuracies
    assert len(set(one.accuracies)) > 1  # the chips differ, so a mix-up would show


def test_cpu_keeps_one_chip_per_pass(setup):
    assert chips_per_pass_for(setup.crossbar, setup.data) == 1
