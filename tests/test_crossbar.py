"""The crossbar mapping formulae against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cimguard.errors import CimguardError
from cimguard.factories import create_device
from cimguard.onnx.model import load_model
from cimguard.sim.crossbar import Crossbar, CrossbarConfig, check_within_bounds
from tests.onnx_builders import gemm_model

WEIGHT = np.array([[0.6, -0.2], [1.0, 0.13]], dtype=np.float32)


@pytest.fixture()
def small(tmp_path):
    """One Gemm layer (transB=1, so the torch weight equals W), 4-bit weights on 2-bit devices."""
    imported = load_model(gemm_model(tmp_path / "gemm.onnx", WEIGHT))
    device = create_device("gaussian", {"bits_per_device": 2, "thg": 0.03})
    return Crossbar(imported, device, CrossbarConfig(weight_bits=4))


def test_quantisation_and_slicing_by_hand(small):
    (name,) = small.names
    layer = small.layers[name]
    assert small.slices == 2
    assert layer.scale == pytest.approx(1.0)
    # q = round(|W| / s * 15) = 9, 3, 15, 2; base-4 digits, most significant first.
    expected_levels = np.array([[[2, 0], [3, 0]], [[1, 3], [3, 2]]], dtype=np.float32)
    np.testing.assert_array_equal(layer.levels.numpy(), expected_levels)
    np.testing.assert_allclose(layer.nominal.numpy(), [[9 / 15, -3 / 15], [1.0, 2 / 15]], rtol=1e-6)


def test_weight_delta_formula_by_hand(small):
    (name,) = small.names
    deviation = torch.stack([torch.full((2, 2), 0.1), torch.full((2, 2), -0.2)])
    # s_fs = 16/15; Σ Δg_i 4^-i = 0.1/4 - 0.2/16 = 0.0125; times sign(W).
    expected = 16 / 15 * 0.0125 * np.array([[1, -1], [1, 1]])
    np.testing.assert_allclose(small.weight_delta(name, deviation).numpy(), expected, rtol=1e-6)


def test_bounds_by_hand(small):
    (name,) = small.names
    # s · thg / (2^B - 1) = 1.0 * 0.03 / 3
    assert small.weight_bound(name, 0.03) == pytest.approx(0.01)
    bounds = small.bounds()
    assert torch.allclose(bounds[name], torch.full((2, 2), 0.01))
    check_within_bounds({name: torch.full((2, 2), 0.0099)}, bounds)
    with pytest.raises(CimguardError, match="exceeds the write-verify bound"):
        check_within_bounds({name: torch.full((2, 2), 0.0102)}, bounds)


def test_one_bit_devices_bound_is_scale_times_thg(setup):
    for name, layer in setup.crossbar.layers.items():
        assert setup.crossbar.weight_bound(name, 0.03) == pytest.approx(layer.scale * 0.03, rel=1e-9)


def test_sampled_chips_stay_inside_the_write_verify_box(setup):
    generator = setup.crossbar.generator(0)
    bounds = setup.crossbar.bounds()
    for _ in range(3):
        chip = setup.crossbar.sample(generator)
        check_within_bounds(chip, bounds)
        assert any(float(delta.abs().max()) > 0 for delta in chip.values())


def test_gemm_without_transpose_and_alpha_round_trips(tmp_path):
    imported = load_model(gemm_model(tmp_path / "g.onnx", WEIGHT, trans_b=0, alpha=2.0))
    (mapped,) = imported.mapped
    assert mapped.transposed and mapped.scale == 2.0
    torch_weight = imported.weights()[mapped.torch_name]
    np.testing.assert_allclose(torch_weight.numpy(), 2.0 * WEIGHT.T)
    np.testing.assert_allclose(mapped.to_onnx(torch_weight), WEIGHT)


def test_weight_bits_must_be_a_multiple_of_device_bits(tmp_path):
    imported = load_model(gemm_model(tmp_path / "g.onnx", WEIGHT))
    device = create_device("gaussian", {"bits_per_device": 3})
    with pytest.raises(CimguardError, match="multiple of the device's bits per device"):
        Crossbar(imported, device, CrossbarConfig(weight_bits=8))


def test_perturbation_changes_output_without_mutating_the_model(setup):
    x = setup.data.x[:8]
    before = {k: v.clone() for k, v in setup.imported.weights().items()}
    clean = setup.crossbar.logits(x)
    perturbed = setup.crossbar.logits(x, setup.crossbar.bounds())
    assert not torch.allclose(clean, perturbed)
    for name, value in setup.imported.weights().items():
        assert torch.equal(before[name], value)
