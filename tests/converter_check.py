"""One-node ONNX models checked against onnxruntime, for the converter family tests."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper

from tests.node_suite import mismatch


def one_node_model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], constants: dict[str, np.ndarray],
                   outputs: int | list[str] = 1, opset: int = 23) -> onnx.ModelProto:
    """``node`` with ``inputs`` fed at run time and ``constants`` as initializers; outputs untyped."""
    names = list(node.output) if isinstance(outputs, int) else outputs
    graph = helper.make_graph(
        [node], "one",
        [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(x.dtype), x.shape)
         for name, x in inputs.items()],
        [onnx.ValueInfoProto(name=name) for name in names if name],
        [numpy_helper.from_array(x, name) for name, x in constants.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def onnxruntime_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def converted_outputs(model: onnx.ModelProto, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    from cimguard.onnx.model import convert_model

    module = convert_model(model)
    with torch.no_grad():
        out = module(*[torch.from_numpy(x) for x in inputs.values()])
    return [o.numpy() for o in ([out] if isinstance(out, torch.Tensor) else out)]


def assert_matches_onnxruntime(node: onnx.NodeProto, inputs: dict[str, np.ndarray],
                               constants: dict[str, np.ndarray] | None = None, opset: int = 23) -> list[np.ndarray]:
    """Convert the one-node model and compare every output with onnxruntime's; returns ours."""
    model = one_node_model(node, inputs, constants or {}, opset=opset)
    ours = converted_outputs(model, inputs)
    problem = mismatch(onnxruntime_outputs(model, inputs), ours)
    assert problem is None, problem
    return ours


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)
