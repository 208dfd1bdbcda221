"""Shared fixtures: the embedded model, digits data, a mapped crossbar, and a CLI runner."""

from __future__ import annotations

import os

# Tests must not pick up whatever third-party plugins happen to be installed.
os.environ.setdefault("CIMGUARD_DISABLE_PLUGIN_AUTOLOAD", "1")

import pytest
import torch
from click.testing import CliRunner

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def default_model_path():
    from cimguard_models import default_model_path

    return default_model_path()


@pytest.fixture(scope="session")
def digits():
    from cimguard.factories import load_dataset

    return load_dataset("digits")


@pytest.fixture()
def setup(default_model_path):
    """The embedded model on the gaussian device (thg 0.03), digits evaluation split."""
    from cimguard.api import build_setup

    return build_setup(default_model_path, "digits", "gaussian", {"thg": 0.03}, torch_device="cpu")


@pytest.fixture()
def one_thread():
    """One torch thread: the small models here train faster without intra-op threading."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def runner():
    return CliRunner()


@pytest.fixture()
def invoke(runner):
    """Run the CLI in-process; returns the click Result."""
    from cimguard.cli import cli

    def run(*args: str, **kwargs):
        return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


def pytest_terminal_summary(terminalreporter):
    """One line of ONNX node-suite coverage when it ran (``tests/test_node_suite.py``)."""
    import sys

    suite = sys.modules.get("tests.test_node_suite") or sys.modules.get("test_node_suite")
    outcomes = getattr(suite, "OUTCOMES", None)
    if not outcomes:
        return
    parts = []
    for form, label in (("constants", "weights as constants"), ("written", "as written")):
        values = [v for k, v in outcomes.items() if k.startswith(form + ":")]
        total = sum(1 for k in suite.CASES if k.startswith(form + ":"))
        parts.append(f"{label} {values.count('match')} match + {values.count('refused')} refused in one line "
                     f"+ {values.count('failed')} failed of {len(values)} run ({total} cases)")
    terminalreporter.write_line("ONNX node suite: " + "; ".join(parts))
