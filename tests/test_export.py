"""Export keeps the vendor's graph: only the mapped weights change, wherever the file stored them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn
from torch.func import functional_call

from cimguard.errors import CimguardError
from cimguard.onnx.batch import output_mismatch
from cimguard.onnx.export import export_onnx, weight_locations, with_weights
from cimguard.onnx.model import load_model
from cimguard.onnx.runtime import run_onnxruntime

DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def _perturbed(imported, seed: int = 0, size: float = 0.05) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {k: v + size * v.abs().max() * torch.randn(v.shape, generator=generator) for k, v in imported.weights().items()}


def _torch_output(imported, weights, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        out = functional_call(imported.module, weights, (x,), strict=False)
    return (out if isinstance(out, torch.Tensor) else out[0]).numpy()


def _graph_signature(model: onnx.ModelProto) -> tuple:
    return (
        [(n.name, n.op_type, tuple(n.input), tuple(n.output)) for n in model.graph.node],
        [v.SerializeToString() for v in model.graph.input],
        [v.SerializeToString() for v in model.graph.output],
        [(op.domain, op.version) for op in model.opset_import],
        model.ir_version, model.producer_name, model.producer_version,
        [(p.key, p.value) for p in model.metadata_props],
        sorted(init.name for init in model.graph.initializer),
    )


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).flatten(1))


@pytest.fixture(scope="module")
def torch_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("export") / "vendor.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Net().eval(), (torch.randn(2, 1, 6, 6),), str(path), dynamo=False, opset_version=13,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    model = onnx.load(str(path))
    helper.set_model_props(model, {"vendor": "acme", "licence": "internal"})
    model.producer_name, model.producer_version = "acme-exporter", "9.1"
    path.write_bytes(model.SerializeToString())
    return path


def test_round_trip_keeps_graph_and_reproduces_torch(torch_file, tmp_path):
    imported = load_model(torch_file)
    weights = _perturbed(imported)
    out = export_onnx(imported, weights, tmp_path / "hardened.onnx")
    original, exported = onnx.load(str(torch_file)), onnx.load(str(out))
    assert _graph_signature(exported) == _graph_signature(original)
    x = torch.randn(3, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    ours = _torch_output(imported, weights, x)
    theirs = run_onnxruntime(exported, x.numpy())
    assert output_mismatch(ours, theirs) <= 1e-5
    # and it really changed: the unperturbed model differs
    assert output_mismatch(run_onnxruntime(original, x.numpy()), theirs) > 1e-3
    # reloading the export gives back exactly the exported weights
    again = load_model(out)
    for name, value in again.weights().items():
        torch.testing.assert_close(value, weights[name].float(), rtol=0, atol=1e-7)
    # non-weight initializers are byte-identical
    mapped = {m.initializer for m in imported.mapped}
    before = {i.name: i.SerializeToString() for i in original.graph.initializer if i.name not in mapped}
    after = {i.name: i.SerializeToString() for i in exported.graph.initializer if i.name not in mapped}
    assert before == after and before


def test_refuses_input_existing_and_mismatch(torch_file, tmp_path):
    imported = load_model(torch_file)
    weights = _perturbed(imported)
    with pytest.raises(CimguardError, match="refusing to overwrite the input"):
        export_onnx(imported, weights, torch_file)
    existing = tmp_path / "taken.onnx"
    existing.write_bytes(b"keep me")
    with pytest.raises(CimguardError, match="already exists"):
        export_onnx(imported, weights, existing)
    assert existing.read_bytes() == b"keep me"
    target = tmp_path / "never.onnx"
    with pytest.raises(CimguardError, match="nothing was written"):
        export_onnx(imported, weights, target, tolerance=-1.0)
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.onnx"]  # no temporary files left behind


def _matmul_model(path: Path, weight_nodes: list[onnx.NodeProto], initializers: list[onnx.TensorProto],
                  weight_name: str, *, opset: int = 13) -> Path:
    nodes = weight_nodes + [
        helper.make_node("MatMul", ["x", weight_name], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="act"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="vendor")
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def _check_export(path: Path, tmp_path: Path):
    imported = load_model(path)
    weights = _perturbed(imported, seed=3)
    out = export_onnx(imported, weights, tmp_path / f"{path.stem}-out.onnx")
    exported = onnx.load(str(out))
    original = onnx.load(str(path))
    assert [n.name for n in exported.graph.node] == [n.name for n in original.graph.node]
    assert [tuple(n.output) for n in exported.graph.node] == [tuple(n.output) for n in original.graph.node]
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(2))
    assert output_mismatch(_torch_output(imported, weights, x), run_onnxruntime(exported, x.numpy())) <= 1e-6
    (name, value), = weights.items()
    return imported, exported, original, value


def test_weight_in_constant_node_is_written_to_that_node(tmp_path):
    weight = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    constant = helper.make_node("Constant", [], ["W"], name="weight_const", value=numpy_helper.from_array(weight))
    path = _matmul_model(tmp_path / "const.onnx", [constant], [], "W")
    imported, exported, original, value = _check_export(path, tmp_path)
    assert [loc.kind for loc in weight_locations(imported)] == ["constant"]
    assert [n.op_type for n in exported.graph.node] == [n.op_type for n in original.graph.node]
    stored = numpy_helper.to_array(exported.graph.node[0].attribute[0].t)
    np.testing.assert_array_equal(stored, value.numpy())


def test_weight_from_constant_of_shape_becomes_a_constant_in_place(tmp_path):
    shape = numpy_helper.from_array(np.array([4, 3], dtype=np.int64), "W_shape")
    fill = helper.make_node("ConstantOfShape", ["W_shape"], ["W"], name="fill",
                            value=numpy_helper.from_array(np.array([0.25], dtype=np.float32)))
    path = _matmul_model(tmp_path / "cos.onnx", [fill], [shape], "W")
    imported, exported, original, value = _check_export(path, tmp_path)
    assert imported.origins["W"].kind == "constant_of_shape"
    assert [n.op_type for n in exported.graph.node] == ["Constant", "MatMul", "Relu"]
    assert [n.op_type for n in original.graph.node] == ["ConstantOfShape", "MatMul", "Relu"]
    np.testing.assert_array_equal(numpy_helper.to_array(exported.graph.node[0].attribute[0].t), value.numpy())


def test_weight_computed_by_a_subgraph_rewrites_its_last_node(tmp_path):
    """W = Transpose(W0): the Transpose node becomes a Constant; W0 stays, unused (documented)."""
    stored = numpy_helper.from_array((np.arange(12, dtype=np.float32).reshape(3, 4) - 6) / 7, "W0")
    transpose = helper.make_node("Transpose", ["W0"], ["W"], name="to_matmul_layout", perm=[1, 0])
    path = _matmul_model(tmp_path / "sub.onnx", [transpose], [stored], "W")
    imported, exported, original, value = _check_export(path, tmp_path)
    (location,) = weight_locations(imported)
    assert (location.kind, location.node, location.op_type) == ("rewritten", "to_matmul_layout", "Transpose")
    assert [n.op_type for n in exported.graph.node] == ["Constant", "MatMul", "Relu"]
    assert [i.name for i in exported.graph.initializer] == ["W0"]
    np.testing.assert_array_equal(numpy_helper.to_array(exported.graph.initializer[0]), numpy_helper.to_array(stored))


def test_opset6_ir3_file_keeps_its_versions(tmp_path):
    """An opset-6 file is converted via opset 11 but exported at opset 6 (checked in an upgraded copy)."""
    source = DATA / "pytorch-converted" / "test_Linear" / "model.onnx"
    path = tmp_path / "linear.onnx"
    path.write_bytes(source.read_bytes())
    imported = load_model(path)
    assert any("opset 6 -> 11" in note for note in imported.notes)
    weights = _perturbed(imported, seed=4)
    exported = onnx.load(str(export_onnx(imported, weights, tmp_path / "linear-out.onnx")))
    assert exported.ir_version == 3 and exported.opset_import[0].version == 6
    assert _graph_signature(exported) == _graph_signature(onnx.load(str(path)))


def test_light_model_export_writes_every_weight(tmp_path):
    source = DATA / "light" / "light_squeezenet.onnx"
    path = tmp_path / "squeezenet.onnx"
    path.write_bytes(source.read_bytes())
    imported = load_model(path)
    weights = _perturbed(imported, seed=5, size=0.5)
    exported = with_weights(imported, weights)
    original = imported.onnx_model
    assert len(exported.graph.node) == len(original.graph.node)
    assert [n.name for n in exported.graph.node] == [n.name for n in original.graph.node]
    rewritten = [n for n, o in zip(exported.graph.node, original.graph.node) if n.op_type != o.op_type]
    assert len(rewritten) == 26 and all(n.op_type == "Constant" for n in rewritten)
    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    assert output_mismatch(_torch_output(imported, weights, x), run_onnxruntime(exported, x.numpy())) <= 1e-4
