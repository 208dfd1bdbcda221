"""A hostile-input corpus: every class of bad input cimguard must refuse with one line.

``build_files(root)`` writes the corpus files (tiny ONNX models made with
``onnx.helper``, ``.npz`` archives, TOML device files, replay files) into ``root``;
``CASES`` lists the command lines that use them, each with the exit status and a
pattern its one-line ``Error:`` must match.  Nothing here is a stored binary: the
files are built at test time (``tests/test_hostile_inputs.py`` builds them once per
session).  In a case's argv, ``{root}`` is the corpus folder and ``{out}`` a fresh,
empty folder for that case's outputs (which must stay empty).
"""

from __future__ import annotations

import json
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Features and classes of the tiny models: they run on the built-in digits data (8×8 images, 10 classes).
FEATURES, CLASSES = 64, 10


@dataclass(frozen=True)
class Case:
    """One hostile command line and what cimguard must answer."""

    id: str
    argv: tuple[str, ...]
    exit_code: int
    pattern: str
    """Regular expression the output must match (``re.search``)."""


# -- tiny models ---------------------------------------------------------------------------------


def _weights(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 0.1, (CLASSES, FEATURES)).astype(np.float32), np.zeros(CLASSES, np.float32)


def _model(nodes, inputs, outputs, inits, *, opset: int = 13, value_info=()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "hostile", inputs, outputs, inits, value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _x(elem=TensorProto.FLOAT, dims=("batch", FEATURES), name="x"):
    return helper.make_tensor_value_info(name, elem, list(dims))


def _y(dims=("batch", CLASSES), elem=TensorProto.FLOAT, name="y"):
    return helper.make_tensor_value_info(name, elem, list(dims))


def gemm(weight: np.ndarray | None = None, bias: np.ndarray | None = None, *, x=None, y=None, opset: int = 13,
         dtype=np.float32) -> onnx.ModelProto:
    """``y = x @ W.T + b`` on 64 features and 10 classes (the healthy shape of every corpus model)."""
    w0, b0 = _weights()
    weight = w0 if weight is None else weight
    bias = b0 if bias is None else bias
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    inits = [numpy_helper.from_array(weight.astype(dtype), "W"), numpy_helper.from_array(bias.astype(dtype), "b")]
    node = helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1)
    return _model([node], [x or _x(elem)], [y or _y(elem=elem)], inits, opset=opset)


def _gemm_then(nodes, out_dims, extra_inits=(), out_name="z") -> onnx.ModelProto:
    """The healthy Gemm followed by ``nodes`` (which read ``y`` and write ``out_name``)."""
    w, b = _weights()
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b"), *extra_inits]
    return _model([helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="fc", transB=1), *nodes],
                  [_x()], [helper.make_tensor_value_info(out_name, TensorProto.FLOAT, list(out_dims))], inits)


def _with_weight_value(value: float, where: str = "W") -> onnx.ModelProto:
    w, b = _weights()
    (w if where == "W" else b)[1] = value
    return gemm(w, b)


def _int64(name: str, values) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _models() -> dict[str, onnx.ModelProto]:
    w, b = _weights()
    models: dict[str, onnx.ModelProto] = {
        "ok": gemm(),
        "nan_weight": _with_weight_value(np.nan),
        "inf_weight": _with_weight_value(np.inf),
        "neginf_weight": _with_weight_value(-np.inf),
        "nan_bias": _with_weight_value(np.nan, "b"),
        "neg_dim": gemm(x=_x(dims=("batch", -3))),
        "zero_dim": gemm(x=_x(dims=("batch", 0))),
        "zero_batch": gemm(x=_x(dims=(0, FEATURES))),
        "opset99": gemm(opset=99),
        "wrong_gemm_shape": gemm(weight=np.ones((CLASSES, 32), np.float32)),
        # outputs that are not [batch, classes]
        "out_1d": _gemm_then([helper.make_node("ReduceMax", ["y"], ["z"], keepdims=0, axes=[1])], ["batch"]),
        "out_scalar": _gemm_then([helper.make_node("ReduceSum", ["y"], ["z"], keepdims=0)], []),
        "out_4d": _gemm_then([helper.make_node("Reshape", ["y", "s"], ["z"])], ["batch", CLASSES, 1, 1],
                             [_int64("s", [-1, CLASSES, 1, 1])]),
        "out_3d_first": _gemm_then([helper.make_node("Reshape", ["y", "s"], ["z"])], ["batch", 2, 5],
                                   [_int64("s", [-1, 2, 5])]),
        "out_one_class": gemm(np.ones((1, FEATURES), np.float32), np.zeros(1, np.float32), y=_y(("batch", 1))),
        # run-time memory bombs
        "bomb_constantofshape": _gemm_then([
            helper.make_node("Shape", ["x"], ["xs"]),
            helper.make_node("Slice", ["xs", "zero", "one"], ["batch"]),
            helper.make_node("Concat", ["batch", "huge"], ["shape"], axis=0),
            helper.make_node("ConstantOfShape", ["shape"], ["big"],
                             value=numpy_helper.from_array(np.zeros(1, np.float32))),
            helper.make_node("ReduceSum", ["big", "one"], ["col"], keepdims=1),
            helper.make_node("Add", ["y", "col"], ["z"]),
        ], ["batch", CLASSES], [_int64("zero", [0]), _int64("one", [1]), _int64("huge", [2**40])]),
        "bomb_expand": _gemm_then([
            helper.make_node("ReduceMax", ["x"], ["m"], keepdims=0),
            helper.make_node("Mul", ["m", "scale"], ["ms"]),
            helper.make_node("Cast", ["ms"], ["n"], to=TensorProto.INT64),
            helper.make_node("Reshape", ["n", "one"], ["n1"]),
            helper.make_node("Concat", ["n1", "n1"], ["shape"], axis=0),
            helper.make_node("Expand", ["y1", "shape"], ["big"]),
            helper.make_node("ReduceSum", ["big"], ["t"], keepdims=0),
            helper.make_node("Add", ["y", "t"], ["z"]),
        ], ["batch", CLASSES], [numpy_helper.from_array(np.array(1e9, np.float32), "scale"), _int64("one", [1]),
                                numpy_helper.from_array(np.ones((1, 1), np.float32), "y1")]),
        "bomb_matmul_lies": _gemm_then([
            helper.make_node("MatMul", ["col", "row"], ["outer"], name="outer"),
            helper.make_node("ReduceSum", ["outer"], ["t"], keepdims=0),
            helper.make_node("Add", ["y", "t"], ["z"]),
        ], ["batch", CLASSES], [numpy_helper.from_array(np.ones((2**17, 1), np.float32), "col"),
                                numpy_helper.from_array(np.ones((1, 2**17), np.float32), "row")]),
        # inputs cimguard cannot feed
        "int8_input": _model([helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
                              helper.make_node("Gemm", ["xf", "W", "b"], ["y"], transB=1)],
                             [_x(TensorProto.INT8)], [_y()],
                             [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]),
        "string_input": _model([helper.make_node("Cast", ["x"], ["xf"], to=TensorProto.FLOAT),
                                helper.make_node("Gemm", ["xf", "W", "b"], ["y"], transB=1)],
                               [_x(TensorProto.STRING)], [_y()],
                               [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]),
        "two_inputs": _model([helper.make_node("Add", ["x", "x2"], ["xs"]),
                              helper.make_node("Gemm", ["xs", "W", "b"], ["y"], transB=1)],
                             [_x(), _x(name="x2")], [_y()],
                             [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")]),
    }
    for name, raw in (("short_raw_data", lambda r: r[:8]), ("long_raw_data", lambda r: r + b"\0" * 4000)):
        model = gemm()
        model.graph.initializer[0].raw_data = raw(model.graph.initializer[0].raw_data)
        models[name] = model
    matmul_lies = models["bomb_matmul_lies"]
    matmul_lies.graph.value_info.append(helper.make_tensor_value_info("outer", TensorProto.FLOAT, [1, 1]))
    # inspect feeds random inputs of the declared shape: dynamic, huge, negative or zero dims
    models["inspect_huge_dim"] = _model(
        [helper.make_node("ReduceSum", ["x", "axis"], ["s"], keepdims=1),
         helper.make_node("MatMul", ["s", "W1"], ["y"])],
        [_x(dims=(1, 10**10))], [_y((1, CLASSES))],
        [numpy_helper.from_array(np.ones((1, CLASSES), np.float32), "W1"), _int64("axis", [1])])
    # an element type no ONNX version defines
    unknown = gemm()
    unknown.graph.initializer[0].data_type = 999
    models["unknown_dtype"] = unknown
    # batch 1 fixed by the exporter and a graph that cannot run: refused by the probe, not by the batch trial
    broken = _gemm_then([helper.make_node("Reshape", ["y", "s"], ["r"]), helper.make_node("Reshape", ["r", "t"], ["z"])],
                        [1, CLASSES], [_int64("s", [3, 7]), _int64("t", [1, CLASSES])])
    broken.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    models["fixed_batch_broken"] = broken
    return models


def _write_model(path: Path, model: onnx.ModelProto) -> None:
    path.write_bytes(model.SerializeToString())  # no checker: hostile files are written as a vendor would ship them


def _external_2gib(root: Path) -> None:
    """A float64 tensor of 2^28 elements (2 GiB, at the element limit) stored in a sparse side file."""
    model = gemm()
    big = onnx.TensorProto(name="big", data_type=TensorProto.DOUBLE, dims=[2**28])
    big.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "big.bin"), ("offset", "0"), ("length", str(2**31))):
        big.external_data.add(key=key, value=value)
    model.graph.initializer.append(big)
    with open(root / "big.bin", "wb") as handle:  # sparse: no disk space used
        handle.truncate(2**31)
    _write_model(root / "external_2gib.onnx", model)


# -- npz archives ---------------------------------------------------------------------------------


def _digits_like(n: int = 20, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, FEATURES)).astype(np.float32), rng.integers(0, CLASSES, n)


def _npz(path: Path, **arrays) -> None:
    with open(path, "wb") as handle:
        np.savez(handle, **arrays)


def _npy_header_declaring(shape: tuple[int, ...]) -> bytes:
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    text = repr(header).encode() + b" "
    text += b" " * (-(10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text


def _zip_bomb(path: Path, declared: int = 3 * 2**30) -> None:
    """A member that inflates to 3 GiB of zeros from a few MB (a valid deflate stream, CRC left wrong)."""
    header = _npy_header_declaring((20, FEATURES))
    zeros = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = zeros.compress(b"\0" * 2**20) + zeros.flush(zlib.Z_FULL_FLUSH)  # a self-contained deflate block
    count = declared // 2**20
    first, last = zlib.compressobj(9, zlib.DEFLATED, -15), zlib.compressobj(9, zlib.DEFLATED, -15)
    data = first.compress(header) + first.flush(zlib.Z_FULL_FLUSH) + chunk * count + last.flush(zlib.Z_FINISH)
    size = len(header) + count * 2**20
    name = b"x.npy"
    local = struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, 0, 8, 0, 0, 0, len(data), size, len(name), 0) + name
    central = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", 20, 20, 0, 8, 0, 0, 0, len(data), size, len(name),
                          0, 0, 0, 0, 0, 0) + name
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(central), len(local) + len(data), 0)
    path.write_bytes(local + data + central + end)


def _npz_files(root: Path) -> None:
    x, y = _digits_like()
    bad = {
        "x_nan": np.where(np.arange(x.size).reshape(x.shape) == 70, np.nan, x),
        "x_inf": np.where(np.arange(x.size).reshape(x.shape) == 5, np.inf, x),
        "x_neginf": np.where(np.arange(x.size).reshape(x.shape) == 64, -np.inf, x),
        "x_overflow": x.astype(np.float64) * np.where(np.arange(x.size).reshape(x.shape) == 3, 1e300, 1.0),
        "x_complex": x.astype(np.complex64) + 1j,
    }
    for name, value in bad.items():
        _npz(root / f"{name}.npz", x=value, y=y)
    _npz(root / "ok.npz", x=x, y=y)
    _npz(root / "x_bool.npz", x=x > 0, y=y)
    _npz(root / "x_str.npz", x=np.array([["a"] * FEATURES] * 3), y=y[:3])
    _npz(root / "x_1d.npz", x=x[:, 0], y=y)
    _npz(root / "x_empty.npz", x=x[:0], y=y[:0])
    _npz(root / "x_wrong_features.npz", x=x[:, :10], y=y)
    _npz(root / "no_x.npz", inputs=x, y=y)
    _npz(root / "y_nan.npz", x=x, y=np.where(np.arange(len(y)) == 2, np.nan, y.astype(np.float64)))
    _npz(root / "y_frac.npz", x=x, y=y + 0.5)
    _npz(root / "y_range.npz", x=x, y=np.full_like(y, 99))
    _npz(root / "y_negative.npz", x=x, y=np.full_like(y, -1))
    _npz(root / "y_length.npz", x=x, y=y[:5])
    _npz(root / "y_2d.npz", x=x, y=y[:, None])
    _npz(root / "y_complex.npz", x=x, y=y.astype(np.complex64))
    _npz(root / "xtrain_nan.npz", x=x, y=y, x_train=np.full_like(x, np.nan), y_train=y)
    _npz(root / "xtrain_missing_labels.npz", x=x, y=y, x_train=x)
    with open(root / "x_pickle.npz", "wb") as handle:  # an object array: loading it would run the unpickler
        np.savez(handle, x=np.array([{"a": 1}] * 3, dtype=object), y=y[:3])
    np.save(root / "saved_npy.npy", x)
    (root / "npy_as.npz").write_bytes((root / "saved_npy.npy").read_bytes())
    # a CRC error: one byte of the stored (uncompressed) x flipped
    raw = bytearray((root / "ok.npz").read_bytes())
    raw[200] ^= 0xFF
    (root / "crc_error.npz").write_bytes(bytes(raw))
    (root / "truncated.npz").write_bytes((root / "ok.npz").read_bytes()[:300])
    (root / "empty.npz").write_bytes(b"")
    (root / "text.npz").write_text("x,y\n1,2\n")
    _zip_bomb(root / "zip_bomb.npz")
    with zipfile.ZipFile(root / "header_4tib.npz", "w") as archive:  # a header that declares 4 TiB of data
        archive.writestr("x.npy", _npy_header_declaring((2**40,)) + b"\0" * 64)
    with zipfile.ZipFile(root / "header_lies.npz", "w") as archive:  # the header promises more than the member holds
        archive.writestr("x.npy", _npy_header_declaring((20, FEATURES)) + b"\0" * 64)
    (root / "folder.npz").mkdir()


# -- device files ---------------------------------------------------------------------------------


def _toml_files(root: Path) -> None:
    profiles = {
        "inf_sigma": 'base = "gaussian"\nsigma = inf\n',
        "nan_sigma": 'base = "gaussian"\nsigma = nan\n',
        "huge_sigma": 'base = "gaussian"\nsigma = 1e308\n',
        "nan_thg": 'base = "gaussian"\nthg = nan\n',
        "inf_gmax": 'base = "rram"\ng_max_us = inf\n',
        "bool_sigma": 'base = "gaussian"\nsigma = true\n',
        "text_sigma": 'base = "gaussian"\nsigma = "wide"\n',
        "list_sigma": 'base = "gaussian"\nsigma = [1, 2]\n',
        "unknown_field": 'base = "gaussian"\nsigmaa = 0.1\n',
        "no_base": 'sigma = 0.1\n',
        "unknown_base": 'base = "memristor9000"\n',
        "inf_t": 'base = "pcm"\nt = inf\n',
    }
    for name, body in profiles.items():
        (root / f"{name}.toml").write_text(f"[p]\n{body}")
    (root / "deep.toml").write_text("[p]\nbase = \"gaussian\"\nsigma = " + "[" * 50_000 + "]" * 50_000 + "\n")
    (root / "deep_tables.toml").write_text("p = " + "{a = " * 50_000 + "1" + "}" * 50_000 + "\n")
    (root / "binary.toml").write_bytes(b"\xff\xfe\x00garbage\x80")
    (root / "not_toml.toml").write_text("[p\nbase = \n")
    (root / "empty.toml").write_text("")
    (root / "folder.toml").mkdir()


# -- saved perturbations (attack --replay) ---------------------------------------------------------


def _replay_files(root: Path) -> None:
    import hashlib

    model = root / "ok.onnx"
    meta = {"format": "cimguard-perturbation-1", "model": str(model),
            "model_sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "data": "digits", "device": "gaussian",
            "device_params": [], "device_file": None, "weight_bits": 8, "label_free": False, "max_samples": 40,
            "thg": 0.03, "solver": "flwc", "seed": 0, "metric": "accuracy", "accuracy": 0.5}
    zero = np.zeros((CLASSES, FEATURES), np.float32)

    def write(name: str, delta, **changes) -> None:
        record = {**meta, **changes}
        record = {k: v for k, v in record.items() if v is not _DROP}
        arrays = {} if delta is None else {"delta/fc.weight": delta}
        _npz(root / f"{name}.npz", metadata_json=np.array(json.dumps(record)), **arrays)

    write("replay_ok", zero)
    write("replay_nan", np.full_like(zero, np.nan))
    write("replay_inf", np.where(np.eye(CLASSES, FEATURES) > 0, np.inf, zero).astype(np.float32))
    write("replay_too_big", np.full_like(zero, 10.0))
    write("replay_wrong_shape", np.zeros((3, 3), np.float32))
    write("replay_wrong_layer", None, )
    write("replay_int_delta", zero.astype(np.int64))
    write("replay_complex_delta", zero.astype(np.complex64))
    write("replay_no_thg", zero, thg=_DROP)
    write("replay_thg_text", zero, thg="wide")
    write("replay_thg_nan", zero, thg="nan")
    write("replay_thg_negative", zero, thg=-1)
    write("replay_no_format", zero, format=_DROP)
    write("replay_params_text", zero, device_params="sigma=0.1")
    write("replay_bits_text", zero, weight_bits="eight")
    write("replay_model_number", zero, model=17)
    write("replay_samples_text", zero, max_samples="all")
    write("replay_samples_negative", zero, max_samples=-1)
    write("replay_hash_number", zero, model_sha256=5)
    write("replay_other_model", zero, model_sha256="0" * 64)
    _npz(root / "replay_no_meta.npz", **{"delta/fc.weight": zero})
    _npz(root / "replay_meta_not_json.npz", metadata_json=np.array("{not json"), **{"delta/fc.weight": zero})
    _npz(root / "replay_meta_list.npz", metadata_json=np.array("[1, 2]"), **{"delta/fc.weight": zero})


_DROP = object()


def build_files(root: Path) -> Path:
    """Write every corpus file into ``root`` (an empty folder); returns ``root``."""
    for name, model in _models().items():
        _write_model(root / f"{name}.onnx", model)
    (root / "not_onnx.onnx").write_text("this is not a protobuf")
    (root / "empty.onnx").write_bytes(b"")
    (root / "folder.onnx").mkdir()
    (root / "plain_file").write_text("a file where a folder is expected")
    _external_2gib(root)
    _npz_files(root)
    _toml_files(root)
    _replay_files(root)
    return root


# -- the cases ------------------------------------------------------------------------------------

M = "{root}/ok.onnx"
FAST_EVAL = ("--max-samples", "40", "--samples", "2")
FAST_ATTACK = ("--max-samples", "40", "--samples", "0", "--iterations", "1", "--thg", "0.03")
FAST_HARDEN = ("--trainer", "noise", "--epochs", "1", "--max-samples", "40", "-o", "{out}/h.onnx")
NOT_FINITE = r"(NaN|Inf|not finite|non-finite)"


def _commands(model: str = M, *, inspect: bool = True) -> dict[str, tuple[str, ...]]:
    commands = {
        "evaluate": ("evaluate", "--model", model, *FAST_EVAL),
        "attack": ("attack", "--model", model, *FAST_ATTACK),
        "harden": ("harden", model, *FAST_HARDEN),
    }
    if inspect:
        commands["inspect"] = ("inspect", model)
    return commands


def _cases() -> list[Case]:
    cases: list[Case] = []

    def add(case_id: str, argv, exit_code: int, pattern: str) -> None:
        cases.append(Case(case_id, tuple(argv), exit_code, pattern))

    # 1. model files whose weights are not finite: refused at load time, naming the initializer
    for model in ("nan_weight", "inf_weight", "neginf_weight", "nan_bias"):
        name = "b" if model == "nan_bias" else "W"
        for command, argv in _commands(f"{{root}}/{model}.onnx").items():
            add(f"model-{model}-{command}", argv, 1, rf"tensor '{name}'.*{NOT_FINITE}")

    # 2. model files that are not models, or model inputs/outputs cimguard cannot use
    model_refusals = {
        "not_onnx": r"not a valid ONNX file",
        "empty": r"is empty",
        "folder": r"not a file",
        "missing": r"not found",
        "neg_dim": r"input 'x'.*dimension -3",
        "zero_dim": r"input 'x'.*dimension 0",
        "zero_batch": r"input 'x'.*dimension 0",
        "opset99": r"opset 99",
        "int8_input": r"input 'x' is int8",
        "string_input": r"input 'x' is string",
        "two_inputs": r"2 inputs",
        "external_2gib": r"tensor 'big'.*(bytes|GiB)",
        "short_raw_data": r"W.*(2560 bytes|too small)",
        "long_raw_data": r"tensor 'W' declares shape \(10, 64\) \(2560 bytes\) but holds 6560 bytes",
        "out_1d": r"output 'z'.*\[batch, classes\]",
        "out_scalar": r"output 'z'.*\[batch, classes\]",
        "out_4d": r"output 'z'.*\[batch, classes\]",
        "out_3d_first": r"output 'z'.*\[batch, classes\]",
        "out_one_class": r"output 'y'.*1 class",
        "wrong_gemm_shape": r"(fc|Gemm).*(shape|dimension|cannot be multiplied)",
        "bomb_constantofshape": r"(allocate|elements)",
        "bomb_expand": r"(allocate|elements)",
        "bomb_matmul_lies": r"(allocate|elements)",
        "unknown_dtype": r"tensor 'W' has an unknown element type 999",
        "fixed_batch_broken": r"(fails on the input|fixes the batch size to 1)",
    }
    inspect_ok = {"out_1d", "out_scalar", "out_4d", "out_3d_first", "out_one_class", "two_inputs"}
    for model, pattern in model_refusals.items():
        commands = _commands(f"{{root}}/{model}.onnx", inspect=model not in inspect_ok)
        if model in ("not_onnx", "empty", "folder", "missing", "opset99", "external_2gib", "bomb_expand",
                     "short_raw_data", "long_raw_data"):
            commands = {k: v for k, v in commands.items() if k in ("evaluate", "inspect")}
        for command, argv in commands.items():
            add(f"model-{model}-{command}", argv, 1, pattern)
    add("inspect-huge-dim", ("inspect", "{root}/inspect_huge_dim.onnx"), 1, r"input 'x'.*elements")
    # A model whose input sizes are all dynamic is valid: inspect reports it with the check skipped
    # (tests/test_inspect.py), it is not refused.

    # 3. evaluation data: non-finite, overflowing, complex, malformed or hostile archives
    data_refusals = {
        "x_nan": r"'x'.*1 non-finite.*\(1, 6\)",
        "x_inf": r"'x'.*1 non-finite.*\(0, 5\)",
        "x_neginf": r"'x'.*1 non-finite.*\(1, 0\)",
        "x_overflow": r"'x'.*float32.*\(0, 3\)",
        "x_complex": r"'x'.*complex",
        "x_bool": r"'x'.*bool",
        "x_str": r"'x'.*numeric",
        "x_pickle": r"'x'.*object",
        "x_1d": r"'x'.*batch axis",
        "x_empty": r"'x'.*no samples",
        "x_wrong_features": r"samples have shape",
        "no_x": r"no array named 'x'",
        "y_nan": r"labels 'y'.*(NaN|integer)",
        "y_frac": r"labels 'y'.*integer",
        "y_range": r"labels range",
        "y_negative": r"labels range",
        "y_length": r"5 labels for 20 samples",
        "y_2d": r"1-D",
        "y_complex": r"labels 'y'.*integer",
        "npy_as": r"not a .npz archive",
        "crc_error": r"(CRC|corrupt)",
        "truncated": r"not a .npz archive",
        "empty": r"not a .npz archive",
        "text": r"not a .npz archive",
        "zip_bomb": r"(declares|holds).*bytes",
        "header_4tib": r"elements",
        "header_lies": r"(declares|holds|truncated)",
        "folder": r"not a file",
        "missing": r"not found",
    }
    for name, pattern in data_refusals.items():
        data = f"{{root}}/{name}.npz"
        add(f"data-{name}-evaluate", ("evaluate", "--model", M, "--data", data, *FAST_EVAL), 1, pattern)
        if name in ("x_nan", "x_overflow", "x_complex", "crc_error", "zip_bomb", "header_4tib", "x_pickle"):
            add(f"data-{name}-attack", ("attack", "--model", M, "--data", data, *FAST_ATTACK), 1, pattern)
    for name, pattern in (("xtrain_nan", r"'x_train'.*non-finite"), ("xtrain_missing_labels", r"training split")):
        add(f"data-{name}-harden", ("harden", M, "--data", f"{{root}}/{name}.npz", *FAST_HARDEN), 1, pattern)
    add("data-unknown-dataset", ("evaluate", "--model", M, "--data", "mnist-please"), 1, r"unknown dataset")

    # 4. device parameters that make chips NaN (non-finite unless the field documents inf)
    device_params = {
        ("gaussian", "sigma=inf"): r"sigma.*finite",
        ("gaussian", "sigma=nan"): r"sigma.*finite",
        ("gaussian", "sigma=-inf"): r"sigma",
        ("gaussian", "sigma=1e308"): r"(not finite|overflow)",
        ("gaussian", "thg=nan"): r"thg",
        ("gaussian", "g_max_us=inf"): r"g_max_us.*finite",
        ("gaussian", "g_min_us=nan"): r"g_min_us",
        ("gaussian", "bits_per_device=1.5"): r"bits_per_device.*int",
        ("gaussian", "sigma=true"): r"sigma.*float",
        ("gaussian", "sigma="): r"sigma.*float",
        ("gaussian", "nonsense=1"): r"unknown device parameter",
        ("pcm", "t=inf"): r"\bt\b.*finite",
        ("pcm", "t=nan"): r"\bt\b",
        ("pcm", "t0=inf"): r"t0.*finite",
        ("pcm", "t_read=inf"): r"t_read.*finite",
        ("pcm", "prog_c0=inf"): r"prog_c0.*finite",
        ("pcm", "prog_c1=nan"): r"prog_c1.*finite",
        ("pcm", "bound_z=inf"): r"bound_z.*finite",
        ("pcm", "t=1e308"): r"(not finite|overflow)",
        ("rram", "g_max_us=1e308"): r"(not finite|overflow|negative)",
        ("fefet", "thg=nan"): r"thg",
    }
    for (device, param), pattern in device_params.items():
        field = param.partition("=")[0]
        for command, argv in _commands(inspect=False).items():
            if command != "evaluate" and (device, param) not in (("gaussian", "sigma=inf"), ("pcm", "t=inf")):
                continue
            add(f"device-{device}-{param}-{command}",
                (*argv, "--device", device, "--device-param", param), 1, pattern.replace("FIELD", field))
    for name, pattern in {
        "inf_sigma": r"sigma.*finite", "nan_sigma": r"sigma.*finite", "huge_sigma": r"(not finite|overflow)",
        "nan_thg": r"thg", "inf_gmax": r"g_max_us.*finite", "bool_sigma": r"sigma.*float",
        "text_sigma": r"sigma.*float", "list_sigma": r"sigma.*float", "unknown_field": r"unknown device parameter",
        "no_base": r"needs base", "unknown_base": r"unknown device", "inf_t": r"\bt\b.*finite",
        "deep": r"(nested|deep)", "deep_tables": r"(nested|deep)", "binary": r"not valid TOML",
        "not_toml": r"not valid TOML", "empty": r"no device profile", "folder": r"not a file", "missing": r"not found",
    }.items():
        add(f"devicefile-{name}", ("evaluate", "--model", M, *FAST_EVAL, "--device-file", f"{{root}}/{name}.toml",
                                   "--device", "p"), 1, pattern)

    # 5. attack --replay of saved ΔW: non-finite, out of the box, missing or mistyped metadata
    replay_refusals = {
        "replay_nan": NOT_FINITE, "replay_inf": NOT_FINITE, "replay_too_big": r"exceeds the write-verify bound",
        "replay_wrong_shape": r"shape", "replay_wrong_layer": r"perturbs layers",
        "replay_int_delta": r"floating", "replay_complex_delta": r"floating",
        "replay_no_thg": r"metadata.*thg", "replay_thg_text": r"metadata.*thg", "replay_thg_nan": r"thg",
        "replay_thg_negative": r"thg", "replay_no_format": r"format", "replay_params_text": r"metadata.*device_params",
        "replay_bits_text": r"metadata.*weight_bits", "replay_model_number": r"metadata.*model",
        "replay_samples_text": r"metadata.*max_samples", "replay_samples_negative": r"max_samples must be >= 1", "replay_hash_number": r"metadata.*model_sha256",
        "replay_other_model": r"different model", "replay_no_meta": r"not a cimguard perturbation",
        "replay_meta_not_json": r"not a cimguard perturbation", "replay_meta_list": r"not a cimguard perturbation",
        "crc_error": r"(CRC|corrupt)", "zip_bomb": r"(declares|holds).*bytes", "header_4tib": r"elements",
        "npy_as": r"not a .npz archive", "folder": r"not a file", "missing": r"not found", "x_pickle": r"object",
    }
    for name, pattern in replay_refusals.items():
        add(f"replay-{name}", ("attack", "--replay", f"{{root}}/{name}.npz", "--model", M), 1, pattern)

    # 6. numbers out of range: seeds, counts, thresholds, learning rates, bits
    for command, argv in {**_commands(), "compare": ("compare", M, M, *FAST_ATTACK)}.items():
        for seed in (str(2**64), str(2**70), "-1"):
            add(f"seed-{seed}-{command}", (*argv, "--seed", seed), 2, r"--seed")
    numbers = [
        ("evaluate", "--samples", "100000000000000000000", 2, r"--samples"),
        ("attack", "--samples", "100000000000000000000", 2, r"--samples"),
        ("evaluate", "--max-samples", "100000000000000000000", 2, r"--max-samples"),
        ("evaluate", "--thg", "nan", 2, r"--thg"),
        ("evaluate", "--thg", "-1", 2, r"--thg"),
        ("attack", "--thg", "1e308", 1, r"thg"),
        ("attack", "--thg", "nan", 1, r"thg"),
        ("attack", "--thg", "inf", 1, r"thg"),
        ("attack", "--iterations", "100000000000000000000", 2, r"--iterations"),
        ("attack", "--solver-param", "k=inf", 1, r"\bk\b"),
        ("attack", "--solver-param", "k=nan", 1, r"\bk\b"),
        ("attack", "--solver-param", "kappa=1e400", 1, r"kappa"),
        ("attack", "--solver-param", "iterations=1e30", 1, r"iterations"),
        ("harden", "--thg", "nan", 2, r"--thg"),
        ("harden", "--lr", "1e308", 1, r"diverged; lower --lr"),
        ("harden", "--lr", "inf", 1, r"(lr|learning rate)"),
        ("harden", "--lr", "nan", 1, r"(lr|learning rate)"),
        ("harden", "--epochs", "100000000000000000000", 2, r"--epochs"),
        ("harden", "--batch-size", "100000000000000000000", 2, r"--batch-size"),
        ("harden", "--sigma", "inf", 1, r"sigma.*finite"),
        ("harden", "--sigma", "1e308", 1, r"(sigma|diverged|not finite)"),
        ("harden", "--threshold", "nan", 1, r"threshold"),
        ("evaluate", "--weight-bits", "0", 1, r"weight bits"),
        ("evaluate", "--weight-bits", "100000000000000000000", 1, r"weight bits"),
        ("evaluate", "--torch-device", "meta", 1, r"torch device"),
        ("evaluate", "--torch-device", "cuda:99", 1, r"(cuda|CUDA)"),
        ("evaluate", "--torch-device", "bogus", 1, r"torch device"),
    ]
    add("number-harden-atrice--thg=1e308", ("harden", M, *FAST_HARDEN[2:], "--trainer", "atrice", "--thg", "1e308"), 1,
        r"thg.*wider")
    for command, option, value, code, pattern in numbers:
        argv = _commands()[command]
        if command == "harden" and option in ("--sigma", "--threshold"):
            argv = ("harden", M, *FAST_HARDEN[2:], "--trainer", "trice")
        add(f"number-{command}{option}={value}", (*argv, option, value), code, pattern)

    # 7. output paths: a folder that is a file, a missing folder, a name too long, a folder as the file
    long_name = "n" * 5000 + ".json"
    outputs = {
        "evaluate": ("evaluate", "--model", M, *FAST_EVAL, "--json"),
        "attack": ("attack", "--model", M, *FAST_ATTACK, "--json"),
        "harden": ("harden", M, "--trainer", "noise", "--epochs", "1", "--max-samples", "40", "-o"),
    }
    suffix = {"evaluate": "r.json", "attack": "r.json", "harden": "h.onnx"}
    for command, argv in outputs.items():
        add(f"output-parent-is-file-{command}", (*argv, f"{{root}}/plain_file/{suffix[command]}"), 1,
            r"plain_file.*not a folder")
        add(f"output-parent-missing-{command}", (*argv, f"{{out}}/nowhere/{suffix[command]}"), 1, r"does not exist")
        add(f"output-long-name-{command}", (*argv, f"{{out}}/{long_name[:-5]}.{suffix[command].split('.')[1]}"), 1,
            r"name too long")
        add(f"output-is-folder-{command}", (*argv, "{out}"), 1, r"(already exists|must end in)")
    add("output-plot-parent-is-file", ("evaluate", "--model", M, *FAST_EVAL, "--plot",
                                       "{root}/plain_file/p.png"), 1, r"not a folder")
    add("output-save-perturbation-parent-is-file", ("attack", "--model", M, *FAST_ATTACK, "--save-perturbation",
                                                    "{root}/plain_file/p.npz"), 1, r"not a folder")
    add("output-checkpoint-parent-is-file", (*outputs["harden"], "{out}/h.onnx", "--checkpoint",
                                             "{root}/plain_file/c.pt"), 1, r"(not a folder|does not exist)")
    add("input-long-model-name", ("evaluate", "--model", "{root}/" + "m" * 5000 + ".onnx"), 1, r"name too long")
    add("input-long-data-name", ("evaluate", "--model", M, "--data", "{root}/" + "d" * 5000 + ".npz"), 1,
        r"name too long")
    add("input-long-device-file", ("evaluate", "--model", M, "--device-file", "{root}/" + "t" * 5000 + ".toml"), 1,
        r"name too long")
    add("input-model-folder-harden", ("harden", "{root}/folder.onnx", *FAST_HARDEN), 1, r"not a file")
    add("input-model-folder-attack", ("attack", "--model", "{root}/folder.onnx", *FAST_ATTACK), 1, r"not a file")
    return cases


CASES: list[Case] = _cases()
