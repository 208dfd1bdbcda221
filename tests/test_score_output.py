"""Which output is the answer (``--output NAME``, ``output=``), and one way to name the model (MODEL or --model)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from onnx import TensorProto, helper

import cimguard
from cimguard.errors import CimguardError
from cimguard.onnx.model import output_paths
from tests.onnx_builders import two_output_model

SMALL = ("--samples", "0", "--max-samples", "40")
#: Every command that scores a model, with what it needs besides the model to run briefly.
COMMANDS = {
    "evaluate": ("evaluate", *SMALL),
    "attack": ("attack", *SMALL, "--iterations", "1"),
    "compare": ("compare", *SMALL, "--iterations", "1"),
    "harden": ("harden", "--trainer", "noise", "--epochs", "1", "--max-samples", "40"),
}


def _one_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("Error: ") and sum(line.startswith("Error: ") for line in lines) == 1, result.output
    assert "internal error" not in lines[-1]
    return lines[-1]


def _run(invoke, tmp_path, command: str, model, *extra: str):
    args = list(COMMANDS[command])
    args.insert(1, str(model))
    if command == "harden":
        args += ["-o", str(tmp_path / f"h{len(list(tmp_path.iterdir()))}.onnx")]
    return invoke(*args, *extra)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_an_output_no_weight_reaches_is_refused_in_one_line_and_output_picks_the_scores(invoke, tmp_path, command):
    # The first output is the predicted class as floats, shaped like scores: once an internal error in attack.
    model = two_output_model(tmp_path / "two.onnx", "onehot")
    error = _one_error(_run(invoke, tmp_path, command, model))
    assert "output 'onehot' does not depend on any crossbar weight" in error and "--output NAME" in error
    flag = "--score-output" if command == "harden" else "--output"
    result = _run(invoke, tmp_path, command, model, flag, "scores")
    assert result.exit_code == 0, result.output


def test_a_label_output_is_refused_before_anything_runs(invoke, tmp_path):
    model = two_output_model(tmp_path / "two.onnx", "label")
    for command in ("evaluate", "attack"):
        error = _one_error(_run(invoke, tmp_path, command, model))
        assert "output 'label' has shape [?]; cimguard needs the class scores as [batch, classes]" in error
    assert invoke("inspect", model).exit_code == 0  # inspect describes any file
    assert "output 'label' has shape [?]" in _one_error(invoke("inspect", model, "--output", "label"))
    assert invoke("inspect", model, "--output", "scores").exit_code == 0
    assert "has no output 'logits'; its outputs are 'label', 'scores'" in _one_error(
        invoke("evaluate", model, "--output", "logits", *SMALL))


def test_the_picked_output_scores_like_a_single_output_model(invoke, tmp_path):
    model = two_output_model(tmp_path / "two.onnx", "label")
    out = tmp_path / "e.json"
    assert invoke("evaluate", model, "--output", "scores", "--samples", "3", "--max-samples", "60",
                  "--json", out).exit_code == 0
    report = json.loads(out.read_text())
    assert report["setup"]["score_output"] == "scores"
    setup = cimguard.setup(str(model), output="scores", max_samples=60)
    result = setup.evaluate(samples=3, seed=0)
    assert report["clean_accuracy"] == result.clean_accuracy and report["float_accuracy"] == result.float_accuracy
    # The scores the crossbar reads are the file's 'scores' output (onnxruntime's), not its first.
    from cimguard.onnx.runtime import run_onnxruntime_all

    x = setup.data.x[:5]
    reference = run_onnxruntime_all(setup.imported.onnx_model, {"x": x.numpy()})[1]
    np.testing.assert_allclose(setup.crossbar.logits(x, None).numpy(), reference, rtol=0, atol=0.05)
    with pytest.raises(CimguardError, match="has no output 'nope'"):
        cimguard.setup(str(model), output="nope")


def test_output_paths_follow_onnx2torch_results():
    def graph(nodes, outputs):
        return helper.make_model(helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs]))

    relu = helper.make_node("Relu", ["x"], ["a"])
    split = helper.make_node("Split", ["x"], ["s0", "s1"], axis=1, num_outputs=2)
    assert output_paths(graph([relu], ["a"])) == ((),)
    assert output_paths(graph([split], ["s1", "s0"])) == ((1,), (0,))
    assert output_paths(graph([relu, split], ["s1", "a", "s0"])) == ((0, 1), (1,), (0, 0))


@pytest.mark.parametrize("command", ["evaluate", "attack"])
def test_model_positional_or_option_is_the_same_and_both_is_an_error(invoke, default_model_path, command):
    base = list(COMMANDS[command])
    positional = invoke(base[0], default_model_path, *base[1:])
    option = invoke(base[0], "--model", default_model_path, *base[1:])
    assert positional.exit_code == option.exit_code == 0, positional.output + option.output
    assert positional.output == option.output
    error = _one_error(invoke(base[0], default_model_path, "--model", default_model_path, *base[1:]))
    assert "the model is given twice" in error


def test_harden_and_inspect_take_model_as_an_option_too(invoke, default_model_path, tmp_path):
    result = invoke("harden", "--model", default_model_path, *COMMANDS["harden"][1:], "-o", tmp_path / "h.onnx")
    assert result.exit_code == 0, result.output
    assert f"model    {default_model_path}" in result.output
    assert invoke("inspect", "--model", default_model_path).output == invoke("inspect", default_model_path).output


def test_replay_scores_the_output_the_perturbation_was_found_on(invoke, tmp_path):
    model = two_output_model(tmp_path / "two.onnx", "onehot")
    saved = tmp_path / "worst.npz"
    assert _run(invoke, tmp_path, "attack", model, "--output", "scores", "--save-perturbation", saved).exit_code == 0
    result = invoke("attack", "--replay", saved)  # the model and its --output come from the saved metadata
    assert result.exit_code == 0, result.output
    assert f"worst case in the device's box on {model}" in result.output


def test_outputs_of_one_node_are_checked_and_scored_in_the_files_order(invoke, tmp_path):
    # Two of three outputs come from one Split: the check compares each with onnxruntime's (it once saw
    # two torch results for three outputs and called the conversion inexact), and --output picks 'high'.
    from tests.onnx_builders import split_outputs_model

    model = split_outputs_model(tmp_path / "split.onnx")
    assert "conversion  exact" in invoke("inspect", model).output
    result = invoke("evaluate", model, *SMALL)
    assert result.exit_code == 0 and "check   conversion checked against onnxruntime" in result.output
    setup = cimguard.setup(str(model), output="high", label_free=True, max_samples=20)
    x = setup.data.x[:4]
    from cimguard.onnx.runtime import run_onnxruntime_all

    high = run_onnxruntime_all(setup.imported.onnx_model, {"x": x.numpy()})[2]
    np.testing.assert_allclose(setup.imported.scores(setup.imported.module(x)).numpy(), high, rtol=1e-5, atol=1e-6)
