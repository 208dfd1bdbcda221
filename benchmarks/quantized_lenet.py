"""The shipped LeNet quantized by onnxruntime's own tools, measured by cimguard (docs/quantized.md's table):
``python benchmarks/quantized_lenet.py [--seeds 0,1,2,3,4] [--epochs 5] [--samples 100] [--json out.json]``.

For the float file and each quantized form (static QDQ per-channel, static QOperator per-tensor, dynamic):
onnxruntime's accuracy on the digits evaluation split, cimguard's clean chip, Monte Carlo mean (gaussian
device), the worst case ``flwc`` and ``pgd`` find in the device's own box and at thg 0.03, and the worst
case (``pgd``, thg 0.03) after hardening (``atrice``) for every training seed.
``benchmarks/make_doc_tables.py`` (stage ``quantized``) saves it and builds the table.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

#: The rows of the table: a label and how the file is made.
FORMATS = ("float", "QDQ per-channel", "QOperator", "dynamic")
CALIBRATION_SAMPLES = 64


def make_files(folder: Path) -> dict[str, Path]:
    """The shipped LeNet and its quantized copies (64 calibration samples of the digits training split)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from cimguard.api import default_model
    from cimguard.factories import load_dataset

    source = default_model()
    calibration = load_dataset("digits").x_train[:CALIBRATION_SAMPLES].numpy().astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 32]} for i in range(0, len(calibration), 32)])

        def get_next(self):
            return next(self.batches, None)

    pre = folder / "pre.onnx"
    quant_pre_process(str(source), str(pre))
    paths = {"float": Path(source), "QDQ per-channel": folder / "qdq.onnx", "QOperator": folder / "qoperator.onnx",
             "dynamic": folder / "dynamic.onnx"}
    quantize_static(str(pre), str(paths["QDQ per-channel"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_static(str(pre), str(paths["QOperator"]), Reader(), quant_format=QuantFormat.QOperator)
    quantize_dynamic(str(pre), str(paths["dynamic"]))
    return paths


def onnxruntime_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((logits.argmax(1) == y).mean())


def measure(seeds: list[int], epochs: int, samples: int, log=print) -> dict:
    """Raw numbers for every format (see the module's docstring)."""
    from cimguard.api import setup

    rows = []
    with tempfile.TemporaryDirectory() as name:
        paths = make_files(Path(name))
        for label in FORMATS:
            chip = setup(paths[label], torch_device="cpu")
            x, y = chip.data.x.numpy().astype(np.float32), chip.data.labels.numpy()
            sweep = chip.sweep([None, 0.03], ["flwc", "pgd"], samples=samples, seed=0)
            device_box, at_003 = sweep.points
            hardened = []
            for seed in seeds:
                result = chip.harden("atrice", epochs=epochs, seed=seed)
                hardened.append(result.after.worst_case("pgd", thg=0.03).accuracy)
                log(f"{label}: seed {seed} hardened worst pgd {hardened[-1]:.4f}")
            rows.append({"format": label, "quantization": chip.imported.quantization.format
                         if chip.imported.quantization else None, "weight_bits": chip.crossbar.config.weight_bits,
                         "onnxruntime": onnxruntime_accuracy(paths[label], x, y), "clean": device_box.clean,
                         "mc_mean": device_box.monte_carlo.mean,
                         "device_box": {name: run.accuracy for name, run in device_box.runs.items()},
                         "thg_0.03": {name: run.accuracy for name, run in at_003.runs.items()},
                         "hardened_pgd_0.03": hardened})
            log(json.dumps(rows[-1]))
    return {"settings": {"model": "lenet_digits", "device": "gaussian", "samples": samples, "seed": 0,
                         "calibration_samples": CALIBRATION_SAMPLES, "trainer": "atrice", "epochs": epochs,
                         "seeds": seeds}, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    record = measure([int(s) for s in args.seeds.split(",")], args.epochs, args.samples)
    if args.json:
        from cimguard.report import write_json

        write_json(args.json, record)


if __name__ == "__main__":
    main()
