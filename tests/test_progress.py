"""Long runs under a pipe or in a CI log: the header comes before any work, then progress lines."""

from __future__ import annotations

import io

from cimguard.progress import LogProgress, progress_bar


def test_non_tty_run_prints_header_first_then_progress_lines(invoke, monkeypatch):
    monkeypatch.setenv("CIMGUARD_PROGRESS_INTERVAL", "0")  # a line per update instead of every 5 s
    result = invoke("attack", "--samples", "3", "--thg", "0.03", "--iterations", "2", "--max-samples", "40",
                    "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("model "))
    chips = [i for i, line in enumerate(lines) if line.startswith("Monte Carlo chips: ")]
    passes = [i for i, line in enumerate(lines) if line.startswith("APGD thg=0.03: ")]  # the default solver
    table = next(i for i, line in enumerate(lines) if line.split()[:2] == ["thg", "clean"])
    assert chips and passes
    assert header < min(chips) < max(chips) < min(passes) <= max(passes) < table
    assert "3/3 chip" in lines[chips[-1]] and "\r" not in result.output
    assert "accuracy=" in lines[passes[-1]]  # the solver's postfix is in the line


def test_log_progress_prints_at_most_once_per_interval():
    out = io.StringIO()
    bar = LogProgress(10, "work", "step", interval=3600, file=out)
    for _ in range(10):
        bar.update()
    bar.close()
    assert out.getvalue() == ""  # shorter than one interval: silent

    out = io.StringIO()
    bar = LogProgress(4, "work", "step", interval=0, file=out)
    bar.set_postfix(loss="0.5")
    for _ in range(4):
        bar.update()
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("work: 1/4 step (25%)") and lines[-1].startswith("work: 4/4 step (100%)")
    assert all(line.endswith("loss=0.5]") for line in lines)


def test_disabled_progress_is_silent(capsys):
    bar = progress_bar(5, "work", "step", False)
    bar.update(5)
    bar.close()
    assert capsys.readouterr().err == ""
