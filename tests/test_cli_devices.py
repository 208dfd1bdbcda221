"""``cimguard devices`` and the device options of ``evaluate`` end to end (CliRunner)."""

from __future__ import annotations

import json

import pytest

PROFILE = """
[my_rram]
base = "rram"
source = "our 2025 wafer measurements"
bits_per_device = 1
thg = 0.02
sigma_offset_us = 6.0

[slow_pcm]
base = "pcm"
t = 3600
"""


@pytest.fixture()
def device_file(tmp_path):
    path = tmp_path / "my_devices.toml"
    path.write_text(PROFILE)
    return path


def _error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_devices_lists_built_ins_with_sources(invoke):
    result = invoke("devices")
    assert result.exit_code == 0, result.output
    for name in ("gaussian", "pcm", "rram", "fefet"):
        assert any(line.startswith(name + " ") for line in result.output.splitlines()), name
    rows = json.loads(invoke("devices", "--json").output)
    sources = {row["name"]: row["source"] for row in rows}
    assert "aihwkit" in sources["pcm"] and "Milo" in sources["rram"] and "Soliman" in sources["fefet"]


def test_devices_lists_profiles_from_a_device_file(invoke, device_file):
    result = invoke("devices", "--device-file", device_file)
    assert result.exit_code == 0, result.output
    line = next(line for line in result.output.splitlines() if line.startswith("my_rram"))
    assert "profile of rram" in line and "our 2025 wafer measurements" in line
    assert any(line.startswith("slow_pcm") for line in result.output.splitlines())


@pytest.mark.parametrize(
    "name,expected",
    [
        ("pcm", ["Nandakumar", "0.26348", "t0", "seconds", "worst-case box"]),
        ("rram", ["-0.009107", "4.78232", "CrossSim", "50, 108.3, 166.7, 225 µS"]),
        ("fefet", ["Soliman", "Nature Communications 14, 6272 (2023)", "sigma_levels_mv", "38", "mV", "level units"]),
    ],
)
def test_show_prints_parameters_units_and_source(invoke, name, expected):
    result = invoke("devices", "--show", name)
    assert result.exit_code == 0, result.output
    for text in expected:
        assert text in result.output, text


def test_show_applies_overrides_and_profiles(invoke, device_file):
    shown = json.loads(invoke("devices", "--show", "pcm", "--device-param", "t=86400", "--json").output)
    values = {p["name"]: p["value"] for p in shown["parameters"]}
    assert values["t"] == 86400.0
    assert shown["deviation_bound_levels"] > 0.03
    profile = json.loads(invoke("devices", "--show", "my_rram", "--device-file", device_file, "--json").output)
    values = {p["name"]: p["value"] for p in profile["parameters"]}
    assert (values["bits_per_device"], values["thg"], values["sigma_offset_us"]) == (1, 0.02, 6.0)
    assert profile["source"] == "our 2025 wafer measurements"
    assert profile["programming_sigma_levels"][0] == pytest.approx((-0.009107 * 50 + 6.0) / 175, rel=1e-5)


def test_evaluate_with_a_profile_from_a_device_file(invoke, device_file, tmp_path):
    out = tmp_path / "report.json"
    result = invoke("evaluate", "--device", "my_rram", "--device-file", device_file,
                    "--device-param", "thg=0.01", "--samples", "3", "--json", out)
    assert result.exit_code == 0, result.output
    params = json.loads(out.read_text())["setup"]["device_params"]
    assert (params["bits_per_device"], params["sigma_offset_us"], params["thg"]) == (1, 6.0, 0.01)
    assert "device  my_rram, thg=0.01 levels," in result.output  # every overridden parameter, with its unit


def test_evaluate_pcm_after_one_day(invoke, tmp_path):
    out = tmp_path / "pcm.json"
    result = invoke("evaluate", "--device", "pcm", "--device-param", "t=86400", "--samples", "4", "--json", out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["setup"]["device_params"]["t"] == 86400.0
    assert len(report["monte_carlo"]["accuracies"]) == 4
    assert 0.5 < report["monte_carlo"]["mean"] <= 1.0


def test_evaluate_plot_writes_a_png_and_never_overwrites(invoke, tmp_path):
    out = tmp_path / "mc.png"
    result = invoke("evaluate", "--samples", "5", "--plot", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "already exists" in _error(invoke("evaluate", "--samples", "5", "--plot", out))
    assert "must end in .png, .pdf or .svg" in _error(invoke("evaluate", "--samples", "2", "--plot", tmp_path / "x.gif"))
    same = tmp_path / "both.svg"
    assert "same file" in _error(invoke("evaluate", "--samples", "2", "--plot", same, "--json", same))


@pytest.mark.parametrize(
    "args,message",
    [
        (["--device-param", "sigma=-0.2"], "sigma must be >= 0"),
        (["--device", "rram", "--device-param", "bits_per_device=0"], "levels >= 2"),
        (["--device", "pcm", "--device-param", "t=-5"], "t must be >= 0"),
        (["--device", "pcm", "--device-param", "colour=red"], "unknown device parameter 'colour'"),
        (["--device", "fefet", "--device-param", "sigma_levels_mv=40"], "one value per level"),
        (["--device", "memristor"], "unknown device 'memristor'"),
    ],
)
def test_bad_device_parameters_on_the_command_line(invoke, args, message):
    assert message in _error(invoke("evaluate", "--samples", "2", *args))


def test_bad_device_file_and_unknown_show(invoke, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[x]\nbase = \"rram\"\nthg = -1\n\n[good]\nbase = \"rram\"\nthg = 0.02\n\n[nobase]\nthg = 1\n")
    listing = invoke("devices", "--device-file", bad)
    assert listing.exit_code == 1
    error = listing.output.strip().splitlines()[-1]
    # The error names the profile and the file; the good profile is still listed beside the bad ones.
    assert error.startswith("Error: 2 profile(s)") and "profile [x] of" in error and "bad.toml" in error
    assert "thg must be >= 0" in error
    assert any(line.startswith("good ") and "profile of rram" in line for line in listing.output.splitlines())
    assert "NOT USABLE" in listing.output and "needs base" in listing.output
    # The good profile of the same file is usable; the bad one fails naming itself and the file.
    assert invoke("evaluate", "--device", "good", "--device-file", bad, "--samples", "0",
                  "--max-samples", "8").exit_code == 0
    assert "profile [x] of" in _error(invoke("evaluate", "--device", "x", "--device-file", bad, "--samples", "0"))
    assert "unknown device 'nope'" in _error(invoke("devices", "--show", "nope"))
    assert "not found" in _error(invoke("devices", "--device-file", tmp_path / "missing.toml"))
