"""One name per layer, the same options and words in every command, and headers that say what was run."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from cimguard import hookimpl, plugins
from cimguard.sim.device import DeviceConfig
from cimguard_plugins.devices.gaussian import GaussianDevice

ROOT = Path(__file__).resolve().parents[1]


def test_sensitivity_names_layers_as_inspect_does(invoke, default_model_path):
    inspected = json.loads(invoke("inspect", str(default_model_path), "--json").output)
    names = {layer["weight"]: layer["node"] for layer in inspected["crossbar_layers"]}
    result = invoke("attack", "--sensitivity", "--samples", "0", "--iterations", "1", "--max-samples", "40")
    assert result.exit_code == 0, result.output
    rows = result.output.split("per-layer sensitivity")[1].splitlines()[2:]
    shown = {row.split()[0]: row.split()[-1] for row in rows if row.strip()}
    assert shown == names  # the ONNX initializer name, and its node, in both commands
    text = invoke("inspect", str(default_model_path)).output
    for weight, node in names.items():
        assert re.search(rf"^  {re.escape(weight)} .*\[{re.escape(node)}\]", text, flags=re.M)


def _tied_model(path: Path) -> Path:
    """``y = (x @ W) @ W``: one initializer used by two MatMul nodes (tied weights)."""
    weight = numpy_helper.from_array(np.eye(4, dtype=np.float32) * 0.5, "W_tied")
    nodes = [helper.make_node("MatMul", ["x", "W_tied"], ["h"], name="first"),
             helper.make_node("MatMul", ["h", "W_tied"], ["y"], name="second")]
    graph = helper.make_graph(nodes, "tied", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    path.write_bytes(model.SerializeToString())
    return path


def test_inspect_explains_a_shared_initializer(invoke, tmp_path):
    path = _tied_model(tmp_path / "tied.onnx")
    record = json.loads(invoke("inspect", str(path), "--json").output)
    assert record["parameters"] == 16
    layers = [layer for layer in record["crossbar_layers"] if layer["weight"] == "W_tied"]
    if len(layers) < 2:
        pytest.skip("the converter maps the tied weight once")
    assert record["crossbar_weights"] == 32
    assert record["shared_weights"] == {"W_tied": ["first", "second"]}
    text = invoke("inspect", str(path)).output
    assert "W_tied is used by 2 nodes (first, second)" in text and "crossbars count it 2 times" in text


def test_harden_does_not_offer_label_free(invoke):
    assert "--label-free" not in invoke("harden", "--help").output
    assert "--label-free" in invoke("compare", "--help").output
    result = invoke("harden", "--label-free", "-o", "x.onnx")
    assert result.exit_code == 2 and "No such option" in result.output


def test_samples_zero_means_the_same_in_every_command(invoke):
    for command in ("evaluate", "attack", "compare"):
        assert "0 skips Monte Carlo" in invoke(command, "--help").output, command
    result = invoke("evaluate", "--samples", "0", "--max-samples", "1")
    assert result.exit_code == 0, result.output
    assert "Monte Carlo skipped (--samples 0)" in result.output
    # --max-samples is visible in the header, not only the dataset's own size.
    assert "first 1 of 360 evaluation samples used (--max-samples)" in result.output
    assert "--plot draws the Monte Carlo histogram" in invoke("evaluate", "--samples", "0", "--plot", "x.png").output


def test_readme_evaluate_synopsis_lists_every_option(invoke):
    text = (ROOT / "README.md").read_text()
    synopsis = re.search(r"```\n(cimguard evaluate .*?)```", text, flags=re.S).group(1)
    help_text = invoke("evaluate", "--help").output
    options = set(re.findall(r"^\s+(--[a-z-]+)", help_text, flags=re.M)) - {"--help"}
    assert options and all(option in synopsis for option in options), options - set(re.findall(r"--[a-z-]+", synopsis))


def test_devices_and_plugins_call_built_ins_the_same(invoke):
    listing = invoke("devices").output
    assert "plugin cimguard_plugins" not in listing
    assert re.search(r"^gaussian .* built-in ", listing, flags=re.M)
    assert "cimguard_plugins.devices.gaussian (built-in)" in invoke("plugins").output


@dataclass(frozen=True)
class UndocumentedConfig(DeviceConfig):
    sigma: float = 0.1


class UndocumentedDevice(GaussianDevice):
    Config = UndocumentedConfig


class _Plugin:
    @hookimpl
    def register_devices(self, register):
        register("undocumented", UndocumentedDevice)


def test_a_config_without_docstring_shows_no_signature(invoke):
    plugin = _Plugin()
    plugins.pm.register(plugin, name="undocumented-plugin")
    plugins._registries = None
    try:
        result = invoke("devices", "--show", "undocumented")
        assert result.exit_code == 0, result.output
        assert "UndocumentedConfig(" not in result.output
        assert result.output.splitlines()[1] == ""  # no description line at all
        assert re.search(r"^undocumented .* plugin undocumented-plugin ", invoke("devices").output, flags=re.M)
    finally:
        plugins.pm.unregister(plugin)
        plugins._registries = None


def test_headers_and_plot_titles_name_every_override(invoke, tmp_path, monkeypatch):
    import cimguard.plot

    titles = []
    original = cimguard.plot.save_figure

    def capture(figure, path):
        titles.append(" ".join(axes.get_title() for axes in figure.axes))
        return original(figure, path)

    monkeypatch.setattr(cimguard.plot, "save_figure", capture)
    args = ("--device", "pcm", "--device-param", "t=86400", "--device-param", "read_noise=false", "--max-samples", "20")
    result = invoke("evaluate", *args, "--samples", "2", "--plot", tmp_path / "e.png")
    assert result.exit_code == 0, result.output
    assert "device  pcm, t=86400 s, read_noise=False (thg 0.03 levels)" in result.output
    result = invoke("attack", *args, "--samples", "0", "--iterations", "1", "--plot", tmp_path / "a.png")
    assert result.exit_code == 0, result.output
    assert "device  pcm, t=86400 s, read_noise=False," in result.output
    assert len(titles) == 2 and all("pcm, t=86400 s, read_noise=False" in title for title in titles)
