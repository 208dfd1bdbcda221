"""Per-layer sensitivity: how far the worst case drops accuracy when only one layer is perturbed.

For every mapped layer, a solver (built by the caller) searches the worst chip whose
perturbation is confined to that layer (every other layer's box has bound 0), and
the core checks the answer as usual.  A layer whose own worst case costs the most
accuracy is the one to protect first (tighter write-verify, more bits, hardening).
This measures each layer's damage *alone*; it is not an attribution of the joint
worst case, whose layers interact.
"""

from __future__ import annotations

from dataclasses import dataclass

from cimguard.sim.crossbar import Crossbar
from cimguard.sim.evaluate import EvalData, accuracy
from cimguard.sim.solve import Solver
from cimguard.sim.worst_case import make_problem, run_checked


@dataclass(frozen=True)
class LayerSensitivity:
    """The worst case of one layer on its own."""

    layer: str
    """ONNX initializer name of the mapped weight (as ``inspect`` names it)."""
    node: str
    """ONNX node that consumes it."""
    op_type: str
    """ONNX layer kind (Conv, Gemm, MatMul)."""
    weights: int
    """Number of weights in the layer."""
    accuracy: float
    """Accuracy (or agreement) of the worst chip perturbed in this layer only."""
    drop: float
    """Clean accuracy minus ``accuracy``."""
    interrupted: bool = False
    torch_name: str = ""
    """Name of the weight in the converted torch module."""


def layer_sensitivity(
    crossbar: Crossbar,
    data: EvalData,
    thg: float | None,
    solver: Solver,
    seed: int = 0,
    *,
    progress: bool = False,
) -> list[LayerSensitivity]:
    """Every layer's isolated worst case at ``thg`` (``None``: the device's own box), most damaging first.

    Stops after the layer being searched when the search is interrupted (Ctrl-C).
    """
    clean = accuracy(crossbar, data)
    rows = []
    for name, layer in crossbar.layers.items():
        run = run_checked(solver, make_problem(crossbar, data, thg, layers=(name,)), seed, progress=progress)
        rows.append(
            LayerSensitivity(layer.weight.initializer, layer.weight.node, layer.weight.op_type, layer.nominal.numel(),
                             run.accuracy, clean - run.accuracy, run.worst.interrupted, name)
        )
        if run.worst.interrupted:
            break
    return sorted(rows, key=lambda row: (row.accuracy, row.layer))
