"""Conformance: every model in the ONNX wheel's backend test data converts and matches.

``onnx/backend/test/data/pytorch-converted`` (82 small networks, most at IR 3 / opset 6)
is compared with the stored reference outputs of each ``test_data_set_*``;
``onnx/backend/test/data/light`` (9 model-zoo architectures at IR 3 / opset 9, weights made
by ``ConstantOfShape``) with the stored ``light_*_output_0.pb`` for the input ONNX's own
backend runner uses (``arange(n) / n``).  Errors are relative to the output scale.

Models cimguard cannot convert are listed, with the reason, in :data:`KNOWN_UNSUPPORTED`
(the one place); a listed model must still fail, so the list cannot rot, and the list
may not grow.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cimguard.errors import CimguardError
from cimguard.onnx.batch import output_mismatch
from cimguard.onnx.model import import_model
from tests.backend_data import DATA, light_inputs, read_tensor

PYTORCH_CONVERTED = DATA / "pytorch-converted"
LIGHT = DATA / "light"

#: The pytorch-converted models cimguard does not convert, with the reason (the only list).
KNOWN_UNSUPPORTED: dict[str, str] = {}
#: The issue allows at most two exceptions out of 82; the list may shrink, never grow.
MAX_UNSUPPORTED = 2

#: Relative to the output scale.
TOLERANCE = 1e-4

#: Light models that materialise the largest weights (VGG-19 ~550 MB).
HEAVY_LIGHT = {"light_vgg19", "light_zfnet512", "light_bvlc_alexnet"}


def _pytorch_converted() -> list[str]:
    return sorted(d.name for d in PYTORCH_CONVERTED.iterdir() if (d / "model.onnx").is_file())


def _light() -> list:
    params = []
    for path in sorted(LIGHT.glob("light_*.onnx")):
        marks = [pytest.mark.slow] if path.stem in HEAVY_LIGHT else []
        params.append(pytest.param(path.stem, marks=marks, id=path.stem))
    return params


def _outputs(module: torch.nn.Module, inputs: list[np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        result = module(*[torch.from_numpy(np.array(x)) for x in inputs])
    if isinstance(result, torch.Tensor):
        result = [result]
    return [r.numpy() for r in result]


def _worst_error(path: Path, cases: list[tuple[list[np.ndarray], list[np.ndarray]]]) -> float:
    """Convert ``path`` and return the largest relative error over all cases (raises if it does not convert)."""
    imported = import_model(onnx.load(str(path)), path=path, require_mapped=False)
    worst = 0.0
    for inputs, references in cases:
        ours = _outputs(imported.module, inputs)
        assert len(ours) == len(references)
        worst = max([worst] + [output_mismatch(ref, out) for ref, out in zip(references, ours)])
    has_layer = any(n.op_type in ("Conv", "Gemm", "MatMul") for n in imported.legalised.graph.node)
    has_weight = any(
        n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in {i.name for i in imported.legalised.graph.initializer}
        for n in imported.legalised.graph.node
    )
    if has_layer and has_weight:
        assert imported.mapped, "a Conv/Gemm/MatMul with a constant weight must map to a crossbar"
    return worst


def _pytorch_converted_cases(name: str) -> list[tuple[list[np.ndarray], list[np.ndarray]]]:
    cases = []
    for data_set in sorted((PYTORCH_CONVERTED / name).glob("test_data_set_*")):
        inputs = [read_tensor(p) for p in sorted(data_set.glob("input_*.pb"))]
        outputs = [read_tensor(p) for p in sorted(data_set.glob("output_*.pb"))]
        cases.append((inputs, outputs))
    assert cases
    return cases


@pytest.mark.parametrize("name", _pytorch_converted())
def test_pytorch_converted(name):
    path = PYTORCH_CONVERTED / name / "model.onnx"
    cases = _pytorch_converted_cases(name)
    if name in KNOWN_UNSUPPORTED:
        # A listed model must still fail; when it starts to pass, remove it from the list.
        try:
            error = _worst_error(path, cases)
        except CimguardError:
            return
        assert not error <= TOLERANCE, f"{name} now converts and matches; remove it from KNOWN_UNSUPPORTED"
        return
    assert _worst_error(path, cases) <= TOLERANCE


@pytest.mark.parametrize("name", _light())
def test_light_model_zoo(name):
    path = LIGHT / f"{name}.onnx"
    inputs = light_inputs(onnx.load(str(path)))
    reference = read_tensor(LIGHT / f"{name}_output_0.pb")
    try:
        assert _worst_error(path, [(inputs, [reference])]) <= TOLERANCE
    finally:
        gc.collect()


def test_light_models_all_present():
    assert len(list(LIGHT.glob("light_*.onnx"))) == 9


def test_known_unsupported_list_does_not_grow():
    names = set(_pytorch_converted())
    assert len(names) == 82
    assert len(KNOWN_UNSUPPORTED) <= MAX_UNSUPPORTED
    assert set(KNOWN_UNSUPPORTED) <= names, "every listed model must exist"
    assert all(reason.strip() for reason in KNOWN_UNSUPPORTED.values()), "every exception needs its reason"


def test_light_weights_come_from_constant_of_shape():
    """The light models store no weights: legalisation folds ConstantOfShape and records where."""
    path = LIGHT / "light_squeezenet.onnx"
    imported = import_model(onnx.load(str(path)), path=path)
    assert len(imported.mapped) == 26
    origins = {m.initializer: imported.origins[m.initializer] for m in imported.mapped}
    assert {o.kind for o in origins.values()} == {"constant_of_shape"}
    assert any("Dropout" in note for note in imported.notes)
    assert any("ConstantOfShape" in note for note in imported.notes)
    # the user's model is untouched
    assert sum(n.op_type == "ConstantOfShape" for n in imported.onnx_model.graph.node) == 39


# --- untrusted files -------------------------------------------------------------------


def _external_model(folder: Path, location: str, *, data: bytes | None = None, length: int | None = None) -> Path:
    """A MatMul model whose 4x3 weight lives in an external data file at ``location``."""
    from onnx import TensorProto, helper

    weight = np.arange(12, dtype=np.float32).reshape(4, 3)
    tensor = numpy_helper.from_array(weight, "W")
    payload = tensor.raw_data if data is None else data
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entries = {"location": location, "offset": "0", "length": str(len(payload) if length is None else length)}
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "ext",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [tensor],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path, weight, payload


def test_external_data_inside_the_folder_loads(tmp_path):
    from cimguard.onnx.model import load_model

    path, weight, payload = _external_model(tmp_path / "m", "weights.bin")
    (tmp_path / "m" / "weights.bin").write_bytes(payload)
    imported = load_model(path)
    np.testing.assert_array_equal(imported.weights()[imported.mapped[0].torch_name].numpy(), weight)


@pytest.mark.parametrize("location", ["../secret.bin", "/etc/passwd", "sub/../../secret.bin", "link.bin"])
def test_external_data_outside_the_folder_is_refused(tmp_path, location):
    from cimguard.onnx.model import load_model

    path, _, payload = _external_model(tmp_path / "m", location)
    (tmp_path / "secret.bin").write_bytes(payload)
    (tmp_path / "m" / "link.bin").symlink_to(tmp_path / "secret.bin")
    with pytest.raises(CimguardError, match="outside the model's folder; refusing"):
        load_model(path)


def test_external_data_missing_or_short_is_refused(tmp_path):
    from cimguard.onnx.model import load_model

    path, _, payload = _external_model(tmp_path / "a", "weights.bin")
    with pytest.raises(CimguardError, match="external data file 'weights.bin' for tensor 'W' not found"):
        load_model(path)
    path, _, payload = _external_model(tmp_path / "b", "weights.bin", length=4 * 12 * 1000)
    (tmp_path / "b" / "weights.bin").write_bytes(payload)
    with pytest.raises(CimguardError, match="does not fit 'weights.bin'"):
        load_model(path)


def test_oversize_stored_tensor_is_refused(tmp_path):
    from onnx import TensorProto, helper

    from cimguard.onnx.legalise import MAX_TENSOR_ELEMENTS
    from cimguard.onnx.model import read_onnx

    huge = TensorProto(name="W", data_type=TensorProto.FLOAT, dims=[MAX_TENSOR_ELEMENTS + 1], raw_data=b"\0" * 8)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["W"], ["y"])], "big", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [huge],
    )
    path = tmp_path / "big.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(CimguardError, match=r"tensor 'W' has \d+ elements, more than the limit"):
        read_onnx(path)


def test_constant_of_shape_bomb_is_refused_before_allocating(tmp_path):
    """A 3-number file that asks for a 4e12-element weight fails fast instead of eating memory."""
    from onnx import TensorProto, helper

    from cimguard.onnx.model import load_model

    shape = numpy_helper.from_array(np.array([2_000_000, 2_000_000], dtype=np.int64), "shape")
    graph = helper.make_graph(
        [
            helper.make_node("ConstantOfShape", ["shape"], ["W"], name="bomb",
                             value=numpy_helper.from_array(np.array([1.0], dtype=np.float32))),
            helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
        ],
        "bomb", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2_000_000])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2_000_000])], [shape],
    )
    path = tmp_path / "bomb.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    with pytest.raises(CimguardError, match="node 'bomb' \\(ConstantOfShape\\) would create a tensor of 4000000000000 elements"):
        load_model(path)


def test_truncated_protobuf_is_one_clear_error(tmp_path):
    from cimguard.onnx.model import read_onnx

    data = (LIGHT / "light_squeezenet.onnx").read_bytes()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CimguardError, match="cut.onnx (is not a valid ONNX file|fails the ONNX checker|is not an ONNX model)"):
        read_onnx(path)


# --- single operators that need legalisation or cimguard's converters -----------------


def _single(op: str, opset: int, attrs: dict, in_shape: tuple, out_count: int = 1, extra=()) -> onnx.ModelProto:
    from onnx import TensorProto, helper

    inputs = ["x"] + [t.name if t is not None else "" for t in extra]
    outputs = [f"y{i}" for i in range(out_count)]
    node = helper.make_node(op, inputs, outputs, name="op", **attrs)
    graph = helper.make_graph(
        [node], "single", [helper.make_tensor_value_info("x", TensorProto.FLOAT, in_shape)],
        [helper.make_empty_tensor_value_info(o) for o in outputs],
        [t for t in extra if t is not None],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    # give the outputs the types ONNX infers, as an exporter would
    inferred = {v.name: v for v in onnx.shape_inference.infer_shapes(model, strict_mode=True).graph.value_info}
    for value in model.graph.output:
        value.CopyFrom(inferred[value.name])
    return model


def _ints(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(values, dtype=np.int64), name)


SINGLE_OPS = {
    "avgpool19-asym-include-pad-ceil": lambda: _single(
        "AveragePool", 19, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 1, 2, 0], count_include_pad=1, ceil_mode=1),
        (2, 3, 7, 6)),
    "avgpool11-asym-exclude-pad-ceil": lambda: _single(
        "AveragePool", 11, dict(kernel_shape=[3, 2], strides=[2, 2], pads=[1, 0, 0, 1], ceil_mode=1), (1, 2, 8, 7)),
    "avgpool10-asym-1d": lambda: _single("AveragePool", 10, dict(kernel_shape=[4], pads=[2, 1]), (2, 3, 9)),
    "reducemean18-axes-input": lambda: _single("ReduceMean", 18, dict(keepdims=0), (2, 3, 4), extra=[_ints("axes", [1])]),
    "reducemax18-no-axes": lambda: _single("ReduceMax", 18, {}, (2, 3, 4)),
    "reducel2-18-negative-axes": lambda: _single("ReduceL2", 18, {}, (2, 3, 4), extra=[_ints("axes", [-1, 0])]),
    "pad18-constant-value": lambda: _single(
        "Pad", 18, dict(mode="constant"), (1, 2, 3, 3),
        extra=[_ints("pads", [0, 0, 1, 2, 0, 0, 2, 1]), numpy_helper.from_array(np.array(0.5, np.float32), "v")]),
    "pad19-reflect": lambda: _single("Pad", 19, dict(mode="reflect"), (1, 2, 4, 4), extra=[_ints("pads", [0, 0, 1, 1, 0, 0, 1, 1])]),
    "split18-num-outputs": lambda: _single("Split", 18, dict(axis=1, num_outputs=2), (2, 6, 3), out_count=2),
    "gelu20-tanh": lambda: _single("Gelu", 20, dict(approximate="tanh"), (2, 5)),
    "gelu20-exact": lambda: _single("Gelu", 20, {}, (2, 5)),
    "conv13-same-upper": lambda: _single(
        "Conv", 13, dict(auto_pad="SAME_UPPER", strides=[2, 2]), (1, 2, 7, 8),
        extra=[numpy_helper.from_array(np.random.default_rng(0).standard_normal((3, 2, 4, 3)).astype(np.float32), "w")]),
    "maxpool12-same-lower": lambda: _single("MaxPool", 12, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER"),
                                            (1, 2, 6, 7)),
    "reshape21-allowzero": lambda: _single("Reshape", 21, dict(allowzero=1), (2, 3, 4), extra=[_ints("shape", [6, -1])]),
    "identity21": lambda: _single("Identity", 21, {}, (2, 3)),
    "resize18-nearest": lambda: _single(
        "Resize", 18, dict(mode="nearest"), (1, 2, 3, 3),
        extra=[None, numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]),
}


@pytest.mark.parametrize("case", sorted(SINGLE_OPS))
def test_single_operator_matches_onnxruntime(case):
    from cimguard.onnx.runtime import run_onnxruntime_all

    model = SINGLE_OPS[case]()
    onnx.checker.check_model(model)
    imported = import_model(model, require_mapped=False)
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    reference = run_onnxruntime_all(model, {"x": x})
    ours = _outputs(imported.module, [x])
    assert len(ours) == len(reference)
    for ref, out in zip(reference, ours):
        assert output_mismatch(ref, out) <= 1e-5, case
