"""README's quick start stays true: exactly two commands, and CI runs the test one verbatim."""

from __future__ import annotations

import re
from pathlib import Path

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
