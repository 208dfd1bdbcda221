"""The entry checks of ``cimguard/checks.py`` and what the hostile corpus cannot show in-process:
supported model types (float16, float64, integer token ids), I/O failures, warnings, the user's home."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from cimguard.checks import allocation_guard, check_finite, check_finite_fields, read_npz
from cimguard.errors import CimguardError
from tests.hostile_corpus import gemm


def test_check_finite_names_the_count_and_the_first_index():
    values = np.zeros((3, 4), np.float32)
    values[1, 2] = np.nan
    values[2, 0] = -np.inf
    with pytest.raises(CimguardError, match=r"^w holds 2 non-finite value\(s\).*first at index \(1, 2\)$"):
        check_finite(values, "w")
    with pytest.raises(CimguardError, match=r"index \(1, 2\)"):
        check_finite(torch.from_numpy(values), "w")
    check_finite(np.ones(3), "w")
    check_finite(np.arange(3), "w")  # integers are always finite


def test_the_core_bound_check_refuses_nan_and_inf():
    from cimguard.sim.crossbar import check_within_bounds

    bounds = {"w": torch.full((2, 2), 0.1)}
    check_within_bounds({"w": torch.zeros(2, 2)}, bounds)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(CimguardError, match="non-finite"):
            check_within_bounds({"w": torch.tensor([[0.0, bad], [0.0, 0.0]])}, bounds)


def test_a_solver_answer_with_nan_is_refused_by_the_core(setup):
    from cimguard.sim.solve import WorstCase, verified
    from cimguard.sim.worst_case import make_problem

    problem = make_problem(setup.crossbar, setup.data, 0.03)
    delta = {name: torch.full_like(bound, float("nan")) for name, bound in problem.bounds.items()}
    with pytest.raises(CimguardError, match="solver 'nan-solver' returned an invalid worst case.*non-finite"):
        verified(problem, WorstCase(delta, 0.0), "nan-solver")


def test_a_chip_with_non_finite_delta_is_an_error_never_an_accuracy(setup, monkeypatch):
    from cimguard.sim.evaluate import monte_carlo

    # A device whose draws overflow (a plugin's bug, or parameters no validation foresaw).
    device = setup.crossbar.device
    monkeypatch.setattr(type(device), "sampler", lambda self, levels: (lambda g: torch.full_like(levels, float("inf"))))
    setup.crossbar._flat = None
    with pytest.raises(CimguardError, match="non-finite ΔW"):
        monte_carlo(setup.crossbar, setup.data, 2, 0, progress=False)


def test_inf_is_allowed_only_where_a_field_documents_it():
    from cimguard.plugins import registry

    gaussian = registry("devices").get("gaussian")
    gaussian(gaussian.Config(thg=float("inf")))  # documented: no write-verify
    with pytest.raises(CimguardError, match="sigma must be a finite number, got inf"):
        gaussian(gaussian.Config(sigma=float("inf")))
    with pytest.raises(CimguardError, match="thg must be a finite number, got nan"):
        check_finite_fields(gaussian.Config(thg=float("nan")), {"thg": "``inf`` disables write-verify"})


def test_allocation_guard_refuses_before_allocating():
    with allocation_guard("m"):
        torch.zeros(10) + torch.ones(10, 1)
    with pytest.raises(CimguardError, match=r"^m: running the model would allocate a tensor of 1099511627776 elements"):
        with allocation_guard("m"):
            torch.full((2**20, 2**20), 1.0)
    with pytest.raises(CimguardError, match="elements"):
        with allocation_guard("m"):
            torch.ones(2**16, 1) @ torch.ones(1, 2**16)
    with pytest.raises(CimguardError, match="elements"):
        with allocation_guard("m"):
            torch.ones(1).expand(2**30)


def test_read_npz_refuses_members_before_np_load_allocates(tmp_path):
    good = tmp_path / "a.npz"
    np.savez(good, x=np.ones((3, 2), np.float32))
    assert read_npz(good)["x"].shape == (3, 2)
    with pytest.raises(CimguardError, match="object"):
        objects = tmp_path / "o.npz"
        np.savez(objects, x=np.array([{}], dtype=object))
        read_npz(objects)


# -- model types cimguard supports --------------------------------------------------------------------


def _token_model(path, ids_type=TensorProto.INT64):
    """ids [batch, 8] int64 -> Gather on an embedding initializer -> mean -> Gemm: an embedding classifier."""
    rng = np.random.default_rng(0)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["emb", "ids"], ["e"]),
         helper.make_node("ReduceMean", ["e"], ["m"], axes=[1], keepdims=0),
         helper.make_node("Gemm", ["m", "W", "b"], ["y"], transB=1, name="fc")],
        "tokens", [helper.make_tensor_value_info("ids", ids_type, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(rng.normal(0, 1, (50, 16)).astype(np.float32), "emb"),
         numpy_helper.from_array(rng.normal(0, 0.3, (10, 16)).astype(np.float32), "W"),
         numpy_helper.from_array(np.zeros(10, np.float32), "b")])
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    return path


def test_integer_token_inputs_stay_integers_and_only_float_weights_are_perturbed(invoke, tmp_path):
    model = _token_model(tmp_path / "tokens.onnx")
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 50, (40, 8))
    data = tmp_path / "tokens.npz"
    np.savez(data, x=ids, y=rng.integers(0, 10, 40), x_train=ids, y_train=rng.integers(0, 10, 40))
    result = invoke("evaluate", "--model", model, "--data", data, "--samples", "2", "--verify")
    assert result.exit_code == 0, result.output
    assert "1 layers" in result.output  # the Gemm; the embedding table is not a crossbar weight
    out = tmp_path / "hard.onnx"
    result = invoke("harden", model, "--data", data, "--trainer", "noise", "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    exported = {t.name: numpy_helper.to_array(t) for t in onnx.load(out).graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(model).graph.initializer}
    assert np.array_equal(exported["emb"], original["emb"]) and not np.array_equal(exported["W"], original["W"])
    floats = tmp_path / "floats.npz"
    np.savez(floats, x=ids + 0.5)
    result = invoke("evaluate", "--model", model, "--data", floats)
    assert result.exit_code == 1 and "token ids" in result.output


def test_token_ids_that_do_not_fit_the_input_type_are_refused_not_wrapped(invoke, tmp_path):
    model = _token_model(tmp_path / "tokens32.onnx", TensorProto.INT32)
    wide = tmp_path / "wide.npz"
    np.savez(wide, x=np.full((4, 8), 2**32 + 5, np.int64))  # a cast to int32 would make it token 5
    result = invoke("evaluate", "--model", model, "--data", wide, "--samples", "1")
    assert result.exit_code == 1 and "outside int32" in result.output, result.output
    huge = tmp_path / "huge.npz"
    np.savez(huge, x=np.full((4, 8), 2**64 - 1, np.uint64))
    result = invoke("evaluate", "--model", model, "--data", huge, "--samples", "1")
    assert result.exit_code == 1 and "integers above" in result.output, result.output


def test_stacked_chips_that_cannot_run_fall_back_to_the_one_chip_loop(setup, monkeypatch):
    from cimguard.sim import evaluate

    one = evaluate.monte_carlo(setup.crossbar, setup.data, 5, seed=3, progress=False, chips_per_pass=1)

    def cannot_stack(*args, **kwargs):
        raise RuntimeError("vmap: an op that cannot be batched over weights")

    monkeypatch.setattr(evaluate, "stacked_weights_accuracy", cannot_stack)
    stacked = evaluate.monte_carlo(setup.crossbar, setup.data, 5, seed=3, progress=False, chips_per_pass=2)
    assert stacked.accuracies == one.accuracies


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_float16_and_float64_models_evaluate_attack_and_harden(invoke, tmp_path, dtype):
    model = tmp_path / "m.onnx"
    model.write_bytes(gemm(dtype=dtype).SerializeToString())
    fast = ("--max-samples", "40")
    assert invoke("evaluate", "--model", model, *fast, "--samples", "2", "--verify").exit_code == 0
    result = invoke("attack", "--model", model, *fast, "--samples", "0", "--iterations", "2", "--thg", "0.03")
    assert result.exit_code == 0, result.output
    out = tmp_path / "h.onnx"
    result = invoke("harden", model, *fast, "--trainer", "noise", "--epochs", "1", "-o", out)
    assert result.exit_code == 0, result.output
    weight = next(t for t in onnx.load(out).graph.initializer if t.name == "W")
    assert weight.data_type == helper.np_dtype_to_tensor_dtype(np.dtype(dtype))  # written back in its own type
    assert invoke("inspect", model).exit_code == 0


def test_the_largest_seed_works_in_every_command(invoke, tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(gemm().SerializeToString())
    top = str(2**64 - 1)
    fast = ("--model", model, "--max-samples", "20")
    assert invoke("evaluate", *fast, "--samples", "2", "--seed", top).exit_code == 0
    assert invoke("attack", *fast, "--samples", "2", "--iterations", "1", "--thg", "0.03", "--seed", top).exit_code == 0
    assert invoke("harden", model, "--max-samples", "20", "--trainer", "noise", "--epochs", "1", "--seed", top,
                  "-o", tmp_path / "h.onnx").exit_code == 0
    assert invoke("inspect", model, "--seed", top).exit_code == 0


# -- I/O failures, warnings, the user's home ----------------------------------------------------------


@pytest.mark.parametrize("code, message", [(errno.ENOSPC, "no space left on the device"),
                                           (errno.EFBIG, "file too large (file-size limit reached)")])
def test_disk_full_and_file_size_limits_are_one_line_and_leave_nothing(invoke, tmp_path, monkeypatch, code, message):
    import cimguard.report

    def full(path, record):
        raise OSError(code, os.strerror(code), str(path))

    monkeypatch.setattr(cimguard.report, "write_json", full)
    result = invoke("evaluate", "--samples", "2", "--max-samples", "20", "--json", tmp_path / "r.json")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1] == f"Error: I/O error {tmp_path / 'r.json'}: {message}"
    assert list(tmp_path.iterdir()) == []


def test_library_warnings_never_print_before_the_error(invoke, monkeypatch):
    import cimguard.api

    def warn_then_fail(*args, **kwargs):
        warnings.warn("overflow encountered", RuntimeWarning)
        warnings.warn("a torch thing", UserWarning)
        raise CimguardError("the real problem")

    monkeypatch.setattr(cimguard.api, "load_dataset", warn_then_fail)
    result = invoke("evaluate")
    assert result.exit_code == 1 and result.output == "Error: the real problem\n"


def test_a_run_writes_nothing_under_home_and_stdout_errors_are_one_line(tmp_path):
    model = tmp_path / "m.onnx"
    model.write_bytes(gemm().SerializeToString())
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"} | {"HOME": str(home)}
    with open(os.devnull, "w") as devnull:
        ok = subprocess.run([sys.executable, "-m", "cimguard", "inspect", str(model)], env=env, stdout=devnull,
                            stderr=subprocess.PIPE, text=True)
    assert ok.returncode == 0, ok.stderr
    assert list(home.iterdir()) == []  # onnxruntime's telemetry cache went to a private folder, now removed
    if os.path.exists("/dev/full"):
        with open("/dev/full", "w") as full:
            failed = subprocess.run([sys.executable, "-m", "cimguard", "inspect", str(model)], env=env, stdout=full,
                                    stderr=subprocess.PIPE, text=True)
        assert failed.returncode == 1
        assert failed.stderr.strip().splitlines() == ["Error: I/O error: no space left on the device"]
