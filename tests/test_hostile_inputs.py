"""The hostile-input corpus (``tests/hostile_corpus.py``): every bad input is a real refusal.

Each case must exit with its status and one ``Error:`` line matching its pattern; no
case may reach the catch-all "internal error", print an accuracy, or write a file.
"""

from __future__ import annotations

import re

import pytest

from tests.hostile_corpus import CASES, build_files

#: A line that reports a figure: the evaluate table rows, the attack table, "accuracy 0.1234".
ACCURACY_LINE = re.compile(r"(\d\.\d{4}\b|accuracy|agreement)")


@pytest.fixture(scope="session")
def corpus(tmp_path_factory):
    return build_files(tmp_path_factory.mktemp("hostile"))


def test_the_corpus_covers_every_class_with_enough_cases():
    assert len(CASES) >= 150
    assert len({case.id for case in CASES}) == len(CASES)
    prefixes = {case.id.split("-")[0] for case in CASES}
    assert prefixes >= {"model", "data", "device", "devicefile", "replay", "seed", "number", "output", "input"}

#: What evaluate, attack, harden and compare print before any work (issue 10: the header first).
HEADER_LINE = re.compile(r"^(model|check|data|device|seed|box|trainer) ")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_hostile_input_is_refused(case, corpus, tmp_path, invoke):
    out = tmp_path / "out"
    out.mkdir()
    before = sorted(p.name for p in corpus.iterdir())
    argv = [part.format(root=corpus, out=out) for part in case.argv]
    result = invoke(*argv)
    output = result.output
    assert "internal error" not in output, output
    assert result.exit_code == case.exit_code, output
    lines = output.strip().splitlines()
    error = lines[-1]
    assert error.startswith("Error: "), output
    # One error line, last; before it only what a command prints before any work (its header:
    # model, data, device, …), and for inspect its report.  Never a figure (checked below).
    assert sum(line.startswith("Error: ") for line in lines) == 1, output
    if argv[0] != "inspect":
        assert all(not line.strip() or HEADER_LINE.match(line) for line in lines[:-1]), output
    assert re.search(case.pattern, error), f"{error!r} does not match {case.pattern!r}"
    figures = [line for line in lines if not line.startswith("Error: ") and ACCURACY_LINE.search(line)]
    assert not figures, output
    assert list(out.iterdir()) == []
    assert sorted(p.name for p in corpus.iterdir()) == before
