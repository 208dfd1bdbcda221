"""Conversion coverage on the ONNX wheel's backend test models: plain onnx2torch vs cimguard.

    python benchmarks/bench_conversion_coverage.py [--folders pytorch-converted,light] [--threads 2]

For every model under ``onnx/backend/test/data/{pytorch-converted,light}`` each engine
converts the file and runs it on the stored test inputs (``light``: the ``arange(n)/n``
input ONNX's own backend runner uses):

* ``plain``: ``onnx2torch.convert(model)``, in a separate interpreter that never imports
  cimguard (cimguard registers extra converters in onnx2torch's registry);
* ``cimguard``: ``cimguard.onnx.model.import_model`` (legalisation + extra converters).

A model *converts* when a torch module comes out and runs; it *matches* when every output
is within 1e-4 of the stored reference, relative to the output's scale.  Prints the counts
per folder side by side, the models whose status differs, and the time each engine took.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TOLERANCE = 1e-4


def _cases(folder: str):
    # The test suite's reader of the onnx wheel's models, so both count the same cases.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.backend_data import backend_cases

    return backend_cases(folder)


def _worker(engine: str, folder: str, threads: int) -> None:
    """Convert and run every model of ``folder``; print one JSON line per model."""
    import numpy as np
    import onnx
    import torch

    torch.set_num_threads(threads)
    if engine == "plain":
        from onnx2torch import convert

        def to_torch(model):
            return convert(model)
    else:
        from cimguard.onnx.model import import_model

        def to_torch(model):
            return import_model(model, require_mapped=False).module

    for name, path, sets in _cases(folder):
        row = {"name": name, "converts": False, "matches": False, "error": None, "reason": None}
        start = time.perf_counter()
        try:
            module = to_torch(onnx.load(str(path)))
            worst = 0.0
            for inputs, references in sets:
                with torch.no_grad():
                    out = module(*[torch.from_numpy(np.array(x)) for x in inputs])
                outs = [out] if isinstance(out, torch.Tensor) else list(out)
                for ref, ours in zip(references, outs):
                    ours = ours.numpy()
                    if ref.shape != ours.shape:
                        worst = float("inf")
                        continue
                    scale = max(float(np.abs(ref).max(initial=0.0)), 1e-6)
                    worst = max(worst, float(np.abs(ref.astype(np.float64) - ours).max(initial=0.0)) / scale)
                if len(outs) != len(references):
                    worst = float("inf")
            row.update(converts=True, matches=worst <= TOLERANCE, error=worst)
        except Exception as exc:  # noqa: BLE001 - every failure is a data point here
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            row["reason"] = f"{type(exc).__name__}: {text}"[:160]
        row["seconds"] = time.perf_counter() - start
        print(json.dumps(row), flush=True)


def _run(engine: str, folder: str, threads: int) -> tuple[list[dict], float]:
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, __file__, "--worker", engine, "--folders", folder, "--threads", str(threads)],
        capture_output=True, text=True, check=False,
    )
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0:
        print(f"warning: {engine} worker on {folder} exited with {result.returncode}: {result.stderr[-300:]}",
              file=sys.stderr)
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folders", default="pytorch-converted,light")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--worker", choices=("plain", "cimguard"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.folders, args.threads)
        return
    print(f"{'folder':<18} {'models':>6} | {'onnx2torch converts':>19} {'matches':>8} | "
          f"{'cimguard converts':>17} {'matches':>8} | {'time plain':>10} {'time cimguard':>13}")
    differences = []
    totals = [0, 0, 0, 0, 0]
    for folder in args.folders.split(","):
        plain, plain_time = _run("plain", folder, args.threads)
        ours, ours_time = _run("cimguard", folder, args.threads)
        count = len(ours)
        counts = [sum(r["converts"] for r in plain), sum(r["matches"] for r in plain),
                  sum(r["converts"] for r in ours), sum(r["matches"] for r in ours)]
        for i, value in enumerate([count] + counts):
            totals[i] += value
        print(f"{folder:<18} {count:>6} | {counts[0]:>19} {counts[1]:>8} | {counts[2]:>17} {counts[3]:>8} | "
              f"{plain_time:>9.1f}s {ours_time:>12.1f}s")
        by_name = {r["name"]: r for r in plain}
        for row in ours:
            before = by_name.get(row["name"], {})
            if before.get("matches") != row["matches"]:
                differences.append((folder, row["name"], before.get("reason") or f"error {before.get('error')}",
                                    "match" if row["matches"] else (row["reason"] or f"error {row['error']}")))
    print(f"{'total':<18} {totals[0]:>6} | {totals[1]:>19} {totals[2]:>8} | {totals[3]:>17} {totals[4]:>8} |")
    if totals[0]:
        print(f"\nmatching: onnx2torch {totals[2] / totals[0]:.1%}, cimguard {totals[4] / totals[0]:.1%}")
    if differences:
        print("\nmodels whose status differs (onnx2torch -> cimguard):")
        for folder, name, before, after in differences:
            print(f"  {folder}/{name}: {before} -> {after}")


if __name__ == "__main__":
    main()
