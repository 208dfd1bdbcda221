"""What a quantized file costs against its float original, printed (no pass/fail):
``python benchmarks/bench_quantized.py``.

torchvision ResNet-18 (random weights, 10 classes), exported to ONNX, and the same file quantized by
onnxruntime's ``quantize_static`` (QDQ, int8 per-channel weights, int8 activations, calibrated on a few
random images).  Both are evaluated label-free on the same random images, in the same run:

1. seconds per Monte Carlo chip (draw every device, ``W_q + ΔW``, forward over the data);
2. seconds per F-LWC iteration (margin gradient + accuracy over the data, the solvers' step).

The four measurements take turns (median of ``--repeats`` rounds), so a busy machine slows both files alike.

The ratio quantized / float is the price of simulating the file's activation quantizers exactly
(``QuantizeLinear``/``DequantizeLinear`` after every layer); the target is at most 1.3.

Options: ``--samples`` (images, default 16), ``--size`` (default 224), ``--chips``, ``--repeats``,
``--threads``, ``--torch-device``.
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


def make_resnet18(folder: Path, size: int, calibration: np.ndarray) -> tuple[Path, Path]:
    """The float ResNet-18 file and its QDQ int8 per-channel copy (onnxruntime's tools, no download)."""
    import torchvision
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    float_path, pre_path, quantized_path = folder / "resnet18.onnx", folder / "pre.onnx", folder / "resnet18_qdq.onnx"
    torch.manual_seed(0)
    network = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(network, (torch.randn(1, 3, size, size),), str(float_path), dynamo=False, opset_version=17,
                          input_names=["image"], output_names=["logits"], dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}})
    quant_pre_process(str(float_path), str(pre_path))

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(pre_path), str(quantized_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    return float_path, quantized_path


def prepare(model_path: Path, data_path: Path, args):
    """The setup of one file and its two measurements as callables."""
    from cimguard.api import build_setup
    from cimguard.sim.evaluate import monte_carlo
    from cimguard.sim.gradients import margin_gradient_with_accuracy

    setup = build_setup(model_path, str(data_path), "gaussian", {"thg": 0.03}, label_free=True,
                        torch_device=args.torch_device)
    crossbar, data = setup.crossbar, setup.data
    zeros = crossbar.zeros()
    return setup, {
        "chip": lambda: monte_carlo(crossbar, data, args.chips, 0, progress=False, prefetch=False),
        "iteration": lambda: margin_gradient_with_accuracy(crossbar, data, zeros),
    }


def interleaved(functions: dict[str, object], device: torch.device, repeats: int) -> dict[str, float]:
    """Median seconds of each function, the functions taking turns (so a busy machine slows them alike)."""
    for function in functions.values():
        function()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in functions}
    for _ in range(repeats):
        for name, function in functions.items():
            _sync(device)
            start = time.perf_counter()
            function()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--chips", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--torch-device", default="cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    images = rng.standard_normal((args.samples, 3, args.size, args.size)).astype(np.float32)
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        data_path = folder / "images.npz"
        np.savez(data_path, x=images)
        float_path, quantized_path = make_resnet18(folder, args.size, images[:4])
        float_setup, float_runs = prepare(float_path, data_path, args)
        quant_setup, quant_runs = prepare(quantized_path, data_path, args)
        device = float_setup.crossbar.torch_device
        times = interleaved({f"{kind} {name}": run for kind, runs in (("float", float_runs), ("quantized", quant_runs))
                             for name, run in runs.items()}, device, args.repeats)
    float_chip, quant_chip = times["float chip"] / args.chips, times["quantized chip"] / args.chips
    float_iteration, quant_iteration = times["float iteration"], times["quantized iteration"]
    crossbar = quant_setup.crossbar
    print(f"ResNet-18 (torchvision, random weights), {args.size}x{args.size}, {args.samples} images; float: "
          f"{float_setup.crossbar.num_weights} weights, {float_setup.crossbar.config.weight_bits}-bit mapping; "
          f"quantized ({quant_setup.imported.quantization.format}, "
          f"{len(quant_setup.imported.quantization.activations)} activation quantizers): {crossbar.num_weights} "
          f"weights, the file's {crossbar.config.weight_bits}-bit codes; {crossbar.torch_device}, "
          f"{torch.get_num_threads()} threads")
    print("| measure | float s | quantized s | ratio quantized / float |")
    print("|---|---|---|---|")
    print(f"| Monte Carlo chip | {float_chip:.3f} | {quant_chip:.3f} | {quant_chip / float_chip:.2f} |")
    print(f"| F-LWC iteration | {float_iteration:.3f} | {quant_iteration:.3f} | "
          f"{quant_iteration / float_iteration:.2f} |")


if __name__ == "__main__":
    main()
