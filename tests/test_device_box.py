"""The device's own worst-case box: per level, searched by default, and a plugin's deviation_bound() is the box."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from cimguard import hookimpl, plugins
from cimguard.errors import CimguardError
from cimguard_plugins.devices.gaussian import GaussianDevice

FAST = ("--samples", "0", "--max-samples", "120", "--solver", "flwc")


def _worst(output: str) -> float:
    row = [line for line in output.splitlines() if line.startswith("device ")][-1]  # the table row
    return float(row.split()[-1])


def test_attack_searches_the_pcm_box_one_day_after_programming(invoke):
    # Default --thg is the device's own box: a day of drift and read noise widens it past t = 0's,
    # so the worst chip found is worse (a tight verify window keeps t = 0 off the accuracy floor).
    fresh = invoke("attack", "--device", "pcm", "--device-param", "thg=0.005", *FAST)
    day = invoke("attack", "--device", "pcm", "--device-param", "thg=0.005", "--device-param", "t=86400", *FAST)
    assert fresh.exit_code == 0 and day.exit_code == 0, fresh.output + day.output
    assert "pcm, thg=0.005 levels, t=86400 s" in day.output  # every overridden parameter, with units
    shown = json.loads(invoke("devices", "--show", "pcm", "--device-param", "thg=0.005", "--device-param", "t=86400",
                              "--json").output)["deviation_bound_per_level"]
    assert shown[0] < shown[1]  # the box is per level: drift moves the on state most
    assert ", ".join(f"{b:.4g}" for b in shown) + " levels per device" in day.output  # as `devices --show` reports
    assert _worst(day.output) < _worst(fresh.output)


def test_crossbar_box_is_the_bit_sliced_sum_of_per_level_bounds(setup):
    from cimguard.factories import create_device
    from cimguard.sim.crossbar import Crossbar

    device = create_device("pcm", {"t": 86400.0})
    crossbar = Crossbar(setup.imported, device, setup.crossbar.config)
    table = torch.tensor(device.bound_table())
    bounds = crossbar.bounds()
    for name, layer in crossbar.layers.items():
        per_device = table[layer.levels.long()]  # (M, *W.shape)
        significance = torch.tensor([2.0 ** (-i) for i in range(1, crossbar.slices + 1)])
        expected = layer.scale * crossbar.full_scale_factor * torch.tensordot(significance, per_device, dims=1)
        torch.testing.assert_close(bounds[name], expected)
    # A weight whose devices are all at level 0 gets a smaller box than one with all at level 1.
    assert table[0] < table[1]


class _Plugin:
    """Two third-party devices: an old-style float bound, and a per-level bound."""

    @hookimpl
    def register_devices(self, register):
        register("float-bound", FloatBoundDevice)
        register("level-bound", LevelBoundDevice)


class FloatBoundDevice(GaussianDevice):
    def deviation_bound(self):  # the pre-per-level signature: still honoured
        return 0.02


class LevelBoundDevice(GaussianDevice):
    def deviation_bound(self, target_levels=None):
        table = torch.tensor([0.005, 0.04], dtype=torch.float64)
        if target_levels is None:
            return float(table.max())
        return table.to(target_levels.dtype)[target_levels.long()]


@pytest.fixture()
def box_plugin():
    plugin = _Plugin()
    plugins.pm.register(plugin, name="box-plugin")
    plugins._registries = None
    yield
    plugins.pm.unregister(plugin)
    plugins._registries = None


@pytest.mark.parametrize("name, per_level", [("float-bound", [0.02, 0.02]), ("level-bound", [0.005, 0.04])])
def test_a_plugins_deviation_bound_is_the_box_searched(invoke, box_plugin, tmp_path, name, per_level):
    from cimguard.api import build_setup

    report, saved = tmp_path / "r.json", tmp_path / "worst.npz"
    result = invoke("attack", "--device", name, *FAST, "--json", report, "--save-perturbation", saved)
    assert result.exit_code == 0, result.output
    point = json.loads(report.read_text())["points"][0]
    assert point["box"] == "device" and point["thg"] is None
    assert point["box_levels"] == pytest.approx(per_level)
    setup = build_setup(None, "digits", name, {})
    assert setup.device.config.thg == 0.03  # the write-verify threshold is not what is searched
    bounds = setup.crossbar.bounds()
    with np.load(saved) as archive:
        for torch_name, bound in bounds.items():
            delta = torch.from_numpy(archive[f"delta/{torch_name}"])
            assert bool((delta.abs() <= bound * (1 + 1e-5)).all())
            # F-LWC walks to the surface of the plugin's box: some weight touches it.
            assert float((delta.abs() / bound.clamp_min(1e-30)).max()) > 0.99
    # The saved chip remembers that it came from the device's box, and replays in that box.
    replay = invoke("attack", "--replay", saved)
    assert replay.exit_code == 0, replay.output
    assert "worst case in the device's box" in replay.output
    now, was = re.search(r"accuracy now ([0-9.]+) \(saved ([0-9.]+)\)", replay.output).groups()
    assert now == was
    if name == "level-bound":
        layer = setup.crossbar.layers[next(iter(bounds))]
        scale = layer.scale * setup.crossbar.full_scale_factor
        all_low = (layer.levels == 0).all(dim=0)
        all_high = (layer.levels == 1).all(dim=0)
        box = bounds[next(iter(bounds))]
        if bool(all_low.any()):
            assert float(box[all_low].max()) == pytest.approx(scale * 0.005 * (1 - 2.0**-8), rel=1e-5)
        if bool(all_high.any()):
            assert float(box[all_high].max()) == pytest.approx(scale * 0.04 * (1 - 2.0**-8), rel=1e-5)


def test_a_bad_plugin_bound_is_one_line(setup):
    class Negative(GaussianDevice):
        def deviation_bound(self, target_levels=None):
            return -1.0

    with pytest.raises(CimguardError, match="not a finite number >= 0"):
        Negative().level_bounds(torch.zeros(3))


def test_device_param_thg_with_an_explicit_sweep_is_refused(invoke):
    result = invoke("attack", "--device-param", "thg=0.01", "--thg", "0.01,0.02")
    assert result.exit_code == 1
    assert result.output.startswith("Error: --device-param thg=... and a --thg sweep both set")
    result = invoke("compare", "x.onnx", "--device-param", "thg=0.01", "--thg", "0.02")
    assert result.exit_code == 1 and "both set the write-verify threshold" in result.output


def test_explicit_sweep_keeps_todays_numbers(setup):
    # --thg 0.03 is the uniform box s·thg/(2^B - 1) per weight, exactly as before per-level boxes.
    from cimguard.sim.worst_case import make_problem

    problem = make_problem(setup.crossbar, setup.data, 0.03)
    for name, bound in problem.bounds.items():
        assert torch.all(bound == setup.crossbar.weight_bound(name, 0.03))
    device_box = make_problem(setup.crossbar, setup.data, None)
    for name in problem.bounds:  # gaussian: the device's box is its thg everywhere
        torch.testing.assert_close(device_box.bounds[name], problem.bounds[name])
