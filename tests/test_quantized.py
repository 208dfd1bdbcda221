"""Quantized ONNX files (QDQ, QOperator, dynamic, int4 blocked): made here with onnxruntime's own tools from
the shipped LeNet, then evaluated, attacked, hardened and exported through cimguard."""

from __future__ import annotations

import json
import re
from collections import Counter

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

quantization = pytest.importorskip("onnxruntime.quantization")
import onnxruntime as ort  # noqa: E402

from cimguard.errors import CimguardError  # noqa: E402

FORMATS = ("qdq", "qdq_channel", "qoperator", "dynamic")


@pytest.fixture(scope="module")
def quantized_lenets(tmp_path_factory, default_model_path, digits):
    """The shipped LeNet quantized four ways (64 calibration samples)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    folder = tmp_path_factory.mktemp("quantized")
    pre = folder / "pre.onnx"
    quant_pre_process(str(default_model_path), str(pre))
    calibration = digits.x_train[:64].numpy().astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"image": calibration[i:i + 32]} for i in range(0, 64, 32)])

        def get_next(self):
            return next(self.batches, None)

    paths = {name: folder / f"{name}.onnx" for name in FORMATS}
    quantize_static(str(pre), str(paths["qdq"]), Reader(), quant_format=QuantFormat.QDQ)
    quantize_static(str(pre), str(paths["qdq_channel"]), Reader(), quant_format=QuantFormat.QDQ, per_channel=True)
    quantize_static(str(pre), str(paths["qoperator"]), Reader(), quant_format=QuantFormat.QOperator)
    quantize_dynamic(str(pre), str(paths["dynamic"]))
    return paths


def _onnxruntime(path, x: np.ndarray, optimise: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x})[0]


def _ops(path) -> Counter:
    return Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.parametrize("form", FORMATS)
def test_clean_chip_computes_what_onnxruntime_computes(quantized_lenets, form):
    from cimguard.api import setup

    path = quantized_lenets[form]
    chip = setup(path, torch_device="cpu")
    x = chip.data.x
    reference = _onnxruntime(path, x.numpy())
    with torch.no_grad():
        ours = chip.crossbar.logits(x).numpy()
    # Same prediction on every sample, and the same accuracy.
    assert (ours.argmax(1) == reference.argmax(1)).all()
    assert chip.clean_accuracy() == pytest.approx(float((reference.argmax(1) == chip.data.labels.numpy()).mean()))
    assert chip.crossbar.config.weight_bits == 8  # the file's width
    quantized = chip.imported.quantization
    assert quantized.format == {"qdq": "QDQ", "qdq_channel": "QDQ", "qoperator": "QOperator", "dynamic": "dynamic"}[form]
    # The nominal chip holds the file's dequantized weights exactly (codes are the levels).
    graph = onnx.load(str(path)).graph
    stored = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for name, layer in chip.crossbar.layers.items():
        record = quantized.weights[layer.weight.initializer]
        expected = record.dequantize(stored[record.codes])
        if layer.weight.transposed:
            expected = expected.T
        assert torch.equal(layer.nominal, torch.from_numpy(np.ascontiguousarray(expected))), name


def test_codes_are_the_levels(quantized_lenets):
    """One least significant level is one step of the file's scale; the box is in units of that step."""
    from cimguard.api import setup

    chip = setup(quantized_lenets["qdq_channel"], torch_device="cpu")
    crossbar = chip.crossbar
    name, layer = next(iter(crossbar.layers.items()))
    record = chip.imported.quantization.weights[layer.weight.initializer]
    step = torch.from_numpy(record.expanded(record.scale).astype(np.float32))
    deviation = torch.zeros((crossbar.slices, *layer.nominal.shape))
    deviation[-1] = 1.0  # the least significant device of every weight up by one level
    assert torch.allclose(crossbar.weight_delta(name, deviation), layer.sign * step, rtol=1e-6)
    # The levels spell |c - z| in 8 bits, most significant device first.
    codes = torch.from_numpy(numpy_helper.to_array(next(
        i for i in onnx.load(str(quantized_lenets["qdq_channel"])).graph.initializer if i.name == record.codes)).astype(np.float32))
    weights = 2.0 ** torch.arange(crossbar.slices - 1, -1, -1).reshape(-1, *[1] * codes.dim())
    assert torch.equal((layer.levels * weights).sum(0) * layer.sign, codes)
    # thg 0.03: each weight within 0.03 levels per device, 255 steps of its own channel's scale in all (B = 1).
    bounds = crossbar.bounds(0.03)[name]
    assert torch.allclose(bounds, step * 0.03 * 255, rtol=1e-5)
    assert not torch.allclose(bounds, bounds.flatten()[0].expand_as(bounds))  # per channel


def test_evaluate_attack_and_weight_bits(quantized_lenets, invoke, tmp_path):
    path = quantized_lenets["qoperator"]
    result = invoke("evaluate", "--model", path, "--samples", "5", "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    assert "8-bit weights on 8 devices each" in result.output
    assert re.search(r"Monte Carlo mean \(5 chips, seed 0\)\s+0\.9", result.output)

    refused = invoke("evaluate", "--model", path, "--weight-bits", "4", "--samples", "0")
    assert refused.exit_code == 1
    assert refused.output.strip().splitlines() == [
        "Error: --weight-bits 4 differs from the file's 8-bit weights: a quantized file's codes are the device levels "
        "(leave --weight-bits out)"]

    report = tmp_path / "attack.json"
    result = invoke("attack", "--model", quantized_lenets["dynamic"], "--thg", "0.03", "--thg", "device",
                    "--solver", "flwc", "--solver", "pgd", "--samples", "4", "--solver-param", "pgd.iterations=10",
                    "--solver-param", "pgd.restarts=1", "--torch-device", "cpu", "--json", report)
    assert result.exit_code == 0, result.output
    record = json.loads(report.read_text())
    for point in record["points"]:
        clean = point["clean"]
        assert clean > 0.95
        for solver in ("flwc", "pgd"):
            assert point["worst_case"][solver]["accuracy"] < clean - 0.3, (point["thg"], solver)


@pytest.mark.parametrize("form", ["qdq_channel", "qoperator", "dynamic"])
def test_harden_exports_the_same_format(quantized_lenets, invoke, tmp_path, form, one_thread):
    source = quantized_lenets[form]
    output = tmp_path / f"hardened_{form}.onnx"
    result = invoke("harden", source, "-o", output, "--trainer", "noise", "--epochs", "1", "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    after = float(re.search(r"clean chip accuracy\s+[0-9.]+ -> ([0-9.]+)", result.output).group(1))
    # The format is kept: the same operators, integer weights of the same types, new codes.
    assert _ops(output) == _ops(source)
    old = {i.name: i for i in onnx.load(str(source)).graph.initializer}
    new = {i.name: i for i in onnx.load(str(output)).graph.initializer}
    assert {n: i.data_type for n, i in new.items()} == {n: i.data_type for n, i in old.items()}
    changed = [n for n in new if not np.array_equal(numpy_helper.to_array(new[n]), numpy_helper.to_array(old[n]))]
    assert changed and all(new[n].data_type in (TensorProto.INT8, TensorProto.UINT8) for n in changed)
    # onnxruntime runs it, with the accuracy cimguard printed.
    from cimguard.factories import load_dataset

    data = load_dataset("digits")
    x, y = data.x_eval.numpy().astype(np.float32), data.y_eval.numpy()
    assert float((_onnxruntime(output, x).argmax(1) == y).mean()) == pytest.approx(after, abs=5e-5)


def test_inspect_reports_the_quantization(quantized_lenets, invoke):
    from tests.test_report_schemas import _validator

    result = invoke("inspect", quantized_lenets["qdq_channel"], "--json")
    assert result.exit_code == 0, result.output
    record = json.loads(result.output)
    _validator("inspect").validate(record)
    quantized = record["quantization"]
    assert quantized["format"] == "QDQ"
    mapped = [w for w in quantized["weights"] if w["crossbar_layer"]]
    assert len(mapped) == 4 and {w["type"] for w in mapped} == {"int8"}
    assert all(w["granularity"] == "per channel (axis 0)" and w["zero_points"] == "0" for w in mapped)
    assert {a["type"] for a in quantized["activations"]} == {"int8"}  # onnxruntime 1.2x: QInt8 activations
    text = invoke("inspect", quantized_lenets["dynamic"])
    assert "quantized   dynamic: 4 crossbar weights" in text.output
    assert "uint8 (8 bits) dynamic" in text.output
    float_record = json.loads(invoke("inspect", "models/lenet_digits.onnx", "--json").output)
    assert float_record["quantization"] is None


def test_python_api_worst_case(quantized_lenets):
    from cimguard.api import setup

    chip = setup(quantized_lenets["qdq"], torch_device="cpu", max_samples=120)
    run = chip.worst_case("flwc", thg=0.03)
    assert run.accuracy < chip.clean_accuracy() - 0.3
    assert chip.monte_carlo(3).mean > 0.9


# --- int4, blocked scales, zero points, and bad files ---------------------------------------------------


def _tiny(codes: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, code_type: int, zero_type: int | None = None,
          opset: int = 21, **attrs) -> onnx.ModelProto:
    """x [N, 64] -> MatMul(x, DequantizeLinear(codes)) -> [N, 10]."""
    inits = [helper.make_tensor("w", code_type, codes.shape, codes.reshape(-1).tolist()),
             numpy_helper.from_array(scale.astype(np.float32), "w_scale")]
    inputs = ["w", "w_scale"]
    if zero is not None:
        inits.append(helper.make_tensor("w_zero", zero_type or code_type, zero.shape, zero.reshape(-1).tolist()))
        inputs.append("w_zero")
    nodes = [helper.make_node("DequantizeLinear", inputs, ["w_float"], name="dq", **attrs),
             helper.make_node("MatMul", ["x", "w_float"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


def test_int4_blocked_with_zero_points(tmp_path, digits):
    from cimguard.api import setup

    rng = np.random.default_rng(0)
    codes = rng.integers(0, 16, size=(64, 10))
    scale = rng.uniform(0.01, 0.05, size=(4, 10))  # blocks of 16 along axis 0
    zero = rng.integers(4, 12, size=(4, 10))
    path = tmp_path / "int4.onnx"
    onnx.save(_tiny(codes, scale, zero, TensorProto.UINT4, axis=0, block_size=16), str(path))
    chip = setup(path, torch_device="cpu")
    assert chip.crossbar.config.weight_bits == 4 and chip.crossbar.slices == 4
    x = chip.data.x.reshape(len(chip.data.x), -1)
    with torch.no_grad():
        ours = chip.crossbar.logits(chip.data.x).numpy()
    # The operators' own arithmetic: onnxruntime's optimiser fuses DequantizeLinear(int4) + MatMul into
    # MatMulNBits, whose kernel approximates (3e-3 of the output here), so compare with the unfused graph.
    np.testing.assert_allclose(ours, _onnxruntime(path, x.numpy(), optimise=False), rtol=1e-5, atol=1e-5)
    assert (ours.argmax(1) == _onnxruntime(path, x.numpy()).argmax(1)).mean() > 0.99
    layer = next(iter(chip.crossbar.layers.values()))
    # Zero point: the devices hold |c - z|, the sign of c - z sits on the differential pair.
    offset = torch.from_numpy((codes - np.repeat(zero, 16, axis=0)).astype(np.float32))
    assert torch.equal(layer.levels[0] * 8 + layer.levels[1] * 4 + layer.levels[2] * 2 + layer.levels[3], offset.abs())
    assert torch.equal(layer.sign, torch.where(offset < 0, -1.0, 1.0))


@pytest.mark.parametrize("change, message", [
    ({"scale": 0.0}, "scales must be finite and positive, found 0"),
    ({"scale": -0.5}, "scales must be finite and positive, found -0.5"),
    ({"scale": float("nan")}, "tensor 'w_scale' holds 1 non-finite value(s) (NaN)"),  # NaN: refused in any tensor
    # ±Inf is allowed in constants that are not crossbar weights; a quantizer's scale is checked by its own rule.
    ({"scale": float("inf")}, "scales must be finite and positive, found inf"),
    ({"zero": 200, "zero_type": TensorProto.UINT8}, "zero points must lie in the int8 range [-128, 127], found 200"),
    ({"axis": 2}, "axis 2 does not fit a tensor of rank 2"),
    ({"channels": 7}, "per-axis scales of shape (7,) do not fit axis 1 of a tensor of shape (64, 10)"),
    ({"block": 5}, "block_size 5 along axis 0 of shape (64, 10) needs scales of shape (13, 10), found (4, 10)"),
    ({"bare": True}, "uses integer weights 'w' (int8) without a DequantizeLinear cimguard can follow"),
])
def test_bad_quantization_is_one_line(tmp_path, invoke, change, message):
    codes = np.arange(640).reshape(64, 10) % 100 - 50
    scale = np.full((), 0.02)
    attrs = {}
    if "scale" in change:
        scale = np.full((), change["scale"])
    if "channels" in change:
        scale, attrs = np.full((change["channels"],), 0.02), {"axis": 1}
    if "axis" in change:
        scale, attrs = np.full((10,), 0.02), {"axis": change["axis"]}
    if "block" in change:
        scale, attrs = np.full((4, 10), 0.02), {"axis": 0, "block_size": change["block"]}
    zero = np.full(scale.shape, change["zero"]) if "zero" in change else None
    model = _tiny(codes, scale, zero, TensorProto.INT8, change.get("zero_type"), **attrs)
    if change.get("bare"):
        model.graph.node[1].input[1] = "w"
        del model.graph.node[0]
    path = tmp_path / "bad.onnx"
    onnx.save(model, str(path))
    result = invoke("evaluate", "--model", path, "--samples", "0")
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines


def test_legalisation_rounds_half_to_even_and_saturates():
    from cimguard.onnx.quantized_converters import OnnxQuantizeLinear

    quantize = OnnxQuantizeLinear(-128, 127, 1, 0)
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5, 400.0, -400.0], requires_grad=True)
    y = quantize(x, torch.tensor(1.0), torch.tensor(0))
    assert y.tolist() == [0.0, 2.0, 2.0, -0.0, -2.0, 127.0, -128.0]
    y.sum().backward()  # straight through inside the range, zero where it saturates
    assert x.grad.tolist() == [1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    with pytest.raises(CimguardError):
        from cimguard.onnx.quantized import check_parameters

        check_parameters(np.array([1.0, 0.0], np.float32), None, TensorProto.INT8, (2, 3), 0, 0, "here")


# --- the real-model networks (torchvision ResNet-18, the small transformer), quantized ---------------------


@pytest.fixture(scope="module")
def quantized_real_models(tmp_path_factory):
    """``{(network, form): (file, data.npz)}``: ResNet-18 (QDQ per-channel, QOperator) and the transformer
    classifier of the real-model tests (QOperator, dynamic), random weights, 8 calibration samples."""
    import warnings

    import torchvision
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from tests.test_real_models import TransformerClassifier

    folder = tmp_path_factory.mktemp("quantized_real")
    torch.manual_seed(0)
    networks = {"resnet18": (torchvision.models.resnet18(weights=None, num_classes=10).eval(), (3, 32, 32)),
                "transformer": (TransformerClassifier().eval(), (16, 8))}
    forms = {"resnet18": ("qdq_channel", "qoperator"), "transformer": ("qoperator", "dynamic", "nbits")}
    rng = np.random.default_rng(0)
    files = {}
    for name, (network, sample) in networks.items():
        x = rng.standard_normal((8, *sample)).astype(np.float32)
        source, pre, data = folder / f"{name}.onnx", folder / f"{name}_pre.onnx", folder / f"{name}.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(network, (torch.from_numpy(x[:2]),), str(source), dynamo=False, opset_version=17,
                              input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}, "y": {0: "n"}})
        # onnxruntime's symbolic shape inference cannot follow the transformer's Reshape shapes.
        quant_pre_process(str(source), str(pre), skip_symbolic_shape=name == "transformer")
        np.savez(data, x=x, y=rng.integers(0, 10, 8), x_train=x, y_train=rng.integers(0, 10, 8))

        class Reader(CalibrationDataReader):
            def __init__(self):
                self.batches = iter([{"x": x[i:i + 4]} for i in range(0, 8, 4)])

            def get_next(self):
                return next(self.batches, None)

        for form in forms[name]:
            path = folder / f"{name}_{form}.onnx"
            if form == "dynamic":
                quantize_dynamic(str(pre), str(path))
            elif form == "nbits":  # weight-only int4: com.microsoft::MatMulNBits
                from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

                quantizer = MatMulNBitsQuantizer(onnx.load(str(pre)), block_size=32, is_symmetric=False)
                quantizer.process()
                onnx.save(quantizer.model.model, str(path))
            else:
                quantize_static(str(pre), str(path), Reader(), per_channel=form == "qdq_channel",
                                quant_format=QuantFormat.QDQ if form.startswith("qdq") else QuantFormat.QOperator)
            files[(name, form)] = (path, data)
    return files


REAL = [("resnet18", "qdq_channel"), ("resnet18", "qoperator"), ("transformer", "qoperator"), ("transformer", "dynamic"),
        ("transformer", "nbits")]


@pytest.mark.slow
@pytest.mark.parametrize("network, form", REAL)
def test_real_networks_quantized(quantized_real_models, invoke, tmp_path, network, form):
    from cimguard.api import setup

    path, data = quantized_real_models[(network, form)]
    chip = setup(path, data=str(data), torch_device="cpu")
    assert chip.imported.quantization is not None
    assert chip.crossbar.config.weight_bits == (4 if form == "nbits" else 8)
    reference = _onnxruntime(path, chip.data.x.numpy())
    with torch.no_grad():
        ours = chip.crossbar.logits(chip.data.x).numpy()
    assert (ours.argmax(1) == reference.argmax(1)).all()  # the same prediction on every sample
    labels = chip.data.labels.numpy()
    assert chip.clean_accuracy() == pytest.approx(float((reference.argmax(1) == labels).mean()))
    # Monte Carlo runs; flwc and pgd break the clean chip's predictions at thg 0.03 (label-free: agreement).
    agreement = setup(path, data=str(data), torch_device="cpu", label_free=True)
    sweep = agreement.sweep(0.03, ["flwc", "pgd"], samples=2)
    point = sweep.points[0]
    assert point.clean == 1.0 and point.monte_carlo.mean > 0
    assert max(run.accuracy for run in point.runs.values()) <= 0.5
    if (network, form) in (("resnet18", "qoperator"), ("transformer", "dynamic"), ("transformer", "nbits")):
        output = tmp_path / "hardened.onnx"
        result = invoke("harden", path, "-o", output, "--data", data, "--trainer", "noise", "--epochs", "1",
                        "--torch-device", "cpu")
        assert result.exit_code == 0, result.output
        assert _ops(output) == _ops(path)
        after = float(re.search(r"clean chip accuracy\s+[0-9.]+ -> ([0-9.]+)", result.output).group(1))
        exported = _onnxruntime(output, chip.data.x.numpy())
        assert float((exported.argmax(1) == labels).mean()) == pytest.approx(after, abs=5e-5)


@pytest.mark.slow
def test_torchrun_reports_what_one_process_reports(quantized_lenets, invoke, tmp_path):
    """A static QDQ file under torchrun (2 gloo processes): the same Monte Carlo and worst case as one process."""
    from tests.test_distributed import WORST_CASE_TOLERANCE, torchrun

    args = ("attack", "--model", quantized_lenets["qdq_channel"], "--thg", "0.03", "--samples", "4",
            "--max-samples", "100", "--solver", "flwc")
    one = invoke(*args, "--json", tmp_path / "one.json")
    assert one.exit_code == 0, one.output
    two = torchrun(tmp_path, *args, "--json", "two.json")
    assert two.returncode == 0, two.stderr
    single, double = (json.loads((tmp_path / name).read_text())["points"][0] for name in ("one.json", "two.json"))
    assert double["clean"] == single["clean"]
    assert double["monte_carlo"]["accuracies"] == single["monte_carlo"]["accuracies"]
    assert double["worst_case"]["flwc"]["accuracy"] == pytest.approx(single["worst_case"]["flwc"]["accuracy"],
                                                                     abs=WORST_CASE_TOLERANCE)


def test_fake_quantized_float_weights_keep_their_codes(tmp_path, invoke):
    """PyTorch-style exports quantize a float weight in the graph (QuantizeLinear → DequantizeLinear): the codes
    it computes are the levels, and export writes the re-coded weight back as float."""
    rng = np.random.default_rng(1)
    weight = rng.normal(0, 0.1, size=(64, 10)).astype(np.float32)
    scale = (np.abs(weight).max(axis=0) / 127).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(scale, "s"),
             numpy_helper.from_array(np.zeros(10, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["w", "s", "z"], ["wq"], name="q", axis=1),
             helper.make_node("DequantizeLinear", ["wq", "s", "z"], ["wd"], name="dq", axis=1),
             helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "fake", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    path = tmp_path / "fake.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))
    from cimguard.api import setup

    chip = setup(path, torch_device="cpu")
    layer = next(iter(chip.crossbar.layers.values()))
    codes = np.clip(np.rint(weight / scale), -128, 127)
    assert torch.equal(layer.nominal, torch.from_numpy((codes * scale).astype(np.float32)))
    assert chip.imported.quantization.weights[layer.weight.initializer].storage == "float"
    output = tmp_path / "hardened.onnx"
    result = invoke("harden", path, "-o", output, "--trainer", "noise", "--epochs", "1", "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    assert _ops(output) == _ops(path)
    new = numpy_helper.to_array(next(i for i in onnx.load(str(output)).graph.initializer if i.name == "w"))
    assert new.dtype == np.float32 and not np.array_equal(new, weight)
    np.testing.assert_array_equal(new, np.clip(np.rint(new / scale), -128, 127) * scale)  # on the file's grid


def test_integer_graph_outputs_keep_their_type():
    """Codes that leave the graph (node tests, feature extractors) have the file's integer type, as in onnxruntime."""
    from cimguard.onnx.model import import_model

    graph = helper.make_graph(
        [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]), helper.make_node("MatMulInteger", ["a", "b"], ["m"])],
        "outputs",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
         helper.make_tensor_value_info("a", TensorProto.UINT8, [2, 3]),
         helper.make_tensor_value_info("b", TensorProto.UINT8, [3, 2])],
        [helper.make_tensor_value_info("q", TensorProto.UINT8, [2, 3]),
         helper.make_tensor_value_info("m", TensorProto.INT32, [2, 2])],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(5, np.uint8), "z")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    x = np.array([[0.05, 0.15, -1.0], [30.0, 0.25, 0.35]], np.float32)  # 0.5 and 2.5 round to even
    a, b = np.arange(1, 7, dtype=np.uint8).reshape(2, 3), np.arange(1, 7, dtype=np.uint8).reshape(3, 2)
    ours = import_model(model, require_mapped=False).module(*(torch.from_numpy(v) for v in (x, a, b)))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for mine, reference in zip(ours, session.run(None, {"x": x, "a": a, "b": b})):
        assert mine.numpy().dtype == reference.dtype
        np.testing.assert_array_equal(mine.numpy(), reference)


def test_compare_quantized_forms(quantized_lenets, invoke, tmp_path):
    """``compare`` runs the same sweep on several quantized files (and the float one) side by side."""
    report = tmp_path / "compare.json"
    result = invoke("compare", "models/lenet_digits.onnx", quantized_lenets["qdq_channel"], quantized_lenets["qoperator"],
                    "--thg", "0.03", "--samples", "2", "--max-samples", "120", "--torch-device", "cpu",
                    "--json", report)
    assert result.exit_code == 0, result.output
    sweeps = json.loads(report.read_text())["sweeps"]
    assert [len(sweep["points"]) for sweep in sweeps] == [1, 1, 1]
    for sweep in sweeps:
        point = sweep["points"][0]
        assert point["clean"] > 0.95 and point["worst_case"]["apgd"]["accuracy"] < point["clean"] - 0.3


def test_pytorch_quantization_aware_export(tmp_path, invoke):
    """PyTorch's own flow (eager QAT with per-channel int8 weights, ``torch.onnx.export``) writes
    QuantizeLinear → DequantizeLinear on float weights: cimguard maps the codes they become."""
    import warnings

    import torch.ao.quantization as tq
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.quant, self.conv, self.relu = tq.QuantStub(), nn.Conv2d(1, 8, 3), nn.ReLU()
            self.flatten, self.linear, self.dequant = nn.Flatten(), nn.Linear(8 * 6 * 6, 10), tq.DeQuantStub()

        def forward(self, x):
            return self.dequant(self.linear(self.flatten(self.relu(self.conv(self.quant(x))))))

    torch.manual_seed(0)
    network = Net().train()
    network.qconfig = tq.QConfig(
        activation=tq.FakeQuantize.with_args(observer=tq.MovingAverageMinMaxObserver, quant_min=0, quant_max=255),
        weight=tq.FakeQuantize.with_args(observer=tq.MovingAveragePerChannelMinMaxObserver, quant_min=-128,
                                         quant_max=127, dtype=torch.qint8, qscheme=torch.per_channel_symmetric))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tq.prepare_qat(network, inplace=True)
        x = torch.randn(32, 1, 8, 8)
        for _ in range(3):
            network(x)
        network.eval().apply(tq.disable_observer)
        path = tmp_path / "qat.onnx"
        torch.onnx.export(network, (x[:2],), str(path), dynamo=False, opset_version=13, input_names=["image"],
                          dynamic_axes={"image": {0: "n"}})
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    images = rng.standard_normal((40, 1, 8, 8)).astype(np.float32)
    np.savez(data, x=images, y=np.arange(40) % 10, x_train=images, y_train=np.arange(40) % 10)
    from cimguard.api import setup

    chip = setup(path, data=str(data), torch_device="cpu")
    records = list(chip.imported.quantization.weights.values())
    assert {(r.storage, r.granularity) for r in records} == {("float", "per channel (axis 0)")}
    with torch.no_grad():
        ours = chip.crossbar.logits(chip.data.x).numpy()
    assert (ours.argmax(1) == _onnxruntime(path, images).argmax(1)).all()
    output = tmp_path / "hardened.onnx"
    result = invoke("harden", path, "-o", output, "--data", data, "--trainer", "noise", "--epochs", "1",
                    "--torch-device", "cpu")
    assert result.exit_code == 0, result.output
    assert _ops(output) == _ops(path)


def test_fused_pair_equals_the_two_operators():
    """The fused QuantizeLinear → DequantizeLinear computes the two modules' values bit for bit, and their gradient."""
    from cimguard.onnx.quantized_converters import OnnxDequantizeLinear, OnnxQuantizeDequantize, OnnxQuantizeLinear

    generator = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(4, 6, 5, 5, generator=generator) * 6,
                   (torch.arange(-6, 6, dtype=torch.float32) * 0.05).expand(4, 6, 5, 12)[..., :5]], dim=2)
    scale, zero = torch.rand(6, generator=generator) * 0.1 + 0.02, torch.arange(-3, 3, dtype=torch.int8)
    for axis_scale, axis_zero in ((scale, zero), (scale[:1].reshape(()), zero[:1].reshape(()))):
        inputs = [x.clone().requires_grad_(True) for _ in range(2)]
        pair = OnnxDequantizeLinear(1, 0)(OnnxQuantizeLinear(-128, 127, 1, 0)(inputs[0], axis_scale, axis_zero),
                                          axis_scale, axis_zero)
        fused = OnnxQuantizeDequantize(-128, 127, 1, 0)(inputs[1], axis_scale, axis_zero)
        assert torch.equal(pair, fused)
        pair.sum().backward()
        fused.sum().backward()
        # The same straight-through gradient (the pair's is s · (1/s), one up to a rounding), except for a code
        # exactly on a limit, where the fused op counts it inside the range and torch's clamp does not.
        view = [1, -1, 1, 1] if axis_scale.dim() else []
        codes = torch.round(x / axis_scale.reshape(view)) + axis_zero.float().reshape(view)
        strict = (codes > -128) & (codes < 127)
        assert bool((codes > 127).any()) and bool((codes < -128).any())  # both sides saturate somewhere
        torch.testing.assert_close(inputs[0].grad[strict], inputs[1].grad[strict], rtol=1e-6, atol=0)
        assert bool((inputs[1].grad[~strict & ((codes > 127) | (codes < -128))] == 0).all())
