"""The ONNX node conformance suite: onnxruntime, plain onnx2torch and cimguard side by side.

    python benchmarks/bench_node_suite.py [--save] [--list-wrong]

Every numeric case of ``onnx.backend.test.case.node.collect_testcases()`` (see
``tests/node_suite.py``), in both forms (``written``: as the suite wrote it; ``constants``:
every input after the first an initializer), is run by three engines and compared with the
case's reference outputs (rtol 1e-3, atol 1e-5, NaN equal to NaN):

* ``onnxruntime``: an ``InferenceSession`` on the CPU;
* ``plain``: ``onnx2torch.convert``, in a separate interpreter that never imports cimguard
  (cimguard registers converters in onnx2torch's registry);
* ``cimguard``: ``cimguard.onnx.model.convert_model`` (legalisation + converters).

Each case ends ``match``, ``refused`` (no module: an error at conversion), ``wrong`` (the
engine computes other numbers without complaint) or ``crash`` (the converted module raises at
run time).  Prints the counts per engine and form; ``--save`` writes them to
``benchmarks/results/node_suite.json`` (never over an existing file) for the doc table of
``docs/import.md`` (``make_doc_tables.py``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
RESULTS = HERE / "results" / "node_suite.json"
ENGINES = ("onnxruntime", "plain", "cimguard")


def _worker(engine: str) -> None:
    """Run every case with ``engine``; one JSON line per case."""
    import torch

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    from tests.node_suite import FORMS, mismatch, node_cases, run_onnxruntime, run_torch

    if engine == "plain":
        from onnx2torch import convert
    elif engine == "cimguard":
        from cimguard.onnx.model import convert_model as convert
    for form in FORMS:
        for case in node_cases(form):
            row = {"key": case.key, "ops": case.operators}
            try:
                if engine == "onnxruntime":
                    results = run_onnxruntime(case)
                else:
                    module = convert(case.model)
            except Exception as exc:  # noqa: BLE001 - every failure is a data point here
                row.update(status="refused", reason=f"{type(exc).__name__}: {str(exc).strip()[:200]}")
                print(json.dumps(row), flush=True)
                continue
            try:
                if engine != "onnxruntime":
                    results = run_torch(module, case.inputs, float32=engine == "cimguard")
            except Exception as exc:  # noqa: BLE001
                row.update(status="crash", reason=f"run: {type(exc).__name__}: {str(exc).strip()[:200]}")
                print(json.dumps(row), flush=True)
                continue
            problem = mismatch(case.outputs, results)
            row.update(status="wrong" if problem else "match", reason=problem)
            print(json.dumps(row), flush=True)


def run_engine(engine: str) -> tuple[dict[str, dict], float]:
    start = time.perf_counter()
    result = subprocess.run([sys.executable, __file__, "--worker", engine], capture_output=True, text=True, check=False)
    rows = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            row = json.loads(line)
            rows[row["key"]] = row
    if result.returncode != 0:
        print(f"warning: {engine} worker exited with {result.returncode}: {result.stderr[-500:]}", file=sys.stderr)
    return rows, time.perf_counter() - start


def summarise(rows: dict[str, dict[str, dict]]) -> dict:
    """Counts per engine and form, and cimguard's coverage of onnxruntime's matching cases."""
    summary: dict = {}
    for engine, by_key in rows.items():
        for form in ("written", "constants"):
            statuses = [r["status"] for k, r in by_key.items() if k.startswith(form + ":")]
            summary.setdefault(engine, {})[form] = {
                s: statuses.count(s) for s in ("match", "refused", "wrong", "crash")} | {"cases": len(statuses)}
    for form in ("written", "constants"):
        if "onnxruntime" not in rows:
            for engine in rows:
                summary[engine][form]["of_onnxruntime"] = 0  # not measured in this run
            continue
        ort_ok = {k for k, r in rows["onnxruntime"].items() if k.startswith(form + ":") and r["status"] == "match"}
        for engine in [e for e in ("plain", "cimguard") if e in rows]:
            ours = {k for k, r in rows[engine].items() if r["status"] == "match"}
            summary[engine][form]["of_onnxruntime"] = len(ort_ok & ours)
        summary["onnxruntime"][form]["of_onnxruntime"] = len(ort_ok)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", choices=ENGINES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--save", action="store_true", help=f"write the counts to {RESULTS}")
    parser.add_argument("--list-wrong", action="store_true",
                        help="list every engine's wrong cases and cimguard's refusals")
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker)
        return
    rows: dict[str, dict[str, dict]] = {}
    for engine in args.engines.split(","):
        rows[engine], seconds = run_engine(engine)
        print(f"{engine}: {len(rows[engine])} runs in {seconds:.0f} s", flush=True)
    summary = summarise(rows)
    print(f"\n{'engine':<12} {'form':<10} {'cases':>6} {'match':>6} {'refused':>8} {'wrong':>6} {'crash':>6} "
          f"{'of ORT':>7}")
    for engine, forms in summary.items():
        for form, counts in forms.items():
            print(f"{engine:<12} {form:<10} {counts['cases']:>6} {counts['match']:>6} {counts['refused']:>8} "
                  f"{counts['wrong']:>6} {counts['crash']:>6} {counts['of_onnxruntime']:>7}")
    if "cimguard" in rows and "onnxruntime" in rows:
        for form in ("written", "constants"):
            share = summary["cimguard"][form]["of_onnxruntime"] / max(summary["onnxruntime"][form]["match"], 1)
            print(f"cimguard matches {share:.1%} of onnxruntime's matching cases ({form})")
    if args.list_wrong:
        for engine, by_key in rows.items():
            for key, row in sorted(by_key.items()):
                if row["status"] in ("wrong", "crash") or (engine == "cimguard" and row["status"] == "refused"):
                    ort = rows.get("onnxruntime", {}).get(key, {}).get("status", "?")
                    print(f"{engine:<12} {row['status']:<8} ort={ort:<8} {key} {row['ops']}: {row['reason']}")
    if args.save:
        save(summary)


def save(summary: dict) -> None:
    """Write the counts with the versions that produced them (no-clobber: delete the file to re-measure)."""
    import onnx
    import onnx2torch
    import onnxruntime
    import torch

    from cimguard.report import write_json

    versions = {"onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "torch": torch.__version__,
                "onnx2torch": getattr(onnx2torch, "__version__", "?")}
    RESULTS.parent.mkdir(exist_ok=True)
    write_json(RESULTS, {"summary": summary, "versions": versions})
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
