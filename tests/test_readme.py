"""README's quick start stays true: exactly two commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_an_install_and_run_and_a_test_command():
    run, test = _quick_start_commands()
    assert "pip install ." in run and run.endswith("cimguard evaluate")
    assert "pip install '.[test]'" in test and test.endswith("python -m pytest")


def test_ci_runs_the_readme_test_command_verbatim():
    _, test = _quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test in ci.splitlines()


def test_console_script_is_declared():
    assert 'cimguard = "cimguard.cli:main"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("document", ["README.md", "docs/devices.md"])
def test_device_profiles_shown_in_the_docs_load_and_show(document, invoke, tmp_path):
    import tomllib

    blocks = re.findall(r"```toml\n(.*?)```", (ROOT / document).read_text(), flags=re.S)
    blocks = [block for block in blocks if "\nbase = " in block]  # not the pyproject.toml examples
    assert blocks, f"{document} shows no TOML device profile"
    for number, block in enumerate(blocks):
        path = tmp_path / f"profiles_{number}.toml"
        path.write_text(block)
        for name in tomllib.loads(block):
            result = invoke("devices", "--device-file", str(path), "--show", name)
            assert result.exit_code == 0, (document, name, result.output)
            assert name in result.output
