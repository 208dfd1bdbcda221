"""The plugin core: built-ins, duplicate names, entry-point discovery, and README's device plugin."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import cimguard.plugins as plugins
from cimguard.errors import CimguardError
from cimguard.hookspecs import hookimpl

ROOT = Path(__file__).resolve().parents[1]


def test_builtins_are_listed_with_their_hooks_and_names(invoke):
    result = invoke("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.output)}
    gaussian = rows["cimguard_plugins.devices.gaussian"]
    assert gaussian["builtin"] and gaussian["hooks"] == ["register_devices"]
    assert gaussian["registers"] == {"devices": ["gaussian"]}
    assert rows["cimguard_plugins.datasets.digits"]["registers"] == {"datasets": ["digits"]}
    text = invoke("plugins").output
    assert "cimguard_plugins.devices.gaussian (built-in)" in text and "devices: gaussian" in text


class _Clash:
    """A plugin that registers a device name a built-in already has."""

    @hookimpl
    def register_devices(self, register):
        register("gaussian", object)


def test_duplicate_name_names_both_plugins():
    clash = _Clash()
    plugins.pm.register(clash, name="clashing-plugin")
    plugins._registries = None
    try:
        with pytest.raises(CimguardError) as info:
            plugins.registry("devices")
        message = str(info.value)
        assert "'gaussian' is registered twice" in message
        assert "cimguard_plugins.devices.gaussian" in message and "clashing-plugin" in message
    finally:
        plugins.pm.unregister(clash)
        plugins._registries = None


def _readme_block(after: str) -> str:
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:python|toml)\n(.*?)```", text, flags=re.S)
    return next(block for block in blocks if after in block)


@pytest.fixture(scope="module")
def installed_readme_plugin(tmp_path_factory):
    """README's device plugin, pip-installed into its own folder (a real dist with entry points)."""
    source = tmp_path_factory.mktemp("plugin-src")
    (source / "my_cimguard_device.py").write_text(_readme_block("# my_cimguard_device.py"))
    (source / "pyproject.toml").write_text(_readme_block('name = "my-cimguard-device"'))
    target = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-index", "--target", str(target), str(source)],
        check=True, capture_output=True, text=True,
    )
    return target


def _cimguard(site: Path, *args: str, autoload: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_AUTOLOAD_ENV}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(ROOT)])
    if not autoload:
        env[plugins.DISABLE_AUTOLOAD_ENV] = "1"
    return subprocess.run([sys.executable, "-m", "cimguard", *args], env=env, capture_output=True, text=True)


def test_entry_point_device_plugin_is_listed_and_used(installed_readme_plugin, tmp_path):
    listing = _cimguard(installed_readme_plugin, "plugins", "--json")
    assert listing.returncode == 0, listing.stderr
    rows = {row["name"]: row for row in json.loads(listing.stdout)}
    assert rows["linear_sigma"] == {
        "name": "linear_sigma", "builtin": False, "version": "0.1.0",
        "hooks": ["register_devices"], "registers": {"devices": ["linear-sigma"]},
    }
    report = tmp_path / "report.json"
    run = _cimguard(installed_readme_plugin, "evaluate", "--device", "linear-sigma", "--device-param", "top_factor=5",
                    "--samples", "3", "--json", str(report))
    assert run.returncode == 0, run.stderr
    params = json.loads(report.read_text())["setup"]["device_params"]
    assert params["top_factor"] == 5.0 and params["sigma"] == 0.05


def test_autoload_switch_hides_entry_point_plugins(installed_readme_plugin):
    run = _cimguard(installed_readme_plugin, "evaluate", "--device", "linear-sigma", autoload=False)
    assert run.returncode == 1
    assert run.stderr.strip().startswith("Error: unknown device 'linear-sigma'")
    assert "Traceback" not in run.stderr


def test_readme_plugin_sigma_grows_with_level(installed_readme_plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(installed_readme_plugin))
    import torch

    from my_cimguard_device import LinearSigmaDevice

    device = LinearSigmaDevice()
    sigma = device.programming_sigma(torch.tensor([0.0, 1.0]))
    assert sigma.tolist() == pytest.approx([0.05, 0.15])


def test_a_broken_entry_point_plugin_is_reported_not_fatal(tmp_path):
    site = tmp_path / "site"
    info = site / "broken_cimguard_plugin-0.2.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-cimguard-plugin\nVersion: 0.2\n")
    (info / "entry_points.txt").write_text("[cimguard]\nbroken = module_that_does_not_exist\n")
    run = _cimguard(site, "plugins")
    assert run.returncode == 0, run.stderr
    assert run.stderr.strip() == (
        "warning: plugin broken was not loaded (ModuleNotFoundError: No module named 'module_that_does_not_exist')"
    )
    assert "broken (entry point)\n  not loaded: ModuleNotFoundError" in run.stdout
    assert "cimguard_plugins.devices.gaussian (built-in)" in run.stdout
