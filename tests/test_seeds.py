"""One seed range and one way a seed becomes a random stream, for Monte Carlo, solvers and trainers."""

from __future__ import annotations

import pytest
import torch

from cimguard.api import run_solver
from cimguard.errors import CimguardError
from cimguard.factories import build_trainer
from cimguard.seeds import SEED_MAX, check_seed, chip_seed, stream_seed, torch_generator
from cimguard.sim.evaluate import monte_carlo
from cimguard.sim.worst_case import make_problem

OUT_OF_RANGE = (-1, SEED_MAX + 1, 1.5, True, "3")


@pytest.mark.parametrize("seed", (0, 1, 2**63, SEED_MAX))
def test_the_whole_64_bit_range_is_accepted_and_reproducible(seed):
    assert check_seed(seed) == seed
    first = torch.rand(4, generator=torch_generator(seed))
    assert torch.equal(first, torch.rand(4, generator=torch_generator(seed)))


@pytest.mark.parametrize("seed", OUT_OF_RANGE)
def test_anything_else_is_one_line_naming_the_range(seed):
    with pytest.raises(CimguardError, match=r"^seed must be an integer from 0 to 2\^64 - 1, got "):
        check_seed(seed)


def test_streams_are_distinct_and_wrap_inside_the_range():
    assert stream_seed(5, 0) == 5 and stream_seed(5, 1) != 5
    assert 0 <= stream_seed(SEED_MAX, 1) <= SEED_MAX
    assert len({stream_seed(7, k) for k in range(100)}) == 100


@pytest.mark.parametrize("seed", (-1, SEED_MAX + 1))
def test_monte_carlo_solvers_and_trainers_refuse_the_same_seeds(setup, seed):
    # The same range everywhere: the CLI's --seed type, Monte Carlo, a solver's generator, a trainer's config.
    message = r"seed must be an integer from 0 to 2\^64 - 1"
    with pytest.raises(CimguardError, match=message):
        monte_carlo(setup.crossbar, setup.data, 2, seed, progress=False)
    with pytest.raises(CimguardError, match=message):
        chip_seed(seed, 0)
    with pytest.raises(CimguardError, match=message):
        run_solver("flwc", make_problem(setup.crossbar, setup.data, 0.03), seed, {"iterations": 1})
    with pytest.raises(CimguardError, match=message):
        build_trainer("noise", {"seed": seed})


def test_the_cli_seed_option_takes_the_same_range(invoke):
    assert invoke("evaluate", "--samples", "0", "--max-samples", "20", "--seed", str(SEED_MAX)).exit_code == 0
    result = invoke("evaluate", "--samples", "0", "--seed", str(SEED_MAX + 1))
    assert result.exit_code == 2 and "--seed" in result.output
