"""The check of every run: the torch conversion against onnxruntime, and where a mismatch starts.

:func:`verify_against_onnxruntime` runs the converted module and onnxruntime on the same samples
(like with like: float32 on the CPU) before cimguard computes any number.  When they disagree, the
number alone does not tell the user (or a converter's author) what to fix, so
:func:`first_differing_node` finds the first node whose output differs: onnxruntime runs a copy of
the converted graph with every node output made a graph output, and the onnx2torch ``GraphModule``
is run by a ``torch.fx`` interpreter that records each node's result.  onnx2torch names each
``call_module`` after the ONNX node it converts (``OnnxGraph``'s unique names), so the two line up
node by node; the first node in graph order whose output differs is where the conversion goes wrong
(its inputs still agree).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import torch
from onnx2torch.onnx_graph import OnnxGraph
from torch import fx

from cimguard.errors import CimguardError
from cimguard.onnx.batch import fixed_batch, output_mismatch
from cimguard.onnx.model import ImportedModel
from cimguard.onnx.runtime import (
    OnnxRuntimeCannotRun,
    comparison_tolerance,
    float32_like_onnxruntime,
    onnx_feed,
    onnxruntime_mismatch,
    run_onnxruntime_all,
    torch_feed,
)

#: Relative error (of the output scale) below which a conversion counts as exact.
EXACT_TOLERANCE = 1e-4

#: An intermediate value must differ by at least this much (of its scale) to be blamed first: float32
#: rounding in long reductions stays far below it, a wrong operator is far above it.
BLAME_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ConversionCheck:
    """Torch vs onnxruntime on one input (random for ``inspect``, the probe samples for every command)."""

    exact: bool
    relative_error: float
    """Largest |difference| over all outputs, relative to each output's scale."""
    input_shapes: dict[str, tuple[int, ...]]
    """The shapes used."""
    tolerance: float = EXACT_TOLERANCE

    def to_dict(self) -> dict[str, Any]:
        """The report's ``conversion_check``: checked, on how many samples, and how close."""
        samples = next(iter(self.input_shapes.values()), (0,))
        return {"verified": True, "samples": int(samples[0]) if samples else 1,
                "relative_error": self.relative_error, "tolerance": self.tolerance}


#: The report's ``conversion_check`` of a run that skipped the check (``--no-verify``, ``verify=False``).
NOT_VERIFIED: dict[str, Any] = {"verified": False, "samples": None, "relative_error": None, "tolerance": None}


def verify_against_onnxruntime(imported: ImportedModel, x: torch.Tensor,
                               tolerance: float = EXACT_TOLERANCE) -> ConversionCheck:
    """Compare the torch model with onnxruntime on ``x`` (float32 on the CPU on both sides).

    A mismatch is a one-line :class:`CimguardError` naming the first node whose output differs
    (:func:`first_differing_node`); otherwise the check's record.
    """
    feeds = {imported.input.name: onnx_feed(imported.input, x)}
    where = f"{imported.path}: " if imported.path is not None else ""
    try:
        error = onnxruntime_mismatch(imported.onnx_model, imported.module, feeds, paths=imported.result_paths)
    except OnnxRuntimeCannotRun as exc:
        # No reference, no check: refused like a mismatch (never a silent number); the user may accept the risk.
        raise CimguardError(f"{where}{exc}, so the conversion cannot be checked; nothing was computed; "
                            "--no-verify (verify=False) runs it unchecked") from None
    tolerance = comparison_tolerance(imported.onnx_model, tolerance)
    if not error <= tolerance:
        found = first_differing_node(imported.legalised, imported.module, feeds, tolerance)
        blame = found.describe() if found is not None else \
            "no single converted node differs (the rewrite before conversion, or the outputs' order, is at fault)"
        raise CimguardError(
            f"{where}the converted model disagrees with onnxruntime on the first {len(x)} samples: max |difference| "
            f"is {error:.3g} of the output scale (tolerance {tolerance:g}); {blame}. Nothing was computed; "
            "--no-verify (verify=False) runs it anyway"
        )
    return ConversionCheck(True, error, {name: tuple(value.shape) for name, value in feeds.items()}, tolerance)


@dataclass(frozen=True)
class NodeMismatch:
    """The first node of a converted graph whose output differs from onnxruntime's."""

    node: str
    """The ONNX node's name (its operator when the node has none)."""
    op_type: str
    output: str
    """The ONNX value that differs."""
    error: float
    """Largest |difference| relative to the value's scale (``inf``: shapes differ)."""

    def describe(self) -> str:
        how = "a different shape" if self.error == float("inf") else f"{self.error:.3g} of its scale"
        return f"node {self.node!r} ({self.op_type}) is the first whose output ({self.output!r}) differs, by {how}"


def first_differing_node(model: onnx.ModelProto, module: fx.GraphModule, feeds: dict[str, np.ndarray],
                         tolerance: float) -> NodeMismatch | None:
    """The first node of ``model`` (the graph ``module`` was converted from) whose output differs.

    ``None`` when every compared node agrees (or onnxruntime cannot expose the values).  A file
    with a fixed batch is compared on its own batch size.
    """
    size = fixed_batch(model)
    if size is not None:
        feeds = {name: value[:size] for name, value in feeds.items()}
        if any(len(value) < size for value in feeds.values()):
            return None
    # Fed as the converted graph declares its inputs (legalisation may compute a half-precision file in float32).
    declared = {value.name: value.type.tensor_type.elem_type for value in model.graph.input}
    feeds = {name: _as_declared(value, declared.get(name)) for name, value in feeds.items()}
    graph = OnnxGraph(model.graph)
    exposed = _with_every_output(model, graph)
    names = [value.name for value in exposed.graph.output]
    try:
        reference = dict(zip(names, run_onnxruntime_all(exposed, feeds)))
    except Exception:  # noqa: BLE001 - onnxruntime's own error types; the mismatch is reported without a node
        return None
    args = [torch_feed(value) for value in feeds.values()]
    recorder = _Recorder(module)
    try:
        with float32_like_onnxruntime(module), torch.no_grad():
            recorder.run(*args)
    except Exception:  # noqa: BLE001 - a graph that fails part-way still names the nodes it ran
        pass
    for threshold in sorted({max(tolerance, BLAME_TOLERANCE), tolerance}, reverse=True):
        found = _first_above(graph, recorder.results, reference, threshold)
        if found is not None:
            return found
    return None


def _first_above(graph: OnnxGraph, results: dict[str, Any], reference: dict[str, np.ndarray],
                 threshold: float) -> NodeMismatch | None:
    for unique_name, node in graph.nodes.items():
        if unique_name not in results:
            continue
        produced = results[unique_name]
        values = [produced] if isinstance(produced, torch.Tensor) else list(produced) \
            if isinstance(produced, (tuple, list)) else []
        for index, value_name in enumerate(node.output_values):
            if not value_name or value_name not in reference or index >= len(values):
                continue
            ours = values[index]
            if not isinstance(ours, torch.Tensor):
                continue
            expected = reference[value_name]
            if expected.dtype.kind not in "fiub":
                continue
            error = output_mismatch(expected, ours.detach().cpu().numpy())
            if error > threshold:
                return NodeMismatch(node.proto.name or unique_name, node.operation_type, value_name, error)
    return None


def _as_declared(value: np.ndarray, elem_type: int | None) -> np.ndarray:
    if not elem_type or value.dtype.kind != "f":
        return value
    dtype = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    return value.astype(dtype) if dtype.kind == "f" else value


def _with_every_output(model: onnx.ModelProto, graph: OnnxGraph) -> onnx.ModelProto:
    """A copy of ``model`` whose graph outputs include every node output (onnxruntime infers their types)."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    present = {value.name for value in exposed.graph.output}
    for node in graph.nodes.values():
        for value_name in node.output_values:
            if value_name and value_name not in present:
                exposed.graph.output.append(onnx.ValueInfoProto(name=value_name))
                present.add(value_name)
    return exposed


class _Recorder(fx.Interpreter):
    """Runs the converted graph and keeps each converted node's result, by its module name."""

    def __init__(self, module: fx.GraphModule) -> None:
        super().__init__(module, garbage_collect_values=False)
        self.results: dict[str, Any] = {}

    def call_module(self, target, args, kwargs):
        result = super().call_module(target, args, kwargs)
        self.results[str(target)] = result
        return result

