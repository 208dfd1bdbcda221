"""The ONNX node conformance suite (``onnx.backend.test.case.node``) as small runnable cases.

Shared by ``tests/test_node_suite.py`` and ``benchmarks/bench_node_suite.py``, so both count
the same cases.  Each numeric case of the suite (every input and output a plain tensor of a
number or bool type) gives one :class:`NodeCase` per form:

* ``written``: the model as the suite wrote it, every input fed at run time;
* ``constants``: every input after the first turned into an initializer holding that data
  set's value (as real networks hold their weights, axes and bounds).  A case with several
  data sets gives one model per data set.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import onnx
from onnx import numpy_helper

#: Tolerances of the issue: rtol 1e-3, atol 1e-5, NaN equal to NaN.
RTOL = 1e-3
ATOL = 1e-5
FORMS = ("written", "constants")


@dataclass
class NodeCase:
    """One runnable case: a model, its run-time inputs and the reference outputs."""

    name: str
    form: str
    model: onnx.ModelProto
    inputs: list[np.ndarray]
    outputs: list[np.ndarray]

    @property
    def key(self) -> str:
        return f"{self.form}:{self.name}"

    @property
    def operators(self) -> list[str]:
        return sorted({node.op_type for node in self.model.graph.node})


def _numeric(value) -> bool:
    return isinstance(value, np.ndarray) and value.dtype != object and value.dtype.kind in "biuf"


@lru_cache(maxsize=1)
def _raw_cases() -> tuple:
    from onnx.backend.test.case import node

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return tuple(node.collect_testcases())


def _with_constants(model: onnx.ModelProto, inputs: list[np.ndarray]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    keep = list(graph.input)[:1]
    for value, array in zip(list(graph.input)[1:], inputs[1:]):
        graph.initializer.append(numpy_helper.from_array(array, name=value.name))
    del graph.input[:]
    graph.input.extend(keep)
    return copy


def node_cases(form: str) -> list[NodeCase]:
    """Every numeric case of the suite in ``form`` (``written`` or ``constants``), in suite order."""
    cases = []
    for raw in _raw_cases():
        if raw.model is None or not raw.data_sets:
            continue
        if not all(_numeric(x) for inputs, outputs in raw.data_sets for x in (*inputs, *outputs)):
            continue
        if any(len(inputs) != len(raw.model.graph.input) for inputs, _ in raw.data_sets):
            continue  # omitted optional inputs fed positionally: not a plain tensor case
        if form == "written":
            for index, (inputs, outputs) in enumerate(raw.data_sets):
                suffix = f"#{index}" if len(raw.data_sets) > 1 else ""
                cases.append(NodeCase(raw.name + suffix, form, raw.model, list(inputs), list(outputs)))
            continue
        for index, (inputs, outputs) in enumerate(raw.data_sets):
            suffix = f"#{index}" if len(raw.data_sets) > 1 else ""
            model = _with_constants(raw.model, list(inputs)) if len(inputs) > 1 else raw.model
            cases.append(NodeCase(raw.name + suffix, form, model, list(inputs[:1]), list(outputs)))
    return cases


def mismatch(references: list[np.ndarray], results: list[np.ndarray]) -> str | None:
    """Why ``results`` differ from ``references`` (``None``: they match).

    A float16 reference was computed in float16 by the suite, cimguard computes in float32:
    the two may differ by one float16 rounding step (2^-10) of the output's scale, which is
    added to the absolute tolerance for float16 outputs only.
    """
    if len(references) != len(results):
        return f"{len(results)} outputs, expected {len(references)}"
    for index, (ref, ours) in enumerate(zip(references, results)):
        ours = np.asarray(ours)
        if ref.shape != ours.shape:
            return f"output {index}: shape {ours.shape}, expected {ref.shape}"
        if ref.dtype == bool or ours.dtype == bool:
            if not np.array_equal(ref.astype(bool), ours.astype(bool)):
                return f"output {index}: boolean values differ"
            continue
        a = ref.astype(np.float64)
        b = ours.astype(np.float64)
        atol = ATOL
        if ref.dtype == np.float16 and a.size:
            atol += 2.0**-10 * float(np.nanmax(np.abs(np.where(np.isinf(a), 0, a)), initial=0.0))
        if not np.allclose(b, a, rtol=RTOL, atol=atol, equal_nan=True):
            with np.errstate(invalid="ignore"):
                worst = np.nanmax(np.abs(a - b)) if a.size else 0.0
            return f"output {index}: values differ (max abs {worst:.3g})"
    return None


def run_torch(module, inputs: list[np.ndarray], float32: bool = False) -> list[np.ndarray]:
    """Run a converted module on numpy inputs; every output as a numpy array.

    ``float32``: float inputs in float32, as cimguard computes (its conversion turns float16
    and float64 weights into float32).
    """
    import torch

    if float32:
        inputs = [x.astype(np.float32) if x.dtype.kind == "f" else x for x in inputs]
    with torch.no_grad():
        out = module(*[torch.from_numpy(np.array(x)) for x in inputs])
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.detach().cpu().numpy() if isinstance(o, torch.Tensor) else np.asarray(o) for o in outs]


def run_onnxruntime(case: NodeCase) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 4
    session = ort.InferenceSession(case.model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [value.name for value in session.get_inputs()]
    return session.run(None, dict(zip(names, case.inputs)))
