"""Monte Carlo at the cost floor: time of N chips / time of N plain forward passes, and the sampler's share.

The floor for N simulated chips is N forward passes over the evaluation data.  This
prints, for the shipped LeNet on digits and for a ResNet-style CNN with more than 1M
mapped weights (built here in torch, exported to ONNX, loaded by cimguard):

* ``ratio``  = time(monte_carlo with N chips) / time(N clean forward passes), target <= 1.3,
  for the default path (on a CPU with 2+ cores the next chip is drawn on a second thread
  while the forward pass runs) and for the serial path (``prefetch=False``);
* ``share``  = time(N samples of every device, write-verify included) / time(monte_carlo).

``--threads`` sets torch's intra-op threads for the forward passes of both sides.
Each figure is the fastest of ``--repeats`` runs, interleaved, so load from other
processes hits both sides alike; wall-clock and CPU time (this process, all threads)
are both printed: the wall ratio is what a user waits, the CPU ratio what the
sampler costs in total.  Usage::

    python benchmarks/bench_monte_carlo.py [--chips 100] [--repeats 3] [--resnet-repeats 1] [--images 256] [--threads 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from cimguard.api import build_setup
from cimguard.factories import create_device
from cimguard.onnx.model import load_model
from cimguard.sim.crossbar import Crossbar, CrossbarConfig
from cimguard.sim.evaluate import EvalData, accuracy, make_eval_data, monte_carlo, usable_cores


class BasicBlock(nn.Module):
    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(y)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-sized ResNet: stem + one basic block per stage, 32-64-128-256 channels (about 1.2M weights)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU())
        self.stages = nn.Sequential(
            BasicBlock(32, 32, 1), BasicBlock(32, 64, 2), BasicBlock(64, 128, 2), BasicBlock(128, 256, 2)
        )
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


def resnet_crossbar(folder: Path, images: int, device_name: str, params: dict) -> tuple[Crossbar, EvalData]:
    torch.manual_seed(0)
    model = SmallResNet().eval()
    path = folder / "resnet.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
                      input_names=["input"], output_names=["logits"], dynamic_axes={"input": {0: "batch"}})
    imported = load_model(path)
    crossbar = Crossbar(imported, create_device(device_name, params), CrossbarConfig(weight_bits=8))
    x = torch.randn(images, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    return crossbar, make_eval_data(crossbar, x, None)  # label-free: agreement with the clean chip


def shipped_crossbar(device_name: str, params: dict) -> tuple[Crossbar, EvalData]:
    setup = build_setup(None, "digits", device_name, params, torch_device="cpu")
    return setup.crossbar, setup.data


def best_of(repeats: int, runs: dict[str, Callable[[], None]]) -> dict[str, tuple[float, float]]:
    """Fastest ``(wall, CPU)`` seconds of each run over ``repeats`` rounds, runs interleaved within a round.

    CPU time (this process, all threads) is the steadier figure on a machine shared with other jobs.
    """
    best = {name: (float("inf"), float("inf")) for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            wall, cpu = time.perf_counter(), time.process_time()
            run()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            best[name] = (min(best[name][0], wall), min(best[name][1], cpu))
    return best


@torch.no_grad()
def measure(label: str, crossbar: Crossbar, data: EvalData, chips: int, repeats: int) -> None:
    generator = crossbar.generator(0)
    monte_carlo(crossbar, data, 2, progress=False)  # warm-up: prepares the flat layout, loads kernels

    def plain() -> None:
        for _ in range(chips):
            accuracy(crossbar, data)

    def mc() -> None:
        monte_carlo(crossbar, data, chips, seed=0, progress=False)

    def mc_serial() -> None:
        monte_carlo(crossbar, data, chips, seed=0, progress=False, prefetch=False)

    def sampler() -> None:
        for _ in range(chips):
            crossbar.sample_flat(generator)

    t = best_of(repeats, {"plain": plain, "mc": mc, "mc_serial": mc_serial, "sampler": sampler})
    devices = crossbar.num_weights * crossbar.slices
    print(f"{label}: {crossbar.num_weights:,d} weights on {devices:,d} devices, {len(data.labels)} samples", flush=True)
    for kind, index in (("wall", 0), ("cpu", 1)):
        plain_time = t["plain"][index]
        print(
            f"  {kind:<4} forward {plain_time:6.2f} s | MC {t['mc'][index]:6.2f} s ratio {t['mc'][index] / plain_time:5.2f}"
            f" | serial MC {t['mc_serial'][index]:6.2f} s ratio {t['mc_serial'][index] / plain_time:5.2f}"
            f" | sampler share of serial MC {t['sampler'][index] / t['mc_serial'][index]:6.1%}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--chips", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3, help="rounds for the LeNet (fast) figures")
    parser.add_argument("--resnet-repeats", type=int, default=1, help="rounds for the ResNet (slow) figures")
    parser.add_argument("--images", type=int, default=256, help="ResNet evaluation images (random, 3x32x32)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {usable_cores()} cores, {args.chips} chips, "
          f"best of {args.repeats} (LeNet) / {args.resnet_repeats} (ResNet) rounds")
    day = {"t": 86400.0}
    measure("LeNet/digits, gaussian", *shipped_crossbar("gaussian", {}), args.chips, args.repeats)
    measure("LeNet/digits, pcm t=1 day", *shipped_crossbar("pcm", day), args.chips, args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        measure("ResNet/random 32x32, gaussian", *resnet_crossbar(Path(folder), args.images, "gaussian", {}),
                args.chips, args.resnet_repeats)
        measure("ResNet/random 32x32, pcm t=1 day", *resnet_crossbar(Path(folder), args.images, "pcm", day),
                args.chips, args.resnet_repeats)


if __name__ == "__main__":
    main()
