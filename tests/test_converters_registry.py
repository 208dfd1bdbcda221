"""How cimguard's converters enter onnx2torch's registry (``cimguard.onnx.converters.registry``)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

from tests.converter_check import one_node_model


def test_onnx2torch_keeps_its_own_converters():
    """Nothing is replaced in onnx2torch's registry: its wrong converters are bypassed by routing."""
    from onnx2torch.node_converters.registry import _CONVERTER_REGISTRY, OperationDescription

    import cimguard.onnx.converters  # noqa: F401

    own = _CONVERTER_REGISTRY[OperationDescription("", "LayerNormalization", 17)]
    assert own.__module__.startswith("onnx2torch.")
    routed = _CONVERTER_REGISTRY[OperationDescription("cimguard", "LayerNormalization", 1)]
    assert routed.__module__ == "cimguard.onnx.converters.registry"


def test_legalisation_routes_only_the_nodes_that_need_it():
    from cimguard.onnx.legalise import legalise_model

    plain = one_node_model(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2]),
                           {"x": np.zeros((1, 1, 4, 4), np.float32)}, {}, opset=12)
    wide = one_node_model(helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[3, 3], pads=[2, 2, 2, 2]),
                          {"x": np.zeros((1, 1, 4, 4), np.float32)}, {}, opset=12)
    assert legalise_model(plain).model.graph.node[0].domain == ""
    state = legalise_model(wide)
    assert state.model.graph.node[0].domain == "cimguard"
    assert "converted by cimguard's own converters (not onnx2torch's): 1 MaxPool" in state.notes


@pytest.mark.parametrize("node,what", [
    (helper.make_node("Cast", ["x"], ["y"], to=TensorProto.STRING), "Cast to element type STRING is not supported"),
    (helper.make_node("Resize", ["x", "", "s"], ["y"], mode="area"), "Resize mode 'area'"),
    (helper.make_node("LpNormalization", ["x"], ["y"], p=3), "LpNormalization p=3"),
])
def test_unsupported_attributes_are_refused_in_one_line_naming_the_operator(node, what):
    from cimguard.errors import CimguardError
    from cimguard.onnx.model import convert_model

    model = one_node_model(node, {"x": np.zeros((1, 1, 2, 2), np.float32)},
                           {"s": np.ones(4, np.float32)} if "s" in node.input else {}, opset=19)
    with pytest.raises(CimguardError) as error:
        convert_model(model)
    message = str(error.value)
    assert "\n" not in message and what in message and node.op_type in message
