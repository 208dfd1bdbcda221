"""Every accuracy table quoted in README.md and docs/, computed by the code as it is today.

    python benchmarks/make_doc_tables.py [--seeds 0,1,2,3,4] [--epochs N] [--samples 100] [--threads 1]

Stages, each saving its raw numbers to ``benchmarks/results/`` (a stage whose file exists is
not re-run: delete the file to re-measure, nothing is ever overwritten):

* ``hardening_seed{S}.json``: :func:`bench_hardening.harden_and_compare` for every training seed
  (vanilla, noise, trice, atrice fine-tuned from the shipped LeNet; compared with the original
  at thg 0.01/0.02/0.03 on the gaussian device, 100 Monte Carlo chips, ``flwc`` and ``pgd``);
* ``solvers.json``: ``cimguard attack`` on the shipped LeNet, thg 0.01 and 0.03, solvers
  ``apgd``, ``flwc``, ``pgd``, ``lwc``, 100 Monte Carlo chips, seed 0;
* ``device_box.json``: ``cimguard attack`` with each built-in device's own box (``--thg device``),
  PCM at t = 0 and one day;
* ``solver_budget.json``: :func:`bench_solver_budget.measure`: every solver and a plain projected PGD at
  budgets of 10, 20, 40, 80 passes, on the shipped LeNet at thg 0.01 and 0.03 and on the harder MNIST
  LeNet the benchmark trains (when ``../shared/data/mnist-t10k`` exists).
* ``node_suite.json``: ``bench_node_suite.py``: the ONNX node conformance suite run by
  onnxruntime, plain onnx2torch and cimguard, both forms (``docs/import.md``).
* ``quantized.json``: :func:`quantized_lenet.measure`, the shipped LeNet quantized by onnxruntime's tools
  (QDQ, QOperator, dynamic) next to the float file: onnxruntime accuracy, clean chip, Monte Carlo, worst
  cases in the device box and at thg 0.03, hardened worst case over the seeds.

Then ``doc_tables.json`` (every table as rows of strings) and ``doc_tables.md`` (the same as
markdown) are written from the raw files, and ``docs/solver_budget.png`` (the any-time curves) is drawn
from ``solver_budget.json``.  ``tests/test_doc_tables.py`` checks that README.md
and docs/ quote exactly these tables.  Hardening rows are the mean over the seeds with the
range (min–max) beside it, because a single training seed is not a result.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TABLES_JSON = RESULTS / "doc_tables.json"
TABLES_MD = RESULTS / "doc_tables.md"
HARDENING_MODELS = ("original", "vanilla", "noise", "trice", "atrice")
ROOT = HERE.parent
#: The files whose tables come from this script; each table follows a ``<!-- doc-table: NAME -->`` line.
DOC_FILES = ("README.md", "docs/hardening.md", "docs/solvers.md", "docs/devices.md", "docs/import.md",
             "docs/quantized.md", "docs/certify.md")
MARKER = re.compile(r"^<!-- doc-table: (\w+) -->$")


def quoted_tables(text: str) -> list[tuple[str, list[str]]]:
    """``(name, table lines)`` for every marked table of a markdown text, in order."""
    lines = text.splitlines()
    found = []
    for index, line in enumerate(lines):
        match = MARKER.match(line.strip())
        if match:
            table = []
            for following in lines[index + 1:]:
                if not following.startswith("|"):
                    break
                table.append(following)
            found.append((match.group(1), table))
    return found


def fill_docs() -> None:
    """Replace every marked table in :data:`DOC_FILES` with the saved one (the docs are ours to rewrite)."""
    tables = json.loads(TABLES_JSON.read_text())
    for relative in DOC_FILES:
        path = ROOT / relative
        lines = path.read_text().splitlines()
        out: list[str] = []
        index = 0
        while index < len(lines):
            line = lines[index]
            out.append(line)
            index += 1
            match = MARKER.match(line.strip())
            if match:
                while index < len(lines) and lines[index].startswith("|"):
                    index += 1
                out.extend(tables[match.group(1)]["markdown"])
        path.write_text("\n".join(out) + "\n")
        print(f"filled the marked tables of {relative}")


def _save(path: Path, record: dict) -> None:
    from cimguard.report import write_json

    write_json(path, record)
    print(f"wrote {path}", flush=True)


def run_hardening(seeds: list[int], epochs: int | None, samples: int) -> None:
    sys.path.insert(0, str(HERE))
    from bench_hardening import harden_and_compare

    for seed in seeds:
        path = RESULTS / f"hardening_seed{seed}.json"
        if path.exists():
            print(f"{path} exists, kept (delete it to re-measure)")
            continue
        start = time.time()
        result = harden_and_compare(epochs=epochs, seed=seed, samples=samples,
                                    log=lambda line: print(line, flush=True))
        result["wall_seconds"] = time.time() - start
        _save(path, result)


def run_solvers(samples: int) -> None:
    from cimguard.api import build_setup

    path = RESULTS / "solvers.json"
    if path.exists():
        print(f"{path} exists, kept (delete it to re-measure)")
        return
    setup = build_setup(None, "digits", "gaussian", {})
    sweep = setup.sweep([0.01, 0.03], ["apgd", "flwc", "pgd", "lwc"], samples=samples, seed=0)
    rows = []
    for point in sweep.points:
        mc = point.monte_carlo
        rows.append({"thg": point.thg, "clean": point.clean, "mc_mean": mc.mean, "kpp1": mc.percentiles["1"],
                     "worst": {name: run.accuracy for name, run in point.runs.items()}})
    _save(path, {"settings": {"model": "lenet_digits", "device": "gaussian", "samples": samples, "seed": 0},
                 "rows": rows})


def run_device_box(samples: int) -> None:
    from cimguard.api import build_setup

    path = RESULTS / "device_box.json"
    if path.exists():
        print(f"{path} exists, kept (delete it to re-measure)")
        return
    cases = [("gaussian", {}), ("pcm", {}), ("pcm", {"t": "86400"}), ("rram", {}), ("fefet", {})]
    rows = []
    for device, params in cases:
        setup = build_setup(None, "digits", device, params)
        sweep = setup.sweep(None, ["apgd", "flwc", "pgd"], samples=samples, seed=0)
        point = sweep.points[0]
        mc = point.monte_carlo
        rows.append({"device": device, "params": params, "bound_levels": point.box_levels,
                     "clean": point.clean, "mc_mean": mc.mean, "kpp1": mc.percentiles["1"],
                     "worst": {name: run.accuracy for name, run in point.runs.items()}})
    _save(path, {"settings": {"model": "lenet_digits", "samples": samples, "seed": 0}, "rows": rows})


def run_solver_budget() -> None:
    path = RESULTS / "solver_budget.json"
    if path.exists():
        print(f"{path} exists, kept (delete it to re-measure)")
        return
    sys.path.insert(0, str(HERE))
    import bench_solver_budget

    _save(path, bench_solver_budget.measure([10, 20, 40, 80], [0.01, 0.03], bench_solver_budget.DEFAULT_MNIST))


def run_quantized(seeds: list[int], samples: int) -> None:
    sys.path.insert(0, str(HERE))
    from quantized_lenet import measure

    path = RESULTS / "quantized.json"
    if path.exists():
        print(f"{path} exists, kept (delete it to re-measure)")
        return
    start = time.time()
    result = measure(seeds, QUANTIZED_EPOCHS, samples, log=lambda line: print(line, flush=True))
    result["wall_seconds"] = time.time() - start
    _save(path, result)


#: atrice epochs per seed in the quantized table.
QUANTIZED_EPOCHS = 5


def quantized_table() -> tuple[list[str], list[list[str]], dict]:
    record = json.loads((RESULTS / "quantized.json").read_text())
    header = ["file", "onnxruntime", "clean chip", "MC mean", "worst flwc / pgd (device box)",
              "worst flwc / pgd (thg 0.03)", "hardened worst pgd (thg 0.03)"]
    rows = [[r["format"], f"{r['onnxruntime']:.3f}", f"{r['clean']:.3f}", f"{r['mc_mean']:.3f}",
             f"{r['device_box']['flwc']:.3f} / {r['device_box']['pgd']:.3f}",
             f"{r['thg_0.03']['flwc']:.3f} / {r['thg_0.03']['pgd']:.3f}", _mean_range(r["hardened_pgd_0.03"])]
            for r in record["rows"]]
    return header, rows, record["settings"]


def _mean_range(values: list[float]) -> str:
    mean = statistics.fmean(values)
    low, high = min(values), max(values)
    return f"{mean:.3f} ({low:.3f}–{high:.3f})" if high - low >= 0.0005 else f"{mean:.3f}"


#: The training seeds README and docs report hardening over.
DEFAULT_SEEDS = (0, 1, 2, 3, 4)


def hardening_table(seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS) -> tuple[list[str], list[list[str]], dict]:
    """The table over exactly ``seeds`` (a result file of another seed is not mixed in)."""
    files = [RESULTS / f"hardening_seed{seed}.json" for seed in seeds]
    missing = [path.name for path in files if not path.exists()]
    if missing:
        raise SystemExit(f"no hardening results {', '.join(missing)}: run the hardening stage for those seeds first")
    runs = [json.loads(path.read_text()) for path in files]
    seeds = [run["settings"]["seed"] for run in runs]
    by: dict[tuple[str, float], list[dict]] = {}
    for run in runs:
        for row in run["rows"]:
            by.setdefault((row["model"], row["thg"]), []).append(row)
    header = ["model", "thg", "clean", "MC mean", "MC 1st pct", "worst flwc", "worst pgd"]
    rows = []
    thgs = sorted({thg for _, thg in by})
    for model in HARDENING_MODELS:
        for thg in thgs:
            group = by[(model, thg)]
            rows.append([model, f"{thg:g}",
                         _mean_range([r["clean"] for r in group]),
                         _mean_range([r["monte_carlo_mean"] for r in group]),
                         _mean_range([r["monte_carlo_p1"] for r in group]),
                         _mean_range([r["worst_case"]["flwc"] for r in group]),
                         _mean_range([r["worst_case"]["pgd"] for r in group])])
    settings = dict(runs[0]["settings"])
    settings.pop("seed", None)
    return header, rows, {"seeds": seeds, **settings}


def solver_table() -> tuple[list[str], list[list[str]], dict]:
    record = json.loads((RESULTS / "solvers.json").read_text())
    solvers = list(record["rows"][0]["worst"])
    header = ["thg", "clean", "Monte Carlo mean", "KPP 1%"] + [f"`{name}`" for name in solvers]
    rows = [[f"{r['thg']:g}", f"{r['clean']:.3f}", f"{r['mc_mean']:.3f}", f"{r['kpp1']:.3f}"]
            + [f"{r['worst'][name]:.3f}" for name in solvers] for r in record["rows"]]
    return header, rows, record["settings"]


def device_box_table() -> tuple[list[str], list[list[str]], dict]:
    record = json.loads((RESULTS / "device_box.json").read_text())
    solvers = list(record["rows"][0]["worst"])
    header = ["device", "box per level (levels)", "clean", "MC mean"] + [f"worst {name}" for name in solvers]
    rows = []
    for r in record["rows"]:
        name = r["device"] + "".join(f", {k}={v}" for k, v in r["params"].items())
        rows.append([f"`{name}`", " / ".join(f"{b:.3g}" for b in r["bound_levels"]), f"{r['clean']:.3f}",
                     f"{r['mc_mean']:.3f}"] + [f"{r['worst'][solver]:.3f}" for solver in solvers])
    return header, rows, record["settings"]


def solver_budget_table() -> tuple[list[str], list[list[str]], dict]:
    sys.path.insert(0, str(HERE))
    from bench_solver_budget import short_title

    record = json.loads((RESULTS / "solver_budget.json").read_text())
    problems = record["problems"]
    solvers = list(next(iter(problems.values()))["worst"])
    header = ["problem", "budget (passes)"] + [f"`{name}`" if name != "plain PGD" else name for name in solvers]
    rows = []
    for title, result in problems.items():
        short = short_title(title)
        for budget in record["settings"]["budgets"]:
            cells = []
            for name in solvers:
                cell = f"{result['worst'][name][str(budget)]:.3f}"
                used = result["passes"].get(name, {}).get(str(budget), budget)
                cells.append(cell + (f" ({used})" if used < budget else ""))
            best = min(float(cell.split()[0]) for cell in cells)
            rows.append([short, str(budget)] + [f"**{c}**" if float(c.split()[0]) == best else c for c in cells])
    return header, rows, record["settings"]


def draw_solver_budget_plot() -> None:
    """``docs/solver_budget.png`` from ``solver_budget.json`` (derived: always redrawn)."""
    record_path = RESULTS / "solver_budget.json"
    if not record_path.exists():
        return
    sys.path.insert(0, str(HERE))
    import bench_solver_budget

    target = ROOT / "docs" / "solver_budget.png"
    target.unlink(missing_ok=True)
    bench_solver_budget.plot(json.loads(record_path.read_text()), target)
    print(f"wrote {target}")


def run_node_suite() -> None:
    path = RESULTS / "node_suite.json"
    if path.exists():
        print(f"{path.name} exists: not re-run")
        return
    subprocess.run([sys.executable, str(HERE / "bench_node_suite.py"), "--save"], check=True)


#: The engines of the node-suite table, as the table names them.
NODE_SUITE_ENGINES = (("onnxruntime", "onnxruntime"), ("plain", "plain onnx2torch"), ("cimguard", "cimguard"))


def node_suite_table() -> tuple[list[str], list[list[str]], dict]:
    record = json.loads((RESULTS / "node_suite.json").read_text())
    summary = record["summary"]
    header = ["engine", "form", "cases matching", "of onnxruntime's matching cases", "refused", "silently wrong",
              "fails at run time"]
    rows = []
    for form, label in (("constants", "weights as constants"), ("written", "as written")):
        reference = summary["onnxruntime"][form]["match"]
        for key, name in NODE_SUITE_ENGINES:
            counts = summary[key][form]
            share = f"{counts['of_onnxruntime']:,} ({counts['of_onnxruntime'] / reference:.1%})"
            rows.append([name, label, f"{counts['match']:,} of {counts['cases']:,}",
                         share if key != "onnxruntime" else "—", f"{counts['refused']:,}", f"{counts['wrong']:,}",
                         f"{counts['crash']:,}"])
    return header, rows, record["versions"]


def certify_table() -> tuple[list[str], list[list[str]], dict]:
    """The shipped LeNet's bracket per thg: ``pgd``'s worst case above, the certificates below
    (``benchmarks/bench_certify.py``, stage lenet)."""
    record = json.loads((RESULTS / "certify_lenet.json").read_text())
    header = ["thg", "found worst case (`pgd`)", "certified (`crown`)", "certified (`interval`)"]
    rows = [[f"{r['thg']:g}", f"{r['pgd']:.3f}", f"{r['crown']:.3f}" if "crown" in r else "-", f"{r['interval']:.3f}"]
            for r in record["rows"]]
    return header, rows, record["settings"]


def certify_cost_table() -> tuple[list[str], list[list[str]], dict]:
    """Certifying the 360 images at thg 0.001 against 60 F-LWC passes, one process (stage cost)."""
    record = json.loads((RESULTS / "certify_cost.json").read_text())
    header = ["360 images at thg 0.001", "certified", "seconds", "× 60 F-LWC passes"]
    rows = [["60 F-LWC passes (one run)", "-", f"{record['flwc_60_passes_seconds']:.2f}", "1"]]
    rows += [[f"`{method}`", f"{record[f'{method}_accuracy']:.3f}", f"{record[f'{method}_seconds']:.2f}",
              f"{record[f'{method}_ratio']:.2f}"] for method in ("interval", "crown", "joint")]
    return header, rows, record["settings"]


def certify_joint_table() -> tuple[list[str], list[list[str]], dict]:
    """The shipped LeNet per thg: pgd's single chip, the joint certificate (one chip against all samples), the
    ceiling of any per-sample certificate and crown's per-sample one (stage joint)."""
    record = json.loads((RESULTS / "certify_joint.json").read_text())
    header = ["thg", "found worst case (`pgd`)", "certified (`joint`)", "per-sample ceiling (attack)",
              "certified (`crown`)", "open samples: one chip flips at most", "`joint` seconds"]
    rows = [[f"{r['thg']:g}", f"{r['pgd']:.3f}", f"{r['joint']:.3f}", f"{r['per_sample_ceiling']:.3f}",
             f"{r['crown']:.3f}", f"{r['joint_flips']} of {r['joint_open_samples']}", f"{r['joint_seconds']:.2f}"]
            for r in record["rows"]]
    return header, rows, record["settings"]


def certify_resnet_table() -> tuple[list[str], list[list[str]], dict]:
    """torchvision's ResNet-18 at 3×32×32 certified with intervals on the CPU (stage resnet)."""
    record = json.loads((RESULTS / "certify_resnet.json").read_text())
    header = ["thg", "certified (`interval`)", "seconds"]
    rows = [[f"{r['thg']:g}", f"{r['interval']:.3f}", f"{r['seconds']:.2f}"] for r in record["rows"]]
    return header, rows, record["settings"]


def certify_hardening_table(seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS) -> tuple[list[str], list[list[str]], dict]:
    """Certified hardening next to A-TRICE over ``seeds`` (``benchmarks/bench_certify.py``, stage hardening)."""
    files = [RESULTS / f"certify_hardening_seed{seed}.json" for seed in seeds]
    runs = [json.loads(path.read_text()) for path in files]
    header = ["model", "clean", "thg", "worst `pgd`", "certified `interval`", "certified `crown`",
              "certified `joint`"]
    rows = []
    for model in ("original", "atrice", "certified"):
        group = [row for run in runs for row in run["rows"] if row["model"] == model]
        for thg in ("0.005", "0.01"):
            rows.append([model, _mean_range([r["clean"] for r in group]), thg]
                        + [_mean_range([r[f"{key}_{thg}"] for r in group]) for key in ("pgd", "interval", "crown", "joint")])
    settings = dict(runs[0]["settings"])
    settings.pop("seed", None)
    return header, rows, {"seeds": [run["settings"]["seed"] for run in runs], **settings}


def markdown(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def write_tables(seeds: list[int]) -> None:
    from cimguard.report import write_json

    tables = {}
    for name, build in (("hardening", lambda: hardening_table(seeds)), ("solvers", solver_table),
                        ("device_box", device_box_table), ("solver_budget", solver_budget_table),
                        ("node_suite", node_suite_table), ("quantized", quantized_table),
                        ("certify", certify_table), ("certify_cost", certify_cost_table),
                        ("certify_joint", certify_joint_table),
                        ("certify_resnet", certify_resnet_table),
                        ("certify_hardening", lambda: certify_hardening_table(seeds))):
        try:
            header, rows, settings = build()
        except FileNotFoundError as exc:
            print(f"skipping table {name}: {exc}")
            continue
        tables[name] = {"settings": settings, "header": header, "rows": rows, "markdown": markdown(header, rows)}
    for path in (TABLES_JSON, TABLES_MD):
        path.unlink(missing_ok=True)  # derived files: always rebuilt from the raw results
    write_json(TABLES_JSON, tables)
    text = []
    for name, table in tables.items():
        text += [f"## {name}", "", f"settings: {json.dumps(table['settings'])}", "", *table["markdown"], ""]
    TABLES_MD.write_text("\n".join(text))
    print(f"wrote {TABLES_JSON} and {TABLES_MD}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="hardening,solvers,device_box,solver_budget,node_suite,quantized,tables,docs",
                        help="comma-separated: hardening, solvers, device_box, solver_budget, node_suite, quantized (measure), tables "
                             "(aggregate, and draw docs/solver_budget.png), "
                             "docs (write the tables into README.md and docs/)")
    parser.add_argument("--seeds", default=",".join(map(str, DEFAULT_SEEDS)), help="training seeds of the hardening table")
    parser.add_argument("--epochs", type=int, default=None, help="hardening epochs (default: atrice's)")
    parser.add_argument("--samples", type=int, default=100, help="Monte Carlo chips per model and thg")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the model is tiny: 1 is fastest)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    RESULTS.mkdir(exist_ok=True)
    stages = args.stages.split(",")
    if "solvers" in stages:
        run_solvers(args.samples)
    if "device_box" in stages:
        run_device_box(args.samples)
    if "solver_budget" in stages:
        run_solver_budget()
    if "node_suite" in stages:
        run_node_suite()
    seeds = [int(s) for s in args.seeds.split(",")]
    if "hardening" in stages:
        run_hardening(seeds, args.epochs, args.samples)
    if "quantized" in stages:
        run_quantized(seeds, args.samples)
    if "tables" in stages:
        write_tables(seeds)
        draw_solver_budget_plot()
    if "docs" in stages:
        fill_docs()


if __name__ == "__main__":
    main()
