"""Scaling out with torchrun, printed (no pass/fail): run ``python benchmarks/bench_distributed.py``.

The same command, started by ``torchrun --standalone --nproc-per-node N -m cimguard ...``
for N = 1 and N = 2 (gloo on the CPU, one thread per process: ``OMP_NUM_THREADS=1``),
timed from launch to exit, so process start-up and the import of torch are included:

1. ``evaluate``: Monte Carlo, chips split across processes by chip index;
2. ``attack --solver flwc --samples 0``: the worst-case search, data split across
   processes and the margin gradient all-reduced every iteration.

It prints each wall time and the speed-up (time with 1 process / time with N), and
checks that the reports agree (Monte Carlo: identical; worst case: the accuracy).
Options: ``--samples`` (Monte Carlo chips), ``--iterations`` (flwc steps),
``--processes`` (default ``2``), ``--repeats`` (the best of R runs is kept).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def timed_run(processes: int, args: list[str], folder: Path, name: str) -> tuple[float, dict]:
    """Wall seconds of one torchrun launch of ``cimguard args``, and its JSON report."""
    report = folder / f"{name}.json"
    report.unlink(missing_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               "-m", "cimguard", *args, "--json", str(report)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    start = time.perf_counter()
    subprocess.run(command, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return seconds, json.loads(report.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=400, help="Monte Carlo chips (default 400)")
    parser.add_argument("--iterations", type=int, default=40, help="flwc sign steps (default 40)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    workloads = {
        "evaluate": ["evaluate", "--samples", str(args.samples)],
        "attack flwc": ["attack", "--solver", "flwc", "--thg", "0.03", "--samples", "0", "--iterations",
                        str(args.iterations), "--solver-param", "stop_at_bound=false"],
    }
    print(f"torchrun --standalone, gloo on the CPU, OMP_NUM_THREADS=1, {os.cpu_count()} CPUs; "
          f"wall time from launch to exit, best of {args.repeats}")
    print(f"{'work':<12} {'1 process':>10} {f'{args.processes} processes':>12} {'speed-up':>9}  reports")
    with tempfile.TemporaryDirectory() as folder:
        for name, command in workloads.items():
            times, reports = {}, {}
            for processes in (1, args.processes):
                runs = [timed_run(processes, command, Path(folder), f"{name}-{processes}".replace(" ", "_"))
                        for _ in range(args.repeats)]
                times[processes] = min(seconds for seconds, _ in runs)
                reports[processes] = runs[0][1]
            if name == "evaluate":
                same = reports[1]["monte_carlo"] == reports[args.processes]["monte_carlo"]
                agreement = "Monte Carlo identical" if same else "Monte Carlo DIFFERS"
            else:
                accuracies = [reports[p]["points"][0]["worst_case"]["flwc"]["accuracy"] for p in (1, args.processes)]
                agreement = f"worst case {accuracies[0]:.4f} vs {accuracies[1]:.4f}"
            print(f"{name:<12} {times[1]:>9.1f}s {times[args.processes]:>11.1f}s "
                  f"{times[1] / times[args.processes]:>8.2f}x  {agreement}")


if __name__ == "__main__":
    main()
