"""The cost of checking every conversion against onnxruntime, printed (no pass/fail):
``python benchmarks/bench_conversion_check.py``.

Every setup (every command, ``cimguard.setup``) runs the torch module and onnxruntime on the probe
samples and compares them before any number is computed (``--no-verify`` skips it).  Measured here,
each against a baseline measured in the same run:

1. the shipped LeNet on digits (360 samples): seconds of the check, and its ratio to
   ``Setup.evaluate`` with ``--chips`` Monte Carlo chips (default 100, as ``cimguard evaluate``);
2. torchvision ResNet-18 (random weights, 10 classes, 224×224, today's default exporter, batch 1
   made symbolic; the file ``bench_real_models.py`` makes) on ``--resnet-samples`` random images,
   label-free: the same ratio with ``--resnet-chips`` chips (default 100, as ``cimguard evaluate``;
   minutes on a 2-core CPU; fewer chips make the ratio larger).

The check's seconds are the median of ``--repeats`` runs of ``verify_against_onnxruntime`` on the
probe samples (onnxruntime session included); evaluate is timed once after a warm-up chip.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch


def _median_seconds(function, repeats: int) -> float:
    function()  # warm-up (imports, first onnxruntime session)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _measure(label: str, setup, chips: int, repeats: int) -> None:
    from cimguard.checks import PROBE_SAMPLES
    from cimguard.onnx.verify import verify_against_onnxruntime

    probe = setup.data.x[:PROBE_SAMPLES].cpu()
    check = _median_seconds(lambda: verify_against_onnxruntime(setup.imported, probe), repeats)
    setup.evaluate(samples=1, seed=0)  # warm-up
    start = time.perf_counter()
    setup.evaluate(samples=chips, seed=0)
    evaluate = time.perf_counter() - start
    print(f"{label}: check {check:.3f} s on {len(probe)} samples; evaluate ({chips} chips, {len(setup.data.labels)} "
          f"samples) {evaluate:.2f} s; check / evaluate = {check / evaluate:.4f} ({100 * check / evaluate:.2f} %)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=100)
    parser.add_argument("--resnet-chips", type=int, default=100)
    parser.add_argument("--resnet-samples", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-resnet", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cimguard.api import build_setup

    print(f"torch threads {torch.get_num_threads()}")
    _measure("shipped LeNet (digits)", build_setup(None, "digits", "gaussian", torch_device="cpu"),
             args.chips, args.repeats)
    if args.skip_resnet:
        return
    from bench_real_models import write_resnet18  # this folder: the same ResNet-18 file and images

    with tempfile.TemporaryDirectory() as folder:
        model_path, data_path = write_resnet18(Path(folder), 224, args.resnet_samples)
        setup = build_setup(model_path, str(data_path), "gaussian", label_free=True, torch_device="cpu")
        _measure("ResNet-18 (224x224, label-free)", setup, args.resnet_chips, max(1, args.repeats // 2))


if __name__ == "__main__":
    main()
