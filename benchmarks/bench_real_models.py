"""A real vendor model's cost, printed (no pass/fail): ``python benchmarks/bench_real_models.py``.

torchvision ResNet-18 (random weights, 10 classes) at 224×224, exported by today's default
``torch.onnx.export`` with batch 1 baked in (cimguard makes the batch symbolic), evaluated
label-free on random images.  Printed, each against a baseline measured in the same run:

1. seconds per F-LWC pass (margin gradient + accuracy over the data) and its ratio to one
   plain forward+backward pass of the imported module over the same data;
2. seconds per Monte Carlo chip (draw every device, ``W_q + ΔW``, forward over the data) and
   its ratio to one plain forward pass, without the second-core prefetch so the draw is visible;
3. the sampler's share of a chip: seconds to draw one chip's ΔW / seconds per chip.

Options: ``--samples`` (images, default 32), ``--size`` (default 224), ``--chips``,
``--repeats``, ``--threads``, ``--torch-device``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(function, device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` calls (after one warm-up call)."""
    function()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        function()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def write_resnet18(folder: Path, size: int, samples: int) -> tuple[Path, Path]:
    """torchvision ResNet-18 (seeded random weights, 10 classes) exported by today's default
    ``torch.onnx.export`` at ``size``×``size`` (batch 1 baked in), and ``samples`` random images, in ``folder``."""
    import torchvision

    model_path, data_path = folder / "resnet18.onnx", folder / "images.npz"
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.randn(1, 3, size, size),), str(model_path))
    rng = np.random.default_rng(0)
    np.savez(data_path, x=rng.standard_normal((samples, 3, size, size)).astype(np.float32))
    return model_path, data_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--torch-device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from cimguard.api import build_setup
    from cimguard.sim.evaluate import monte_carlo
    from cimguard.sim.gradients import margin_gradient_with_accuracy

    with tempfile.TemporaryDirectory() as folder:
        model_path, data_path = write_resnet18(Path(folder), args.size, args.samples)
        setup = build_setup(model_path, str(data_path), "gaussian", {"thg": 0.03}, label_free=True,
                            torch_device=args.torch_device)
    crossbar, data, device = setup.crossbar, setup.data, setup.crossbar.torch_device
    module = setup.imported.module
    params = [p for p in module.parameters() if p.is_floating_point()]

    def forward() -> None:
        with torch.no_grad():
            for x, _ in data.batches():
                module(x)

    def forward_backward() -> None:
        for p in params:
            p.requires_grad_(True)
        for x, y in data.batches():
            loss = torch.nn.functional.cross_entropy(module(x), y)
            torch.autograd.grad(loss, params)
        for p in params:
            p.requires_grad_(False)

    zeros = crossbar.zeros()
    plain_forward = _timed(forward, device, args.repeats)
    plain_forward_backward = _timed(forward_backward, device, args.repeats)
    flwc_pass = _timed(lambda: margin_gradient_with_accuracy(crossbar, data, zeros), device, args.repeats)
    chip = _timed(lambda: monte_carlo(crossbar, data, args.chips, 0, progress=False, prefetch=False), device,
                  1) / args.chips
    draw = _timed(lambda: crossbar.sample_flat(crossbar.generator(7)), device, args.repeats)

    print(f"ResNet-18 (torchvision, random weights), {args.size}x{args.size}, {args.samples} images, "
          f"batch-1 export -> batch {setup.imported.batch_mode}; {crossbar.num_weights} weights on "
          f"{crossbar.slices} devices each; {device}, {torch.get_num_threads()} threads")
    print("| measure | seconds | ratio | baseline |")
    print("|---|---|---|---|")
    print(f"| F-LWC pass | {flwc_pass:.3f} | {flwc_pass / plain_forward_backward:.2f} | "
          f"plain forward+backward {plain_forward_backward:.3f} s |")
    print(f"| Monte Carlo chip | {chip:.3f} | {chip / plain_forward:.2f} | plain forward {plain_forward:.3f} s |")
    print(f"| sampler (one chip's ΔW) | {draw:.3f} | {draw / chip:.2f} | share of a chip |")


if __name__ == "__main__":
    main()
