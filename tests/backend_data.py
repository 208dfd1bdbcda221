"""The ONNX wheel's backend test models (``onnx/backend/test/data``): paths, inputs, reference outputs.

Shared by the conformance tests and ``benchmarks/bench_conversion_coverage.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import onnx
from onnx import numpy_helper

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"

Case = tuple[list[np.ndarray], list[np.ndarray]]
"""One test data set: inputs and reference outputs."""


def read_tensor(path: Path) -> np.ndarray:
    tensor = onnx.TensorProto()
    tensor.ParseFromString(path.read_bytes())
    return numpy_helper.to_array(tensor)


def light_inputs(model: onnx.ModelProto) -> list[np.ndarray]:
    """The deterministic ramp inputs the ``light`` models' stored outputs were made with."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = []
    for value in model.graph.input:
        if value.name in initializers:
            continue
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
        count = int(np.prod(shape))
        inputs.append((np.arange(count).reshape(shape) / count).astype(np.float32))
    return inputs


def backend_cases(folder: str) -> Iterator[tuple[str, Path, list[Case]]]:
    """``(name, model path, cases)`` for every model of ``folder`` (``light`` or ``pytorch-converted``)."""
    root = DATA / folder
    if folder == "light":
        for path in sorted(root.glob("light_*.onnx")):
            inputs = light_inputs(onnx.load(str(path), load_external_data=False))
            yield path.stem, path, [(inputs, [read_tensor(root / f"{path.stem}_output_0.pb")])]
        return
    for case in sorted(root.iterdir()):
        sets = []
        for data_set in sorted(case.glob("test_data_set_*")):
            sets.append(([read_tensor(p) for p in sorted(data_set.glob("input_*.pb"))],
                         [read_tensor(p) for p in sorted(data_set.glob("output_*.pb"))]))
        yield case.name, case / "model.onnx", sets
