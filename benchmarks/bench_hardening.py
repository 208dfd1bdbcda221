"""Hardening experiment: vanilla, noise, TRICE and A-TRICE fine-tunes of the shipped model, side by side.

    python benchmarks/bench_hardening.py [--epochs N] [--seed S] [--samples 100] [--json results.json]

Every trainer starts from the embedded LeNet (digits), with the same seed, epochs,
learning rate and batch size (the ``atrice`` defaults unless given):

* ``vanilla``: quantisation-aware fine-tuning without variation (the ``vanilla`` trainer);
* ``noise``: a gaussian-device chip per mini-batch, programmed *without* write-verify
  (σ 0.1 levels, untruncated; after write-verify at 0.03 the noise is too small to matter);
* ``trice``: RCG noise with its automatic (σ, threshold) search, KPP scored on chips of that
  same pre-write-verify device;
* ``atrice``: A-TRICE on the gaussian device with write-verify at thg 0.03.

Each result is exported to ONNX (the vendor graph, new weights, checked in onnxruntime) and the
files are compared exactly as ``cimguard compare`` does: clean accuracy, Monte Carlo mean and
1st percentile over ``--samples`` chips, and the verified worst case under ``flwc`` and ``pgd``
for thg in {0.01, 0.02, 0.03}.  Takes several minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def harden_and_compare(*, epochs: int | None = None, lr: float | None = None, seed: int = 0, samples: int = 100,
                       thgs: tuple[float, ...] = (0.01, 0.02, 0.03), torch_device: str = "auto",
                       log=print) -> dict:
    """Train every trainer from the shipped model with ``seed``, export, compare; the rows as plain data.

    ``seed`` seeds the training (initial batches, noise, adversarial steps) and the evaluation
    (Monte Carlo chips, pgd restarts) alike, exactly as ``harden --seed`` and ``compare --seed`` do.
    """
    from cimguard.api import build_setup, default_model
    from cimguard.compare import compare_models
    from cimguard.onnx.export import export_onnx
    from cimguard.sim.data import fit_to_model
    from cimguard.sim.train import TrainerConfig
    from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer
    from cimguard_plugins.trainers.noise import NoiseTrainer
    from cimguard_plugins.trainers.trice import TriceConfig, TriceTrainer
    from cimguard_plugins.trainers.vanilla import VanillaTrainer

    defaults = ATriceConfig()
    common = {
        "epochs": epochs or defaults.epochs,
        "lr": lr or defaults.lr,
        "batch_size": defaults.batch_size,
        "seed": seed,
    }
    with_write_verify = build_setup(None, "digits", "gaussian", {"thg": 0.03}, torch_device=torch_device)
    before_write_verify = build_setup(None, "digits", "gaussian", {"thg": float("inf"), "sigma": 0.1},
                                      torch_device=torch_device)
    x, y = with_write_verify.dataset.require_training()
    x = fit_to_model(x, with_write_verify.imported.input)
    runs = {
        "vanilla": (VanillaTrainer(TrainerConfig(**common)), with_write_verify),
        "noise": (NoiseTrainer(TrainerConfig(**common)), before_write_verify),
        "trice": (TriceTrainer(TriceConfig(**common)), before_write_verify),
        "atrice": (ATriceTrainer(ATriceConfig(**common)), with_write_verify),
    }
    log(f"training {', '.join(runs)}: {common}")
    with tempfile.TemporaryDirectory() as folder:
        paths: dict[str, Path | None] = {"original": default_model()}
        seconds: dict[str, float] = {}
        chosen: dict[str, dict] = {}
        for name, (trainer, setup) in runs.items():
            start = time.perf_counter()
            result = trainer.fit(setup.crossbar, x, y)
            seconds[name] = time.perf_counter() - start
            chosen[name] = {k: v for k, v in result.chosen.items() if k != "search"}
            paths[name] = export_onnx(setup.imported, result.weights, Path(folder) / f"{name}.onnx",
                                      check_inputs=setup.data.x[:256])
            extra = f" chose {chosen[name]}" if chosen[name] else ""
            log(f"  {name:8s} {seconds[name]:6.1f} s{extra}")
        start = time.perf_counter()
        rows = compare_models(list(paths.values()), list(thgs), ("flwc", "pgd"), device="gaussian", samples=samples,
                              seed=seed, torch_device=torch_device, labels=list(paths))
        seconds["compare"] = time.perf_counter() - start
        log(f"evaluated in {seconds['compare']:.1f} s "
            f"(gaussian device, write-verify at each thg, {samples} Monte Carlo chips, seed {seed})")
    return {"settings": common | {"samples": samples, "thg": list(thgs)}, "seconds": seconds, "chosen": chosen,
            "rows": [dict(row.__dict__) for row in rows]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="epochs for every trainer (default: atrice's)")
    parser.add_argument("--lr", type=float, default=None, help="learning rate for every trainer (default: atrice's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--samples", type=int, default=100, help="Monte Carlo chips per model and thg")
    parser.add_argument("--thg", default="0.01,0.02,0.03")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the model is tiny: 1 is fastest)")
    parser.add_argument("--torch-device", default="auto")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this new JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from cimguard.compare import ModelComparison, format_comparison
    from cimguard.report import check_new_output, write_json

    if args.json:
        check_new_output(args.json)
    thgs = tuple(float(v) for v in args.thg.split(","))
    result = harden_and_compare(epochs=args.epochs, lr=args.lr, seed=args.seed, samples=args.samples, thgs=thgs,
                                torch_device=args.torch_device, log=lambda line: print(line, flush=True))
    rows = [ModelComparison(**row) for row in result["rows"]]
    print("")
    for line in format_comparison(rows):
        print(line)
    print("\nmarkdown:\n")
    print("| model | thg | clean | MC mean | MC 1st pct | worst flwc | worst pgd |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row.model} | {row.thg:g} | {row.clean:.3f} | {row.monte_carlo_mean:.3f} | {row.monte_carlo_p1:.3f} "
              f"| {row.worst_case['flwc']:.3f} | {row.worst_case['pgd']:.3f} |")
    by = {(row.model, row.thg): row for row in rows}
    top = max(thgs)
    gain = by[("atrice", top)].worst_case["pgd"] - by[("vanilla", top)].worst_case["pgd"]
    lost = by[("vanilla", top)].clean - by[("atrice", top)].clean
    print(f"\natrice vs vanilla at thg {top:g}: worst case (pgd) {gain:+.3f}, clean accuracy {-lost:+.3f}")
    if args.json:
        write_json(args.json, result)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
