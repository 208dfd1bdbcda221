"""``cimguard`` as torchrun starts it (``-m cimguard``), with two test-only faults switched on by env vars.

* ``CIMGUARD_TEST_FAIL_RANK=R``: rank R's Monte Carlo raises a one-line error (the others are fine).
* ``CIMGUARD_TEST_STOP_AFTER_EPOCH=E``: every rank raises ``KeyboardInterrupt`` right after the
  checkpoint of epoch E, as a Ctrl-C acted on together does.
* ``CIMGUARD_TEST_SIGINT=R:N``: rank R sends itself SIGINT (a real Ctrl-C, on that rank only) just
  before its N-th collective.
"""

import os

from cimguard.errors import CimguardError

if os.environ.get("CIMGUARD_TEST_FAIL_RANK") == os.environ.get("RANK"):
    import cimguard.sim.evaluate as evaluate

    def failing_monte_carlo(*args, **kwargs):
        raise CimguardError("test fault")

    evaluate.monte_carlo = failing_monte_carlo

if os.environ.get("CIMGUARD_TEST_STOP_AFTER_EPOCH"):
    import cimguard.sim.train as train

    stop_after = int(os.environ["CIMGUARD_TEST_STOP_AFTER_EPOCH"])
    save = train.Trainer._save

    def save_then_interrupt(self, run, path, fingerprint):
        save(self, run, path, fingerprint)
        if run.epoch == stop_after:
            raise KeyboardInterrupt

    train.Trainer._save = save_then_interrupt

if os.environ.get("CIMGUARD_TEST_SIGINT", ":").split(":")[0] == os.environ.get("RANK"):
    import signal

    import cimguard.distributed as distributed

    at = int(os.environ["CIMGUARD_TEST_SIGINT"].split(":")[1])
    calls = []
    reduce = distributed.all_reduce_sum

    def interrupted_reduce(tensors):
        calls.append(1)
        if len(calls) == at:
            os.kill(os.getpid(), signal.SIGINT)
        return reduce(tensors)

    distributed.all_reduce_sum = interrupted_reduce

from cimguard.cli import main  # noqa: E402

main()
