"""Certified worst case: tightness and cost of the certifier, and certified hardening next to A-TRICE.

    python benchmarks/bench_certify.py [--stages lenet,cost,joint,resnet,hardening] [--seeds 0,1,2,3,4] [--threads 1]

Stages, each saving its raw numbers to ``benchmarks/results/`` (a stage whose file exists is not re-run;
delete the file to re-measure):

* ``certify_lenet.json``: the shipped LeNet, the digits evaluation split (360 images), gaussian device,
  the per-weight box the solvers search: the worst case ``pgd`` finds, the ``interval`` certificate at
  every thg and the ``crown`` certificate at ``--crown-thg``;
* ``certify_cost.json``: the cost of certifying the 360 images at thg 0.001 against one F-LWC run of 60
  passes (60 margin gradients over the evaluation set), on the same machine, in the same process (the
  ratio is printed);
* ``certify_joint.json``: at ``--joint-thg``, crown (per sample), the ceiling of any per-sample certificate
  (a per-sample attack: each sample against its own worst chip), the ``joint`` certificate (the worst single
  chip) and ``pgd``'s single chip;
* ``certify_resnet.json``: torchvision's ResNet-18 (random weights, 10 classes) at 3×32×32, exported to
  ONNX here (no download), certified with intervals on the CPU;
* ``certify_hardening_seed{S}.json``: the shipped LeNet fine-tuned by ``atrice`` (write-verify at thg 0.01)
  and by ``certified`` (box thg 0.012, κ 0.3), 20 epochs each, training seed S; clean accuracy, the
  ``pgd`` worst case and the ``interval`` certificate at thg 0.005 and 0.01.

``benchmarks/make_doc_tables.py`` turns these files into the tables of docs/certify.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
LENET_THGS = (0.0005, 0.001, 0.002, 0.005, 0.01)
HARDENING_THGS = (0.005, 0.01)


def _save(path: Path, record: dict) -> None:
    from cimguard.report import write_json

    write_json(path, record)
    print(f"wrote {path}", flush=True)


def _done(path: Path) -> bool:
    """A stage whose results file exists is not re-run (delete the file to re-measure)."""
    if path.exists():
        print(f"{path.name} exists: skipped")
    return path.exists()


def run_lenet(crown_thgs: list[float]) -> None:
    path = RESULTS / "certify_lenet.json"
    if _done(path):
        return
    from cimguard.api import setup

    chip = setup(torch_device="cpu")
    rows = []
    for thg in LENET_THGS:
        found = chip.worst_case("pgd", thg).accuracy
        interval = chip.certify(thg, "interval")
        row = {"thg": thg, "pgd": found, "interval": interval.accuracy, "interval_seconds": interval.seconds}
        if thg in crown_thgs:
            crown = chip.certify(thg, "crown")
            row |= {"crown": crown.accuracy, "crown_seconds": crown.seconds}
        print(row, flush=True)
        rows.append(row)
    _save(path, {"settings": {"model": "lenet_digits", "device": "gaussian", "samples": len(chip.data.labels),
                              "threads": torch.get_num_threads()}, "rows": rows})


def run_cost() -> None:
    """Certifying the 360 images at thg 0.001 against 60 F-LWC passes (one margin gradient over the whole
    evaluation set each, what one F-LWC iteration costs), one process, same threads."""
    path = RESULTS / "certify_cost.json"
    if _done(path):
        return
    from cimguard.api import setup
    from cimguard.sim.gradients import margin_gradient_with_accuracy

    chip = setup(torch_device="cpu")
    zero = chip.crossbar.zeros()
    start = time.perf_counter()
    for _ in range(60):
        margin_gradient_with_accuracy(chip.crossbar, chip.data, zero)
    timing = {"flwc_60_passes_seconds": time.perf_counter() - start}
    for method in ("interval", "crown", "joint"):
        result = chip.certify(0.001, method)
        timing[f"{method}_seconds"] = result.seconds
        timing[f"{method}_accuracy"] = result.accuracy
        timing[f"{method}_ratio"] = result.seconds / timing["flwc_60_passes_seconds"]
        print(f"certify {method}, 360 images at thg 0.001: {result.seconds:.2f} s = {timing[f'{method}_ratio']:.2f} x "
              f"60 F-LWC passes ({timing['flwc_60_passes_seconds']:.2f} s)", flush=True)
    _save(path, {"settings": {"model": "lenet_digits", "device": "gaussian", "thg": 0.001,
                              "samples": len(chip.data.labels), "threads": torch.get_num_threads()}, **timing})


def per_sample_ceiling(chip, thg: float, restarts: int = 3, steps: int = 100) -> float:
    """The fraction of samples no per-sample attack flips: each sample gets its *own* chip (sign-gradient
    descent on its margin inside the box, from the nominal chip and from seeded random chips).  Every sample
    it flips has a chip that misclassifies it, so no per-sample certificate can exceed this number."""
    import copy

    from torch.func import functional_call, vmap

    from cimguard.sim.worst_case import make_problem

    crossbar, data = chip.crossbar, chip.data
    bounds = make_problem(crossbar, data, thg).bounds
    module = copy.deepcopy(crossbar.imported.module).double()
    weights = {name: layer.nominal.double() for name, layer in crossbar.layers.items()}
    radii = {name: bounds[name].double() for name in weights}
    x, y = data.x.double(), data.labels
    count = len(y)

    def margins(delta: dict) -> torch.Tensor:
        def one(w: dict, sample: torch.Tensor) -> torch.Tensor:
            return functional_call(module, w, (sample.unsqueeze(0),), strict=False)[0]

        logits = vmap(one, in_dims=({name: 0 for name in weights}, 0))({k: weights[k] + delta[k] for k in weights}, x)
        true = logits.gather(1, y[:, None])[:, 0]
        return true - logits.masked_fill(torch.nn.functional.one_hot(y, logits.shape[1]).bool(), -torch.inf).amax(1)

    worst = margins({k: torch.zeros(count, *w.shape, dtype=torch.float64) for k, w in weights.items()}).detach()
    for restart in range(restarts):
        generator = torch.Generator().manual_seed(restart)
        delta = {k: torch.zeros(count, *w.shape, dtype=torch.float64) if restart == 0 else
                 (torch.rand(count, *w.shape, generator=generator, dtype=torch.float64) * 2 - 1) * radii[k]
                 for k, w in weights.items()}
        step = 0.5
        for iteration in range(steps):
            for value in delta.values():
                value.requires_grad_(True)
            margin = margins(delta)
            worst = torch.minimum(worst, margin.detach())
            grads = torch.autograd.grad(margin.sum(), list(delta.values()))
            with torch.no_grad():
                delta = {k: (v - step * radii[k] * g.sign()).clamp(-radii[k], radii[k])
                         for (k, v), g in zip(delta.items(), grads)}
            if iteration in (steps * 2 // 5, steps * 7 // 10):
                step /= 2
        worst = torch.minimum(worst, margins(delta).detach())
    return float((worst > 0).double().mean())


def run_joint(thgs: list[float]) -> None:
    """Per sample against one chip: crown (per sample), the per-sample attack's ceiling on any per-sample
    certificate, the joint certificate (the worst single chip, :mod:`cimguard.sim.joint`) and pgd's single
    chip, at each thg."""
    path = RESULTS / "certify_joint.json"
    if _done(path):
        return
    from cimguard.api import setup
    from cimguard.sim.joint import NODE_LIMIT

    chip = setup(torch_device="cpu")
    rows = []
    for thg in thgs:
        crown = chip.certify(thg, "crown")
        joint = chip.certify(thg, "joint")
        row = {"thg": thg, "crown": crown.accuracy, "crown_seconds": crown.seconds,
               "per_sample_ceiling": per_sample_ceiling(chip, thg), "joint": joint.accuracy,
               "joint_seconds": joint.seconds, **{f"joint_{k}": v for k, v in joint.to_dict()["joint"].items()},
               "pgd": chip.worst_case("pgd", thg).accuracy}
        print(row, flush=True)
        rows.append(row)
    _save(path, {"settings": {"model": "lenet_digits", "device": "gaussian", "samples": len(chip.data.labels),
                              "node_limit": NODE_LIMIT, "threads": torch.get_num_threads()}, "rows": rows})


def run_resnet() -> None:
    path = RESULTS / "certify_resnet.json"
    if _done(path):
        return
    import numpy as np
    import torchvision

    from cimguard.api import build_setup

    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with tempfile.TemporaryDirectory() as folder:
        model, data = Path(folder) / "resnet18.onnx", Path(folder) / "data.npz"
        x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (x,), str(model), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
        rng = np.random.default_rng(0)
        np.savez(data, x=rng.standard_normal((8, 3, 32, 32)).astype(np.float32), y=rng.integers(0, 10, 8))
        chip = build_setup(str(model), str(data), "gaussian", torch_device="cpu", label_free=True)
        rows = []
        for thg in (1e-7, 1e-6, 1e-5):
            result = chip.certify(thg, "interval")
            rows.append({"thg": thg, "interval": result.accuracy, "seconds": result.seconds})
            print(f"ResNet-18 3x32x32, {len(chip.data.labels)} samples, interval at thg {thg:g}: "
                  f"{result.accuracy:.3f} in {result.seconds:.2f} s", flush=True)
    _save(path, {"settings": {"model": "torchvision resnet18, random weights, 10 classes", "input": [3, 32, 32],
                              "samples": 8, "label_free": True}, "rows": rows})


def run_hardening(seeds: list[int]) -> None:
    from cimguard.api import build_setup
    from cimguard_plugins.trainers.atrice import ATriceConfig, ATriceTrainer
    from cimguard_plugins.trainers.certified import CertifiedConfig, CertifiedTrainer

    for seed in seeds:
        path = RESULTS / f"certify_hardening_seed{seed}.json"
        if _done(path):
            continue
        chip = build_setup(None, "digits", "gaussian", {"thg": 0.01}, torch_device="cpu")
        trainers = {"atrice": ATriceTrainer(ATriceConfig(epochs=20, seed=seed)),
                    "certified": CertifiedTrainer(CertifiedConfig(epochs=20, seed=seed, thg=0.012))}
        rows = []
        for name, setup_ in [("original", chip)] + [(name, None) for name in trainers]:
            start = time.perf_counter()
            if setup_ is None:
                setup_ = chip.harden(trainers[name]).after
            seconds = time.perf_counter() - start
            row = {"model": name, "clean": setup_.clean_accuracy(), "train_seconds": seconds}
            for thg in HARDENING_THGS:
                row[f"pgd_{thg:g}"] = setup_.worst_case("pgd", thg, seed).accuracy
                for method in ("interval", "crown", "joint"):
                    row[f"{method}_{thg:g}"] = setup_.certify(thg, method).accuracy
            print(seed, row, flush=True)
            rows.append(row)
        _save(path, {"settings": {"seed": seed, "epochs": 20, "device": "gaussian",
                                  "certificates": ["interval", "crown", "joint"],
                                  "atrice": "write-verify at thg 0.01", "certified": "box thg 0.012, kappa 0.3"},
                     "rows": rows})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stages", default="lenet,cost,joint,resnet,hardening")
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--crown-thg", default="0.0005,0.001,0.002", help="thresholds the crown certificate runs at")
    parser.add_argument("--joint-thg", default="0.0005,0.001,0.002", help="thresholds the joint certificate runs at")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sys.path.insert(0, str(HERE))
    stages = args.stages.split(",")
    if "lenet" in stages:
        run_lenet([float(v) for v in args.crown_thg.split(",")])
    if "cost" in stages:
        run_cost()
    if "joint" in stages:
        run_joint([float(v) for v in args.joint_thg.split(",")])
    if "resnet" in stages:
        run_resnet()
    if "hardening" in stages:
        run_hardening([int(v) for v in args.seeds.split(",")])


if __name__ == "__main__":
    main()
