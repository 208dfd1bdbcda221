"""The ONNX node conformance suite (``onnx.backend.test.case.node``), in both forms.

Every numeric case of the suite (``tests/node_suite.py``), as written and with every input
after the first an initializer, must end one of two ways: its outputs match the case's
reference outputs (rtol 1e-3, atol 1e-5, NaN equal to NaN), or cimguard refuses it with a
one-line error naming the operator.  A wrong result, or a module that fails at run time, is
a failure.  The operators that published vision, language, audio and recurrent networks use
(:data:`REQUIRED`) must match in every case.  The counts are printed at the end of the run
(``tests/conftest.py``); ``benchmarks/bench_node_suite.py`` sets them beside onnxruntime and
plain onnx2torch.
"""

from __future__ import annotations

import warnings

import onnx
import pytest

from cimguard.errors import CimguardError
from tests.node_suite import FORMS, NodeCase, mismatch, node_cases, run_torch

#: Operators every case of which must convert and match (issue 19's list).
REQUIRED = frozenset({
    "LayerNormalization", "GroupNormalization", "RMSNormalization", "InstanceNormalization",
    "MeanVarianceNormalization", "LpNormalization", "Attention", "RotaryEmbedding", "Trilu", "CumSum", "CumProd",
    "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool", "LpPool", "SpaceToDepth", "DepthToSpace", "Resize",
    "ConvTranspose", "LSTM", "GRU", "RNN", "Einsum", "TopK", "Scatter", "ScatterElements", "ScatterND", "Gather",
    "GatherElements", "GatherND", "Compress", "Hardmax", "Mish", "Swish", "Selu", "Shrink", "ThresholdedRelu",
    "Sinh", "Cosh", "Tanh", "Asinh", "Acosh", "Atanh", "Cast", "CastLike", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Clip",
    "Split", "IsInf", "BatchNormalization",
})
#: Element types refused on purpose (torch has no arithmetic for them), so not required.
_NO_ARITHMETIC = ("uint16", "uint32", "uint64")
#: Outcome per case key (``form:name``) that ran: "match", "refused" or "failed"; read by the summary in conftest.
OUTCOMES: dict[str, str] = {}

CASES: dict[str, NodeCase] = {case.key: case for form in FORMS for case in node_cases(form)}


def _required(case: NodeCase) -> bool:
    """A single node of a required operator, on element types torch computes."""
    types = {str(x.dtype) for x in (*case.inputs, *case.outputs)}
    types |= {str(onnx.helper.tensor_dtype_to_np_dtype(t.data_type)) for t in case.model.graph.initializer}
    return set(case.operators) <= REQUIRED and len(case.model.graph.node) == 1 and not types & set(_NO_ARITHMETIC)


@pytest.mark.parametrize("key", sorted(CASES))
def test_node_case_matches_or_is_refused_in_one_line(key):
    from cimguard.onnx.model import convert_model

    case = CASES[key]
    OUTCOMES[key] = "failed"  # until it ends one of the two allowed ways
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            module = convert_model(case.model)
        except CimguardError as exc:
            message = str(exc)
            OUTCOMES[key] = "refused"
            assert "\n" not in message, message
            assert any(op in message for op in case.operators), f"the refusal names no operator: {message}"
            assert not _required(case), f"required operator refused: {message}"
            return
        results = run_torch(module, case.inputs, float32=True)
    problem = mismatch(case.outputs, results)
    assert problem is None, f"{key} {case.operators}: wrong result: {problem}"
    OUTCOMES[key] = "match"
