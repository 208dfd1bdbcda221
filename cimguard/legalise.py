"""Rewrite an ONNX graph into the form onnx2torch converts.

Each pass takes a ``ModelProto`` and returns a (possibly new) one; the original the
user loaded is never modified, because export writes weights back into it.
"""

from __future__ import annotations

from typing import Callable

import onnx
from onnx import numpy_helper

Pass = Callable[[onnx.ModelProto], onnx.ModelProto]


def constants_to_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """Turn ``Constant`` nodes holding a tensor into initializers.

    onnx2torch maps only initializers to torch parameters; a weight produced by a
    ``Constant`` node would otherwise stay an opaque computation.
    """
    graph = model.graph
    kept = []
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and len(node.attribute) == 1:
            attr = node.attribute[0]
            if attr.name == "value":
                tensor = onnx.TensorProto()
                tensor.CopyFrom(attr.t)
                tensor.name = node.output[0]
                graph.initializer.append(tensor)
                continue
            scalar = _scalar_constant(attr)
            if scalar is not None:
                tensor = numpy_helper.from_array(scalar, name=node.output[0])
                graph.initializer.append(tensor)
                continue
        kept.append(node)
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _scalar_constant(attr: onnx.AttributeProto):
    import numpy as np

    if attr.name == "value_float":
        return np.array(attr.f, dtype=np.float32)
    if attr.name == "value_floats":
        return np.array(list(attr.floats), dtype=np.float32)
    if attr.name == "value_int":
        return np.array(attr.i, dtype=np.int64)
    if attr.name == "value_ints":
        return np.array(list(attr.ints), dtype=np.int64)
    return None


def drop_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove initializers from the graph inputs (IR < 4 lists weights as inputs)."""
    initializer_names = {init.name for init in model.graph.initializer}
    kept = [value for value in model.graph.input if value.name not in initializer_names]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Run ONNX shape inference; converters need the ranks it provides."""
    try:
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; conversion reports real problems
        return model


#: The passes, in order.  Later issues extend this list.
PASSES: tuple[Pass, ...] = (
    constants_to_initializers,
    drop_initializer_inputs,
    infer_shapes,
)


def legalise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Return a legalised copy of ``model``."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    for step in PASSES:
        result = step(result)
    return result
