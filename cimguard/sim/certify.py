"""Certified worst case: a per-sample proof that no chip inside the box changes the prediction.

The box is the one the solvers search (:func:`cimguard.sim.worst_case.make_problem`): every mapped
weight ``W_q + ΔW`` with ``|ΔW| <= R`` elementwise, every mapped layer at once, the input exact.
A sample is *certified* when a sound lower bound of its margin ``z_y - z_j`` (every ``j != y``;
``y`` the label, or the clean prediction in label-free mode) is positive over the whole box.

Two methods walk the converted torch.fx graph with one rule per operator:

* ``interval``: interval bound propagation.  A mapped layer's output ``(W + ΔW)·a`` is bounded by
  the exact product of the weight interval ``[W - R, W + R]`` and the input interval.
* ``crown``: backward linear bounds (CROWN, Zhang et al. 2018) over the weight box.  For a
  backward coefficient ``Λ`` on a mapped layer's output, ``Λ·(W + ΔW)·a >= Λ·W·a - (|Λ|·R)·|a|``
  for every ``ΔW`` in the box (the minimum over the box, exact for a fixed ``a``), and ``-|a|`` is
  bounded below by its chord over the input's bounds (exact when the sign of ``a`` is known,
  e.g. after a ReLU, and for the exact input).  The nominal part goes through the backward pass
  exactly; the margin specification is folded into the last layer's pass, so on one linear layer
  the bound is the closed form ``(w_y - w_j)·x + b_y - b_j - (r_y + r_j)·|x|``.  Intermediate
  bounds (the inputs of every non-linear operator) are CROWN bounds intersected with the interval
  ones, computed layer by layer and reused.

:func:`certify` runs ``crown`` as a cascade of passes, each a sound bound on its own and each run only on
the samples the cheaper ones before it left: intervals; the margin's backward pass over interval
intermediate bounds; the same keeping every convolution's weight sharing; then CROWN-refined intermediate
bounds, spent only where they can matter (the unstable inputs of a ReLU; never a ReLU's output, whose
interval image of refined bounds is already as tight).

``joint`` is ``crown`` and then, for the samples it leaves, a bound on how many of them one chip can
misclassify at once (:mod:`cimguard.sim.joint`), from CROWN bounds kept linear in the chip
(:meth:`_Run.linear_in_weights`).

Bounds are computed in float64 and a sample counts as certified only when its margin bound exceeds
:data:`MARGIN_TOLERANCE` times the clean logits' scale, so float32 rounding of the real chip cannot
flip a sample the proof calls safe.  An operator without a sound rule is a one-line
:class:`CimguardError` naming it, never a number.
"""

from __future__ import annotations

import math
import operator
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from cimguard import distributed
from cimguard.errors import CimguardError
from cimguard.progress import progress_bar
from cimguard.sim.crossbar import Crossbar
from cimguard.sim.evaluate import EvalData, local_part
from cimguard.sim import joint as joint_bound
from cimguard.sim.joint import JointBound, JointRows, solve
from cimguard.sim.worst_case import make_problem

METHODS: tuple[str, ...] = ("interval", "crown", "joint")
"""The certification methods: interval bound propagation, CROWN-style linear bounds (both per sample), and
``joint``: crown, then a bound on how many of the samples it leaves one chip can misclassify
(:mod:`cimguard.sim.joint`)."""

#: ``joint`` keeps one row of ``n`` floats per open (sample, class) pair, ``n`` the mapped weights: above this
#: many elements in all it skips its pair test (every open sample counts as misclassified, the per-sample
#: bound again).  It is meant for networks up to a few hundred thousand weights.
JOINT_ELEMENT_LIMIT = 1 << 25

#: A margin bound must exceed this times ``1 + max |clean logit|`` to certify a sample (float32 chips).
MARGIN_TOLERANCE = 1e-5

#: crown refines the intermediate bounds only of samples whose margin bound (over ``1 + max |clean logit|``)
#: is at least ``-REFINE_WITHIN`` after the cheaper passes: refinement moves that relative bound by a few
#: hundredths on the shipped LeNet, so samples far below zero would cost the dearest pass for no
#: certificate.  A budget, not a soundness matter: a skipped sample is merely not proved.
REFINE_WITHIN = 0.1

#: Elements of the largest backward coefficient tensor held at once (float64: 8 bytes each).
_COEFFICIENT_BUDGET = 1 << 24

# ONNX operators onnx2torch turns into modules, by class name: exactly positive-linear (plus a constant)
# in their input-dependent arguments, so intervals map through them monotonically.
_POSITIVE_AFFINE = {
    "Flatten", "OnnxFlatten", "OnnxReshape", "OnnxReshapeAllowZero", "AvgPool1d", "AvgPool2d", "AvgPool3d",
    "AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AdaptiveAvgPool3d", "OnnxGlobalAveragePool",
    "OnnxGlobalAveragePoolWithKnownInputShape", "OnnxAveragePool", "OnnxConcat", "OnnxTranspose",
    "OnnxSqueezeStaticAxes", "OnnxSqueezeDynamicAxes", "OnnxUnsqueezeStaticAxes", "OnnxUnsqueezeDynamicAxes",
    "OnnxSlice", "OnnxSliceV9", "Identity", "OnnxCopyIdentity", "Dropout", "OnnxPadStatic",
    "OnnxSum", "OnnxMean",
}
_ACTIVATIONS = {"ReLU": "relu", "LeakyReLU": "leaky_relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "GELU": "gelu"}
_FUNCTION_ACTIVATIONS = {torch.relu: "relu", F.relu: "relu", torch.sigmoid: "sigmoid", torch.tanh: "tanh"}
_SOFTMAX = {"Softmax", "LogSoftmax", "OnnxSoftmaxV1V11"}

# sup |f''| of the smooth activations: the grid bound of :func:`_smooth_lines` needs it.
_CURVATURE = {"sigmoid": 1 / (6 * math.sqrt(3)) + 1e-6, "tanh": 4 / (3 * math.sqrt(3)) + 1e-6,
              "gelu": 2 / math.sqrt(2 * math.pi) + 1e-6}
_GELU_MIN_AT = -0.7517915246935645  # GELU's one minimum (f' = 0), for its interval rule
_GRID = 65
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: A convolution whose (outputs × inputs) matrix has at most this many entries goes backward as a matrix.
_DENSE_LIMIT = 1 << 22
_LAYERS = (nn.Linear, *_CONVS)


@dataclass
class Certificate:
    """Which samples are proved safe against every chip in one box."""

    method: str
    thg: float | None
    """The swept threshold; ``None`` for the device's own box."""
    certified: list[int]
    """Indices (into the evaluation set) of the samples proved one at a time (no chip of the box flips them)."""
    samples: int
    seconds: float
    metric: str = "accuracy"
    joint: JointBound | None = None
    """``joint`` only: the proved bound on how many of the other samples one chip misclassifies."""

    @property
    def per_sample_accuracy(self) -> float:
        """The fraction of samples proved one at a time: a lower bound on every chip's accuracy."""
        return len(self.certified) / self.samples if self.samples else 0.0

    @property
    def accuracy(self) -> float:
        """Certified accuracy: a lower bound on the accuracy of every chip in the box (per sample, or with
        ``joint`` the samples not proved less the most of them one chip can misclassify)."""
        if self.joint is None or not self.samples:
            return self.per_sample_accuracy
        return (self.samples - self.joint.flips) / self.samples

    def to_dict(self) -> dict[str, Any]:
        """Plain data (``points[].certified`` of the ``attack`` report)."""
        record = {"method": self.method, "accuracy": self.accuracy, "seconds": self.seconds,
                  "samples": list(self.certified)}
        if self.joint is not None:
            record["per_sample_accuracy"] = self.per_sample_accuracy
            record["joint"] = {"flips": self.joint.flips, "found": self.joint.found,
                               "open_samples": self.joint.open_samples, "rows": self.joint.rows,
                               "optimal": self.joint.optimal, "skipped": self.joint.skipped}
        return record

    def table(self) -> str:
        box = "in the device's box" if self.thg is None else f"at thg {self.thg:g}"
        line = (f"certified {self.metric} ({self.method}) {box}: {self.accuracy:.4f} "
                f"({len(self.certified)} of {self.samples} samples proved one at a time")
        if self.joint is not None and self.joint.skipped:
            line += f"; the other {self.joint.open_samples} too many for the joint bound"
        elif self.joint is not None:
            line += f"; one chip misclassifies at most {self.joint.flips} of the other {self.joint.open_samples}"
        return line + f", {self.seconds:.1f} s)"

    def __str__(self) -> str:
        return self.table()


def check_method(method: str) -> str:
    if method not in METHODS:
        raise CimguardError(f"unknown certification method {method!r}; choose from {', '.join(METHODS)}")
    return method


def check_certifiable(crossbar: Crossbar, method: str) -> None:
    """Refuse an unknown method or a graph with an operator the certifier has no rule for, before any work."""
    check_method(method)
    BoundGraph(crossbar.imported.module, set(crossbar.layers))


def certify(crossbar: Crossbar, data: EvalData, thg: float | None = None, method: str = "crown", *,
            batch_size: int | None = None, progress: bool = False) -> Certificate:
    """Certify every sample of ``data`` against the box at ``thg`` (``None``: the device's own box).

    The box is exactly the solvers' (:func:`cimguard.sim.worst_case.make_problem`).  Under torchrun
    each rank certifies its share of the samples; the certified flags are summed.
    """
    check_method(method)
    start = time.perf_counter()
    problem = make_problem(crossbar, data, thg)
    graph = BoundGraph(crossbar.imported.module, set(crossbar.layers))
    graph.dense_cache = {}
    # In float64 once, so every batch's run sees the same tensors (and reuses their dense matrices).
    weights = {name: layer.nominal.to(torch.float64) for name, layer in crossbar.layers.items()}
    radii = {name: bound.to(torch.float64) for name, bound in problem.bounds.items()}
    part = local_part(data)
    offset = distributed.local_slice(len(data.labels)).start if distributed.active() else 0
    flags = torch.zeros(len(data.labels), dtype=torch.float64, device=data.labels.device)
    open_classes = torch.zeros(len(part.labels), dtype=torch.long)
    best = torch.full((len(part.labels),), -math.inf, dtype=torch.float64)  # best bound / logit scale so far
    with torch.no_grad():  # the clean logits' scale, once for every pass
        tolerances = torch.cat([MARGIN_TOLERANCE * (1 + crossbar.logits(part.x[i:i + 256]).abs().amax(dim=1).double())
                                for i in range(0, len(part.labels), 256)]) if len(part.labels) else torch.zeros(0)
    # crown in four passes, each sound on its own (a sample counts when any proves it), each tighter and dearer
    # than the last and run only on the samples the previous ones left: intervals; the margin's backward pass
    # over interval intermediate bounds with the plain |Λ|·R·|a| term on computed inputs; the same keeping every
    # convolution's weight sharing; then with CROWN-refined intermediate bounds too (small batches: each pads its
    # rows to its most unstable sample).
    passes = [("interval", False, True, batch_size or 256)]
    if method in ("crown", "joint"):
        passes += [("crown", False, False, batch_size or 64), ("crown", False, True, batch_size or 64),
                   ("crown", True, True, batch_size or 8)]
    with torch.no_grad():
        for kind, refine, share, size in passes:
            left = torch.nonzero(flags[offset:offset + len(part.labels)] < 0.5).flatten().to(part.labels.device)
            if refine:
                # Refinement only where it can still close the gap (a budget, never a soundness matter).
                left = left[(best[left.to(best.device)] >= -REFINE_WITHIN).to(left.device)]
            if kind == "crown":
                # Samples with as many open classes (interval bound not positive) share a batch: each batch
                # pads its rows to its widest sample.
                left = left[torch.sort(open_classes[left.to(open_classes.device)], stable=True).indices.to(left.device)]
            starts = range(0, len(left), size)
            detail = (", shared" if share and kind == "crown" else "") + (", refined" if refine else "")
            stage = f"certifying ({kind}{detail})"
            bar = progress_bar(len(starts), stage, "batch", progress)
            for begin in starts:
                index = left[begin:begin + size]
                x, y = part.x[index], part.labels[index]
                if kind == "interval":
                    gaps = graph.margin_bounds(weights, radii, x, y, kind, dtype=torch.float64)
                    gaps = gaps.masked_fill(F.one_hot(y.to(gaps.device), gaps.shape[1]).bool(), math.inf)
                    open_classes[index.to(open_classes.device)] = (gaps <= 0).sum(dim=1).to(open_classes.device)
                    bound = gaps.amin(dim=1)
                else:
                    bound = graph.margin_lower_bound(weights, radii, x, y, kind, dtype=torch.float64,
                                                     refine=refine, share=share)
                tolerance = tolerances[index.to(tolerances.device)]
                where = index.to(best.device)
                best[where] = torch.maximum(best[where], (bound / tolerance.to(bound.device) * MARGIN_TOLERANCE).cpu())
                flags[offset + index.to(flags.device)] = (bound > tolerance.to(bound.device)).double().to(flags.device)
                bar.update()
            bar.close()
    joint = None
    if method == "joint":
        left = torch.nonzero(flags[offset:offset + len(part.labels)] < 0.5).flatten()
        rows = _joint_rows(graph, crossbar, weights, radii, part, left, offset, tolerances, batch_size or 8,
                           progress)
        parts = distributed.gather_objects(rows)
        if any(part_rows is None for part_rows in parts):  # too many rows somewhere: no pair test
            (open_samples,) = distributed.all_reduce_sum([torch.tensor(float(len(left)))])
            joint = JointBound.every_open_sample(int(open_samples), 0)
        else:
            rows = _merge_rows(parts)
            proved = torch.as_tensor(sorted(set((offset + left).tolist()) - set(rows.owners.tolist())),
                                     dtype=torch.long)
            flags[proved.to(flags.device)] = 1.0  # the centred split proved these on its own
            joint = distributed.from_main(lambda: solve(rows))
    if distributed.active():
        (flags,) = distributed.all_reduce_sum([flags])
        flags = flags.clamp(max=1.0)
    certified = [int(i) for i in torch.nonzero(flags.cpu() > 0.5).flatten()]
    return Certificate(method, None if problem.device_box else problem.thg, certified, len(data.labels),
                       time.perf_counter() - start, "agreement" if data.label_free else "accuracy", joint)


def _joint_rows(graph: BoundGraph, crossbar: Crossbar, weights: Mapping[str, torch.Tensor],
                radii: Mapping[str, torch.Tensor], part: EvalData, left: torch.Tensor, offset: int,
                tolerances: torch.Tensor, size: int, progress: bool) -> JointRows | None:
    """The linear bounds (in ``u = ΔW / R``) of every (sample, class) pair of ``left`` that no sound bound here
    rules out: the inputs of :func:`cimguard.sim.joint.solve`.  ``None`` when they would hold more than
    :data:`JOINT_ELEMENT_LIMIT` floats or the pair test would cost more than its budget."""
    names = list(crossbar.layers)
    width = sum(radii[name].numel() for name in names)
    constants, gradients, owners = [], [], []
    bar = progress_bar(len(range(0, len(left), size)), "certifying (joint rows)", "batch", progress)
    for begin in range(0, len(left), size):
        index = left[begin:begin + size].to(part.labels.device)
        x, y = part.x[index].to(torch.float64), part.labels[index]
        run = _Run(graph, weights, radii, x, torch.float64, "crown", refine=True, share=True)
        tolerance = tolerances[index.to(tolerances.device)].to(x.device)
        classes = run.lower[graph.output].shape[1]
        wanted = (run.margin(y) <= tolerance[:, None]) & ~F.one_hot(y.to(x.device), classes).bool()
        rows = int(wanted.sum(dim=1).max()) if len(y) else 0
        if rows == 0:
            bar.update()
            continue
        others = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :rows]
        valid = wanted.gather(1, others)
        count = len(owners) + int(valid.sum())
        if count * width > JOINT_ELEMENT_LIMIT or count * count * width > joint_bound.PAIR_BUDGET:
            bar.close()  # the pair test would be skipped anyway: stop before computing the rest
            return None
        true = F.one_hot(y.to(x.device), classes).to(torch.float64)
        spec = true.unsqueeze(1) - F.one_hot(others, classes).to(torch.float64)
        constant, coefficient = run.linear_in_weights(graph.output, spec)
        # In units of the box: u = ΔW / R, so the row's coefficient is G·R.
        scaled = torch.cat([(coefficient[name] * radii[name]).flatten(2) if name in coefficient else
                            torch.zeros(*spec.shape[:2], radii[name].numel(), dtype=torch.float64, device=x.device)
                            for name in names], dim=2)
        constant = constant - tolerance[:, None]
        keep = valid & (constant - scaled.abs().sum(dim=2) <= 0)  # rows the centred split proves are dropped
        for sample, row in torch.nonzero(keep).tolist():
            constants.append(float(constant[sample, row]))
            gradients.append(scaled[sample, row].cpu().numpy())
            owners.append(offset + int(index[sample]))
        bar.update()
    bar.close()
    return JointRows(np.asarray(constants, dtype=np.float64),
                     np.stack(gradients) if gradients else np.zeros((0, width)),
                     np.asarray(owners, dtype=np.int64))


def _merge_rows(parts: list[JointRows]) -> JointRows:
    """The rows of every rank, in rank order (each rank holds its own samples' rows)."""
    return JointRows(np.concatenate([p.constants for p in parts]), np.concatenate([p.gradients for p in parts]),
                     np.concatenate([p.owners for p in parts]))


# --- the graph ----------------------------------------------------------------------------------------


@dataclass
class _Rule:
    """How one input-dependent fx node is bounded."""

    node: fx.Node
    kind: str
    """``input``, ``linear``, ``act``, ``maxpool``, ``affine`` (positive), ``signed`` (signed affine)."""
    deps: list[fx.Node] = field(default_factory=list)
    """Its input-dependent arguments."""
    call: Callable[..., torch.Tensor] | None = None
    """The node's own computation, with the input-dependent arguments as parameters (affine kinds)."""
    module: nn.Module | None = None
    weight: str | None = None
    """The torch name of a linear layer's weight (in the crossbar's weights or the module's own)."""
    activation: str = ""
    slope: float = 0.0


def _type_name(target: Any) -> str:
    return getattr(target, "__name__", None) or type(target).__name__


class BoundGraph:
    """A converted model's fx graph with a bound rule for every operator between input and logits."""

    def __init__(self, module: fx.GraphModule, mapped: set[str]) -> None:
        self.module = module
        self.mapped = mapped
        #: Dense layer matrices kept across calls; only :func:`certify` sets it, for its fixed weights.
        self.dense_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.nodes = list(module.graph.nodes)
        inputs = [n for n in self.nodes if n.op == "placeholder"]
        if len(inputs) != 1:
            raise CimguardError(f"cannot certify a model with {len(inputs)} inputs; it needs exactly one")
        self.input = inputs[0]
        output = next(n for n in self.nodes if n.op == "output")
        result = output.args[0]
        while isinstance(result, (tuple, list)):
            result = result[0]
        # A final softmax keeps the argmax: the margin is certified on its input.
        while isinstance(result, fx.Node) and result.op == "call_module" and \
                type(module.get_submodule(result.target)).__name__ in _SOFTMAX:
            result = result.args[0]
        self.output: fx.Node = result
        dependent: set[fx.Node] = {self.input}
        for node in self.nodes:
            if node.op in ("call_module", "call_function", "call_method") and \
                    any(arg in dependent for arg in node.all_input_nodes):
                dependent.add(node)
        needed = self._ancestors(self.output) & dependent
        self.rules: dict[fx.Node, _Rule] = {}
        self.constants = [n for n in self.nodes if n.op not in ("placeholder", "output") and n not in dependent]
        for node in self.nodes:
            if node in needed:
                self.rules[node] = self._rule(node, dependent)
        for name in mapped:
            users = [r for r in self.rules.values() if r.weight == name]
            if not users:
                raise CimguardError(f"cannot certify: the mapped weight {name} is not the weight of a Conv, Gemm or "
                                    "MatMul the certifier walks")
        # A mapped weight read anywhere else would enter there at its nominal value, its ΔW unbounded: refused.
        for node in self.nodes:
            if node.op == "get_attr" and node.target in mapped:
                for user in node.users:
                    rule = self.rules.get(user)
                    if rule is None or rule.weight != node.target or user.args[0] is node:
                        raise CimguardError(f"cannot certify: the mapped weight {node.target} also feeds node "
                                            f"{user.name}")
        self.users: dict[fx.Node, list[fx.Node]] = {n: [] for n in self.rules}
        for node, rule in self.rules.items():
            for dep in rule.deps:
                self.users[dep].append(node)
        # Nodes whose bounds a non-linear operator reads: CROWN refines these.
        self.refined = {dep for rule in self.rules.values() if rule.kind in ("act", "maxpool") for dep in rule.deps}

    @staticmethod
    def _ancestors(node: fx.Node) -> set[fx.Node]:
        return _reachable(node, lambda current: current.all_input_nodes)

    def _refuse(self, node: fx.Node, what: str) -> CimguardError:
        return CimguardError(f"cannot certify: no sound bound rule for operator {what} (node {node.name})")

    def _rule(self, node: fx.Node, dependent: set[fx.Node]) -> _Rule:
        if node is self.input:
            return _Rule(node, "input")
        deps = [arg for arg in node.all_input_nodes if arg in dependent]
        first_arg_only = len(deps) == 1 and bool(node.args) and node.args[0] is deps[0]
        if node.op == "call_module":
            sub = self.module.get_submodule(node.target)
            name = type(sub).__name__
            if isinstance(sub, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not isinstance(sub, nn.modules.conv._ConvTransposeNd):
                if sub.padding_mode != "zeros" or isinstance(sub.padding, str) and sub.padding != "valid":
                    raise self._refuse(node, f"{name} with padding {sub.padding!r} ({sub.padding_mode})")
                if not first_arg_only:
                    raise self._refuse(node, f"{name} with computed weights")
                return _Rule(node, "linear", deps, module=sub, weight=f"{node.target}.weight")
            if isinstance(sub, nn.Linear):
                if not first_arg_only:
                    raise self._refuse(node, name)
                return _Rule(node, "linear", deps, module=sub, weight=f"{node.target}.weight")
            if name == "OnnxMatMul":
                other = node.args[1] if len(node.args) > 1 else None
                if not first_arg_only or not isinstance(other, fx.Node) or other.op != "get_attr":
                    raise self._refuse(node, "MatMul of two computed tensors")
                tensor = self.module.get_buffer(other.target) if other.target in dict(self.module.named_buffers()) \
                    else getattr(self.module, other.target)
                if tensor.dim() != 2:
                    raise self._refuse(node, f"MatMul with a {tensor.dim()}-d weight")
                return _Rule(node, "linear", deps, module=sub, weight=other.target)
            if name == "OnnxFunction" and sub.function in _FUNCTION_ACTIVATIONS and first_arg_only:
                return _Rule(node, "act", deps, activation=_FUNCTION_ACTIVATIONS[sub.function])
            if name in _ACTIVATIONS and first_arg_only:
                kind = _ACTIVATIONS[name]
                if kind == "gelu" and getattr(sub, "approximate", "none") != "none":
                    raise self._refuse(node, f"GELU(approximate={sub.approximate!r})")
                slope = float(getattr(sub, "negative_slope", 0.0))
                if kind == "leaky_relu" and not 0 <= slope <= 1:
                    raise self._refuse(node, f"LeakyReLU with slope {slope:g}")
                return _Rule(node, "act", deps, activation=kind, slope=slope)
            if isinstance(sub, nn.MaxPool2d) and first_arg_only and not sub.return_indices:
                return _Rule(node, "maxpool", deps, module=sub)
            if sub.training and (name == "Dropout" or _is_batch_norm(sub)):
                raise self._refuse(node, f"{name} in training mode")  # random, or batch statistics: not affine
            if name in _POSITIVE_AFFINE:
                if name not in ("OnnxConcat", "OnnxSum", "OnnxMean") and not first_arg_only:
                    raise self._refuse(node, f"{name} with computed shape or index arguments")
                return _Rule(node, "affine", deps, call=self._call(node, deps))
            if name == "OnnxBinaryMathOperation":
                op = _type_name(sub.math_op_function)
                if op == "add":
                    return _Rule(node, "affine", deps, call=self._call(node, deps))
                # Mul/Div is affine only when exactly one operand (the numerator, for Div) is computed: x * x is not.
                computed = [arg for arg in node.args if isinstance(arg, fx.Node) and arg in dependent]
                if op == "sub" or op in ("mul", "_onnx_div") and len(computed) == 1 and \
                        (op == "mul" or node.args[0] is computed[0]):
                    return _Rule(node, "signed", deps, call=self._call(node, deps))
                raise self._refuse(node, f"{op} of computed tensors")
            if name == "OnnxNeg" or _is_batch_norm(sub):
                if not first_arg_only or isinstance(sub, nn.modules.batchnorm._BatchNorm) and sub.running_var is None:
                    raise self._refuse(node, f"{name} with computed parameters")
                return _Rule(node, "signed", deps, call=self._call(node, deps))
            raise self._refuse(node, name)
        if node.op == "call_function":
            if node.target in _FUNCTION_ACTIVATIONS and len(deps) == 1:
                return _Rule(node, "act", deps, activation=_FUNCTION_ACTIVATIONS[node.target])
            if node.target is operator.add or node.target is torch.add and not node.kwargs or \
                    node.target in (torch.flatten, torch.reshape, operator.getitem) and first_arg_only:
                return _Rule(node, "affine", deps, call=self._call(node, deps))
            if node.target is torch.cat:
                return _Rule(node, "affine", deps, call=self._call(node, deps))
            raise self._refuse(node, _type_name(node.target))
        if node.op == "call_method" and node.target in ("view", "reshape", "flatten", "contiguous") and first_arg_only:
            return _Rule(node, "affine", deps, call=self._call(node, deps))
        raise self._refuse(node, str(node.target))

    def _call(self, node: fx.Node, deps: list[fx.Node]) -> Callable[..., torch.Tensor]:
        """``node``'s computation as a function of its input-dependent arguments (constants bound later)."""
        module = self.module

        def call(constants: Mapping[fx.Node, Any], *values: torch.Tensor) -> torch.Tensor:
            env = dict(constants) | dict(zip(deps, values))
            args = fx.node.map_arg(node.args, lambda n: env[n])
            kwargs = fx.node.map_arg(node.kwargs, lambda n: env[n])
            if node.op == "call_module":
                return _call_module(module.get_submodule(node.target), args, kwargs)
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            return getattr(args[0], node.target)(*args[1:], **kwargs)

        return call

    # --- constants ---------------------------------------------------------------------------------

    def _constants(self, weights: Mapping[str, torch.Tensor], dtype: torch.dtype) -> dict[fx.Node, Any]:
        """Every node that does not depend on the input, evaluated once (weights as given)."""
        values: dict[fx.Node, Any] = {}
        for node in self.constants:
            if node.op == "get_attr":
                value = weights.get(node.target)
                if value is None:
                    value = _attribute(self.module, node.target)
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                if node.op == "call_module":
                    value = _call_module(self.module.get_submodule(node.target), args, kwargs)
                elif node.op == "call_function":
                    value = node.target(*args, **kwargs)
                else:
                    value = getattr(args[0], node.target)(*args[1:], **kwargs)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.to(dtype)
            values[node] = value
        return values

    # --- bounds --------------------------------------------------------------------------------------

    def margin_lower_bound(self, weights: Mapping[str, torch.Tensor], radii: Mapping[str, torch.Tensor],
                           x: torch.Tensor, labels: torch.Tensor, method: str = "crown",
                           dtype: torch.dtype = torch.float64, *, refine: bool = True,
                           share: bool = True) -> torch.Tensor:
        """Per sample, a lower bound of ``min_{j != y} z_y - z_j`` over every chip ``W + ΔW``, ``|ΔW| <= radii``.

        ``weights`` are the mapped layers' nominal values (the crossbar's ``W_q``; a trainer's float
        weights, in which case the bound is differentiable with respect to them).  A class whose interval
        bound is already positive keeps it (no crown row spent on it): still sound, and positive whenever
        the bound with every class's crown row is.
        """
        gaps = _Run(self, weights, radii, x.to(dtype), dtype, method, refine, share).margin(labels, open_only=True)
        return gaps.masked_fill(F.one_hot(labels.to(gaps.device), gaps.shape[1]).bool(), float("inf")).amin(dim=1)

    def margin_bounds(self, weights: Mapping[str, torch.Tensor], radii: Mapping[str, torch.Tensor],
                      x: torch.Tensor, labels: torch.Tensor, method: str = "crown",
                      dtype: torch.dtype = torch.float64, *, refine: bool = True,
                      share: bool = True) -> torch.Tensor:
        """Per sample and class ``j``, a lower bound of ``z_y - z_j`` over the box (0 at ``j = y``), shape
        ``(N, classes)``.  ``-margin_bounds`` are the worst-case logits certified training descends
        (CROWN-IBP's ``CE(-m)``).  ``refine=False``: crown's margin pass over the interval intermediate bounds
        only; ``share=False``: the plain ``|Λ|·R·|a|`` term on a convolution of a computed input, its weight
        sharing dropped (each cheaper, looser, as sound)."""
        check_method(method)
        run = _Run(self, weights, radii, x.to(dtype), dtype, method, refine, share)
        return run.margin(labels)


def _reachable(node: fx.Node, inputs: Callable[[fx.Node], list[fx.Node]]) -> set[fx.Node]:
    """``node`` and every node reached from it through ``inputs``."""
    seen: set[fx.Node] = set()
    stack = [node]
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(inputs(current))
    return seen


def _is_batch_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) or type(module).__name__ == "OnnxBatchNorm"


def _call_module(module: nn.Module, args: tuple, kwargs: dict) -> Any:
    """``module(*args)`` with its floating parameters and buffers in the dtype of the first floating argument
    (bounds run in float64; the module itself is never changed)."""
    dtype = next((a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
    state = {**dict(module.named_parameters()), **dict(module.named_buffers())}
    if dtype is None or all(not v.is_floating_point() or v.dtype == dtype for v in state.values()):
        return module(*args, **kwargs)
    converted = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    return torch.func.functional_call(module, converted, args, kwargs)


def _attribute(module: nn.Module, target: str) -> Any:
    value: Any = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


class _Run:
    """The bounds of one batch of samples: intervals for every node, CROWN on demand."""

    def __init__(self, graph: BoundGraph, weights: Mapping[str, torch.Tensor], radii: Mapping[str, torch.Tensor],
                 x: torch.Tensor, dtype: torch.dtype, method: str, refine: bool = True, share: bool = True) -> None:
        self.graph = graph
        self.dtype = dtype
        self.method = method
        self.share = share
        self.x = x
        self.constants = graph._constants(weights, dtype)
        self.weights: dict[str, torch.Tensor] = {}
        self.radii: dict[str, torch.Tensor | None] = {}
        self.bias: dict[fx.Node, torch.Tensor | None] = {}
        for node, rule in graph.rules.items():
            if rule.kind != "linear":
                continue
            weight = weights.get(rule.weight)
            if weight is None:  # a layer the crossbar leaves digital: its own exact weight
                weight = rule.module.weight if isinstance(rule.module, _LAYERS) else _attribute(graph.module, rule.weight)
            self.weights[rule.weight] = weight.to(dtype)
            radius = radii.get(rule.weight) if rule.weight in graph.mapped else None
            self.radii[rule.weight] = None if radius is None else radius.to(dtype)
            bias = rule.module.bias if isinstance(rule.module, _LAYERS) else None
            self.bias[node] = None if bias is None else bias.to(dtype)
        self.lower: dict[fx.Node, torch.Tensor] = {}
        self.upper: dict[fx.Node, torch.Tensor] = {}
        self.offsets: dict[fx.Node, torch.Tensor] = {}
        self.images: dict[str, tuple[torch.Tensor, torch.Tensor | None]] = {}
        self.nominal: dict[fx.Node, torch.Tensor] = {}
        # Shared by the batches of one certify() call (fixed weights), else this run's own.
        self.dense: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = graph.dense_cache if graph.dense_cache \
            is not None else {}
        for node in graph.rules:
            self._interval(node)
            if method == "crown" and refine and node in graph.refined and not self._exact(node) and \
                    not self._monotone(node):
                mask = self._unstable(node)
                lower, upper = self._crown_bounds(node, mask)
                self.lower[node] = torch.maximum(self.lower[node], lower)
                self.upper[node] = torch.minimum(self.upper[node], upper)

    def _monotone(self, node: fx.Node) -> bool:
        """A ReLU/LeakyReLU whose input bounds are already exact or CROWN-refined: its interval image of those
        bounds is at least as tight as a CROWN pass through its own relaxation (the relaxation's lines meet the
        function at the input's bounds), so no backward pass is spent on it."""
        rule = self.graph.rules[node]
        if rule.kind != "act" or rule.activation not in ("relu", "leaky_relu"):
            return False
        dep = rule.deps[0]
        return self._exact(dep) or dep in self.graph.refined

    def _unstable(self, node: fx.Node) -> torch.Tensor | None:
        """Where a tighter bound can matter: when every reader of ``node`` is a ReLU/LeakyReLU, only its
        unstable elements (interval lower < 0 < upper); a stable element's relaxation is already exact, and
        its interval bounds stay sound.  ``None``: every element."""
        readers = [self.graph.rules[user] for user in self.graph.users[node]]
        if not readers or any(r.kind != "act" or r.activation not in ("relu", "leaky_relu") for r in readers):
            return None
        return (self.lower[node] < 0) & (self.upper[node] > 0)

    def _exact(self, node: fx.Node) -> bool:
        """Interval bounds are already the exact range: a linear layer on the exact input."""
        rule = self.graph.rules[node]
        return rule.kind == "input" or rule.kind == "linear" and rule.deps[0] is self.graph.input

    # --- linear layers ---------------------------------------------------------------------------
    def _forward(self, rule: _Rule, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The layer's weight applied to ``a`` (no bias)."""
        module = rule.module
        if isinstance(module, nn.Linear):
            return a @ weight.t()
        if isinstance(module, _CONVS):
            conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[a.dim() - 2]
            padding = 0 if module.padding == "valid" else module.padding
            return conv(a, weight, None, module.stride, padding, module.dilation, module.groups)
        return a @ weight

    def _adjoint(self, rule: _Rule, coefficient: torch.Tensor, weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """``Lᵀ Λ`` for the layer's weight ``L``: coefficient ``(N, S, *out)`` to ``(N, S, *in)``."""
        module = rule.module
        if isinstance(module, nn.Linear):
            return coefficient @ weight
        if isinstance(module, _CONVS) and math.prod(shape[1:]) * math.prod(coefficient.shape[2:]) <= _DENSE_LIMIT:
            # A small convolution as its dense matrix: one matrix product instead of a transposed convolution.
            matrix = self._dense(rule, weight, shape)
            return (coefficient.flatten(2) @ matrix).view(*coefficient.shape[:2], *shape[1:])
        if isinstance(module, _CONVS):
            n, s = coefficient.shape[:2]
            dims = len(shape) - 2
            flat = coefficient.reshape(n * s, *coefficient.shape[2:])
            padding = (0,) * dims if module.padding == "valid" else module.padding
            out_pad = []
            for i in range(dims):
                produced = ((flat.shape[2 + i] - 1) * module.stride[i] - 2 * padding[i]
                            + module.dilation[i] * (weight.shape[2 + i] - 1) + 1)
                out_pad.append(shape[2 + i] - produced)
            transpose = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[dims]
            back = transpose(flat, weight, None, module.stride, padding, tuple(out_pad), module.groups, module.dilation)
            return back.reshape(n, s, *shape[1:])
        return coefficient @ weight.t()

    def _dense(self, rule: _Rule, weight: torch.Tensor, shape: torch.Size) -> torch.Tensor:
        """The layer's map as a matrix ``(outputs, inputs)`` (columns: the images of the unit inputs)."""
        key = (rule.weight, id(weight), tuple(shape[1:]))
        cached = self.dense.get(key)
        if cached is None or cached[0] is not weight:  # the tensor itself is kept: an id is never reused stale
            count = math.prod(shape[1:])
            basis = torch.eye(count, dtype=weight.dtype, device=weight.device).view(count, *shape[1:])
            cached = (weight, self._forward(rule, basis, weight).reshape(count, -1).t().contiguous())
            self.dense[key] = cached
        return cached[1]

    # --- intervals -------------------------------------------------------------------------------
    def _interval(self, node: fx.Node) -> None:
        rule = self.graph.rules[node]
        if rule.kind == "input":
            self.lower[node] = self.upper[node] = self.x
            return
        lows = [self.lower[d] for d in rule.deps]
        highs = [self.upper[d] for d in rule.deps]
        if rule.kind == "linear":
            low, high = lows[0], highs[0]
            weight, radius = self.weights[rule.weight], self.radii[rule.weight]
            w_low = weight if radius is None else weight - radius
            w_high = weight if radius is None else weight + radius
            if bool((low >= 0).all()):
                # Non-negative input: the exact per-neuron range of a sum of products of intervals.
                lower = self._forward(rule, low, w_low.clamp(min=0)) + self._forward(rule, high, w_low.clamp(max=0))
                upper = self._forward(rule, high, w_high.clamp(min=0)) + self._forward(rule, low, w_high.clamp(max=0))
            else:
                center, spread = (high + low) / 2, (high - low) / 2
                mid = self._forward(rule, center, weight)
                width = self._forward(rule, spread, weight.abs())
                if radius is not None:
                    width = width + self._forward(rule, torch.maximum(low.abs(), high.abs()), radius)
                lower, upper = mid - width, mid + width
            bias = self.bias[node]
            if bias is not None:
                shape = (-1,) + (1,) * (lower.dim() - 2) if isinstance(rule.module, _CONVS) \
                    else (-1,)
                lower, upper = lower + bias.view(shape), upper + bias.view(shape)
        elif rule.kind == "act":
            lower, upper = _activation_interval(rule, lows[0], highs[0])
        elif rule.kind == "maxpool":
            lower, upper = rule.module(lows[0]), rule.module(highs[0])
        elif rule.kind == "affine":
            lower, upper = rule.call(self.constants, *lows), rule.call(self.constants, *highs)
        else:
            centers = [(h + l) / 2 for l, h in zip(lows, highs)]
            spreads = [(h - l) / 2 for l, h in zip(lows, highs)]
            mid = rule.call(self.constants, *centers)
            width = self._signed_width(rule, spreads, mid)
            lower, upper = mid - width, mid + width
        self.lower[node], self.upper[node] = lower, upper

    def _signed_width(self, rule: _Rule, spreads: list[torch.Tensor], mid: torch.Tensor) -> torch.Tensor:
        """``|L| r`` for a signed affine node (Sub, Neg, Mul/Div by a constant, BatchNorm)."""
        node = rule.node
        if node.op == "call_module":
            sub = self.graph.module.get_submodule(node.target)
            if isinstance(sub, nn.modules.batchnorm._BatchNorm) or type(sub).__name__ == "OnnxBatchNorm":
                if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                    scale, var, eps = sub.weight, sub.running_var, sub.eps
                else:
                    scale, var, eps = self.constants[node.args[1]], self.constants[node.args[4]], sub.epsilon
                factor = (torch.ones_like(var) if scale is None else scale).to(self.dtype) / torch.sqrt(var.to(self.dtype) + eps)
                return spreads[0] * factor.abs().view((-1,) + (1,) * (spreads[0].dim() - 2))
            if type(sub).__name__ == "OnnxNeg":
                return spreads[0]
            op = _type_name(sub.math_op_function)
            if op == "sub":
                return sum(spreads).expand_as(mid)
            other = next(arg for arg in node.args if arg is not rule.deps[0])
            constant = self.constants[other] if isinstance(other, fx.Node) else torch.as_tensor(other, dtype=self.dtype)
            return spreads[0] * constant.abs() if op == "mul" else spreads[0] / constant.abs()
        raise CimguardError(f"cannot certify: no interval rule for node {node.name}")  # never reached: _rule refuses

    # --- CROWN ------------------------------------------------------------------------------------
    def _crown_bounds(self, node: fx.Node, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """CROWN lower and upper bounds of the elements of ``node`` where ``mask`` holds (``None``: all); elsewhere
        ``-inf``/``inf`` (the caller intersects them with the interval bounds).

        Each sample gets one spec row per selected element (and its negation), padded with zero rows to the
        batch's largest count, so a batch costs rows for its most unstable sample, not for every element.
        """
        shape = self.lower[node].shape
        n, count = shape[0], math.prod(shape[1:])
        device = self.x.device
        if mask is None:
            eye = torch.eye(count, dtype=self.dtype, device=device)
            spec = torch.cat([eye, -eye]).view(1, 2 * count, *shape[1:]).expand(n, -1, *shape[1:])
            bound = self.backward(node, spec)
            return bound[:, :count].view(shape), -bound[:, count:].view(shape)
        flat = mask.reshape(n, count)
        rows = int(flat.sum(dim=1).max()) if n else 0
        lower = torch.full((n, count), -math.inf, dtype=self.dtype, device=device)
        upper = torch.full((n, count), math.inf, dtype=self.dtype, device=device)
        if rows == 0:
            return lower.view(shape), upper.view(shape)
        # Per sample, the selected element indices first (a stable sort keeps them ordered), then padding.
        order = torch.sort((~flat).to(torch.int8), dim=1, stable=True).indices[:, :rows]
        valid = torch.gather(flat, 1, order)
        spec = torch.zeros(n, rows, count, dtype=self.dtype, device=device)
        spec.scatter_(2, order.unsqueeze(2), valid.to(self.dtype).unsqueeze(2))
        spec = torch.cat([spec, -spec], dim=1).view(n, 2 * rows, *shape[1:])
        bound = self.backward(node, spec)
        low, high = bound[:, :rows], -bound[:, rows:]
        lower.scatter_(1, order, torch.where(valid, low, -math.inf))
        upper.scatter_(1, order, torch.where(valid, high, math.inf))
        return lower.view(shape), upper.view(shape)

    def backward(self, start: fx.Node, spec: torch.Tensor) -> torch.Tensor:
        """Lower bound of ``spec · start`` per sample and row: ``spec`` is ``(N, S, *shape of start)``."""
        largest = max(math.prod(bound.shape[1:]) for bound in self.lower.values())
        n, rows = spec.shape[:2]
        step = max(1, _COEFFICIENT_BUDGET // max(1, n * largest))
        return torch.cat([self._backward(start, spec[:, i:i + step]) for i in range(0, rows, step)], dim=1)

    def _backward(self, start: fx.Node, spec: torch.Tensor,
                  gradients: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The lower bound of ``spec · start``; with ``gradients`` (a dict to fill) a bound *linear in ΔW*
        instead: the returned constant plus ``Σ_layers <gradients[layer], ΔW_layer>`` lower-bounds ``spec · start``
        for every ``ΔW`` in the box (see :meth:`linear_in_weights`)."""
        graph = self.graph
        coefficients: dict[fx.Node, torch.Tensor] = {start: spec}
        total = torch.zeros(spec.shape[:2], dtype=self.dtype, device=spec.device)
        order = [node for node in graph.rules if node in self._upstream(start)]
        for node in reversed(order):
            lam = coefficients.pop(node, None)
            if lam is None:
                continue
            rule = graph.rules[node]
            if rule.kind == "input":
                total = total + _dot(lam, self.x)
                continue
            if rule.kind == "linear":
                a = rule.deps[0]
                weight, radius = self.weights[rule.weight], self.radii[rule.weight]
                bias = self.bias[node]
                if bias is not None:
                    view = (1, 1, -1) + (1,) * (lam.dim() - 3) if isinstance(rule.module, _CONVS) else (1, 1, -1)
                    total = total + _dot(lam, bias.view(view))
                if gradients is not None and radius is not None:
                    # Centred split: Λ·ΔW·a = Λ·ΔW·â + Λ·ΔW·(a - â), â the nominal chip's value of a.  The first term
                    # stays linear in ΔW (its coefficient, the weight gradient of Λ·layer(â), is kept); the second is
                    # at least -(|Λ|·R)·|a - â|, and -|a - â| at least its chord over [l - â, u - â] (zero width, so
                    # no remainder, on the exact input).
                    nominal_a = self._nominal(a)
                    _accumulate(gradients, rule.weight, self._weight_gradient(rule, lam, nominal_a, weight))
                    back = self._adjoint(rule, lam, weight, self.lower[a].shape)
                    if a is not self.graph.input:
                        penalty = self._adjoint(rule, lam.abs(), radius, self.lower[a].shape)
                        slope, intercept = _neg_abs_chord(self.lower[a] - nominal_a, self.upper[a] - nominal_a)
                        back = back + penalty * slope.unsqueeze(1)
                        total = total + _dot(penalty, intercept - slope * nominal_a)
                    _accumulate(coefficients, a, back)
                    continue
                if a is self.graph.input:
                    # The exact input: Λ·(W + ΔW)·x >= Λ·(W x) - |Λ|·(R |x|), both images computed once; a
                    # convolution whose Λ changes sign across positions gets the exact -Σ_w R_w |G_w(x)| instead.
                    nominal, spread = self._input_images(rule, weight, radius)
                    total = total + _dot(lam, nominal)
                    if radius is not None and _shares_weights(rule, lam):
                        total = total - _shared_penalty_exact(rule.module, lam, radius, self.x)
                    elif spread is not None:
                        total = total - _dot(lam.abs(), spread)
                    continue
                back = self._adjoint(rule, lam, weight, self.lower[a].shape)
                if radius is not None and self.share and _shares_weights(rule, lam):
                    extra, constant = _shared_penalty(rule.module, lam, radius, self.lower[a], self.upper[a])
                    back = back + extra
                    total = total + constant
                elif radius is not None:
                    # min over the box of Λ·ΔW·a is -(|Λ|·R)·|a|; -|a| >= its chord over [l, u].
                    penalty = self._adjoint(rule, lam.abs(), radius, self.lower[a].shape)
                    slope, intercept = _neg_abs_chord(self.lower[a], self.upper[a])
                    back = back + penalty * slope.unsqueeze(1)
                    total = total + _dot(penalty, intercept)
                _accumulate(coefficients, a, back)
            elif rule.kind == "act":
                a = rule.deps[0]
                k_low, b_low, k_up, b_up = _activation_lines(rule, self.lower[a], self.upper[a])
                positive, negative = lam.clamp(min=0), lam.clamp(max=0)
                back = positive * k_low.unsqueeze(1) + negative * k_up.unsqueeze(1)
                total = total + _dot(positive, b_low) + _dot(negative, b_up)
                _accumulate(coefficients, a, back)
            elif rule.kind == "maxpool":
                a = rule.deps[0]
                back, constant = _maxpool_backward(rule.module, lam, self.lower[a], self.upper[a])
                total = total + constant
                _accumulate(coefficients, a, back)
            else:
                offset = self._offset(node)
                total = total + _dot(lam, offset)
                points = [self.lower[d] for d in rule.deps]
                _, pullback = torch.func.vjp(lambda *v: rule.call(self.constants, *v), *points)
                backs = torch.func.vmap(pullback, in_dims=1, out_dims=1)(lam)
                for dep, back in zip(rule.deps, backs):
                    _accumulate(coefficients, dep, back)
        return total

    def linear_in_weights(self, start: fx.Node, spec: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(c, G)`` with ``spec · start >= c + Σ_layer <G[layer], ΔW_layer>`` for every ``ΔW`` in the box, per
        sample and row: ``c`` is ``(N, S)``, ``G[layer]`` ``(N, S, *weight shape)`` (mapped layers only).  Its
        minimum over the box, ``c - Σ R·|G|``, is a per-sample bound too; kept linear, the bounds of many samples
        can be asked about one chip at once (:mod:`cimguard.sim.joint`)."""
        gradients: dict[str, torch.Tensor] = {}
        constant = self._backward(start, spec, gradients)
        return constant, gradients

    def _nominal(self, node: fx.Node) -> torch.Tensor:
        """``node``'s value on the nominal chip (``ΔW = 0``), for this batch."""
        if node not in self.nominal:
            rule = self.graph.rules[node]
            values = [self._nominal(dep) for dep in rule.deps]
            if rule.kind == "input":
                value = self.x
            elif rule.kind == "linear":
                value = self._forward(rule, values[0], self.weights[rule.weight])
                bias = self.bias[node]
                if bias is not None:
                    value = value + (bias.view((-1,) + (1,) * (value.dim() - 2)) if isinstance(rule.module, _CONVS)
                                     else bias)
            elif rule.kind == "act":
                value = _activation_value(rule, values[0])
            elif rule.kind == "maxpool":
                value = rule.module(values[0])
            else:
                value = rule.call(self.constants, *values)
            self.nominal[node] = value
        return self.nominal[node]

    def _weight_gradient(self, rule: _Rule, lam: torch.Tensor, a: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``∂(Λ·layer(a; W))/∂W`` per sample and row, ``(N, S, *W.shape)``: the coefficient of ``ΔW`` in
        ``Λ·layer(a; ΔW)`` (the layer is linear in its weight)."""
        def one(row: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
            return torch.func.grad(lambda w: (row * self._forward(rule, value.unsqueeze(0), w)[0]).sum())(weight)

        return torch.func.vmap(torch.func.vmap(one, in_dims=(0, None)))(lam, a)

    def _input_images(self, rule: _Rule, weight: torch.Tensor, radius: torch.Tensor | None):
        """``W x`` and ``R |x|`` of a layer on the exact input (no bias), once per batch."""
        key = rule.weight
        if key not in self.images:
            spread = None if radius is None else self._forward(rule, self.x.abs(), radius)
            self.images[key] = (self._forward(rule, self.x, weight), spread)
        return self.images[key]

    def _upstream(self, node: fx.Node) -> set[fx.Node]:
        return _reachable(node, lambda current: self.graph.rules[current].deps)

    def _offset(self, node: fx.Node) -> torch.Tensor:
        """The constant of an affine node: its value with every input-dependent argument zero."""
        if node not in self.offsets:
            rule = self.graph.rules[node]
            self.offsets[node] = rule.call(self.constants, *[torch.zeros_like(self.lower[d]) for d in rule.deps])
        return self.offsets[node]

    # --- the margin -----------------------------------------------------------------------------------
    def margin(self, labels: torch.Tensor, open_only: bool = False) -> torch.Tensor:
        """Per sample and class ``j``, the lower bound of ``z_y - z_j``.  ``open_only``: crown rows only for the
        classes whose interval bound is not already positive (the others keep that sound bound), each
        sample's rows padded to the batch's largest count."""
        out = self.graph.output
        lower, upper = self.lower[out], self.upper[out]
        if lower.dim() != 2:
            raise CimguardError(f"cannot certify: the model's output has shape {list(lower.shape)}, not [batch, classes]")
        classes = lower.shape[1]
        labels = labels.to(lower.device)
        true = F.one_hot(labels, classes).to(self.dtype)
        # Interval margin: the true class's lower bound against every other class's upper bound.
        interval = lower.gather(1, labels[:, None]) - upper
        if self.method == "crown":
            # One row per other class j (the row j = y is zero: no pass spent on it).
            wanted = ~true.bool()
            if open_only:
                wanted &= interval <= 0
            rows = int(wanted.sum(dim=1).max()) if len(labels) else 0
            if rows:
                # Per sample the wanted classes first (a stable sort keeps their order), then padding rows.
                others = torch.sort((~wanted).to(torch.int8), dim=1, stable=True).indices[:, :rows]
                valid = wanted.gather(1, others)
                spec = true.unsqueeze(1) - F.one_hot(others, classes).to(self.dtype)
                bound = torch.where(valid, self.backward(out, spec), -math.inf)
                interval = torch.maximum(interval, torch.full_like(interval, -math.inf).scatter(1, others, bound))
        return interval.masked_fill(true.bool(), 0.0)


def _dot(coefficient: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """``Σ Λ·v`` per sample and row: ``coefficient`` is ``(N, S, *shape)``, ``value`` ``(N, *shape)`` or alike."""
    if value.dim() == coefficient.dim() - 1:
        # One batched matrix-vector product, no (N, S, *shape) temporary.
        return torch.bmm(coefficient.flatten(2), value.reshape(value.shape[0], -1, 1)).squeeze(2)
    return (coefficient * value).flatten(2).sum(dim=2)


def _accumulate(coefficients: dict[fx.Node, torch.Tensor], node: fx.Node, value: torch.Tensor) -> None:
    coefficients[node] = value if node not in coefficients else coefficients[node] + value


def _shares_weights(rule: _Rule, lam: torch.Tensor) -> bool:
    """A 2-d convolution whose backward coefficient changes sign across positions of one output channel.

    There ``-(|Λ|·R)·|a|`` treats every position's copy of a weight as free, while a chip has one
    ``ΔW`` per weight: :func:`_shared_penalty` keeps the sharing.  Where every channel's coefficient has
    one sign (and ``a >= 0``) the two agree, and the cheaper one is used.
    """
    module = rule.module
    if not isinstance(module, nn.Conv2d) or module.groups != 1 or module.padding == "same":
        return False
    flat = lam.flatten(3)
    return bool(((flat > 0).any(dim=3) & (flat < 0).any(dim=3)).any())


def _shared_penalty(conv: nn.Conv2d, lam: torch.Tensor, radius: torch.Tensor, lower: torch.Tensor,
                    upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A linear lower bound of ``min_{|ΔW| <= R} Λ·conv(a, ΔW)`` over ``a`` in ``[lower, upper]``, one ``ΔW``
    shared by every position.

    With ``G_w(a) = ∂(Λ·conv(a, W))/∂W_w`` (linear in ``a``) the minimum is ``-Σ_w R_w |G_w(a)|``;
    ``|G_w| <=`` its chord over the interval range of ``G_w`` (exact when that range has one sign).
    Returns the coefficient on ``a`` ``(N, S, *a.shape[1:])`` and the constant ``(N, S)``.
    """
    n, s, out_channels = lam.shape[:3]
    channels, height, width = lower.shape[1:]
    kernel, padding = conv.kernel_size, (0, 0) if conv.padding == "valid" else conv.padding
    unfold = dict(dilation=conv.dilation, padding=padding, stride=conv.stride)
    center = F.unfold((upper + lower) / 2, kernel, **unfold).transpose(1, 2)  # (N, L, C·k·k)
    spread = F.unfold((upper - lower) / 2, kernel, **unfold).transpose(1, 2)
    flat = lam.reshape(n, s, out_channels, -1)  # (N, S, Co, L)
    # G over the box of a: centre Λ·c and radius |Λ|·r (the same range as Λ⁺·l + Λ⁻·u .. Λ⁺·u + Λ⁻·l),
    # each one batched product per sample (N, S·Co, L) @ (N, L, C·k·k), no broadcast copies over S.
    rows = flat.reshape(n, -1, flat.shape[3])
    g_mid = torch.bmm(rows, center).view(n, s, out_channels, -1)  # (N, S, Co, C·k·k)
    g_rad = torch.bmm(rows.abs(), spread).view(n, s, out_channels, -1)
    # |t| <= slope·t + intercept on [m - r, m + r]: the chord of a convex function.  With
    # slope = clamp(m / r, -1, 1) and intercept = r (1 - slope²) it passes through (m - r, |m - r|) and
    # (m + r, |m + r|) when |m| < r, and is |t| itself (slope ±1, intercept 0) when the range has one sign.
    slope = (g_mid / g_rad.clamp(min=1e-300)).clamp(-1.0, 1.0)
    intercept = g_rad * (1 - slope * slope)
    weight = radius.reshape(out_channels, -1)  # (Co, C·k·k)
    scaled = weight * slope  # (N, S, Co, C·k·k)
    columns = -(scaled.transpose(2, 3) @ flat)  # (N, S, C·k·k, L): -Σ_o R·slope·Λ
    back = _fold(columns.reshape(n * s, *columns.shape[2:]), (height, width), kernel, conv.dilation, padding,
                 conv.stride)
    constant = -(weight * intercept).flatten(2).sum(dim=2)
    return back.view(n, s, channels, height, width), constant


def _shared_penalty_exact(conv: nn.Conv2d, lam: torch.Tensor, radius: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``max_{|ΔW| <= R} -Λ·conv(x, ΔW) = Σ_w R_w |G_w(x)|`` on an exact input ``x``, per sample and row
    ``(N, S)``: :func:`_shared_penalty` with ``lower = upper = x`` (the chord of ``|t|`` is ``|t|`` itself),
    without the coefficient on ``x`` it would fold back only to take its product with ``x`` again."""
    n, s, out_channels = lam.shape[:3]
    kernel, padding = conv.kernel_size, (0, 0) if conv.padding == "valid" else conv.padding
    patches = F.unfold(x, kernel, dilation=conv.dilation, padding=padding, stride=conv.stride)  # (N, C·k·k, L)
    g = torch.bmm(lam.reshape(n, s * out_channels, -1), patches.transpose(1, 2))  # (N, S·Co, C·k·k)
    return (g.abs().view(n, s, out_channels, -1) * radius.reshape(out_channels, -1)).flatten(2).sum(dim=2)


_FOLD_INDEX: dict[tuple, torch.Tensor] = {}


def _fold(columns: torch.Tensor, size: tuple[int, int], kernel: Any, dilation: Any, padding: Any,
          stride: Any) -> torch.Tensor:
    """``F.fold`` (sum the sliding-window columns ``(B, C·k·k, L)`` back into ``(B, C, *size)``) as one
    ``index_add_`` over a cached column-to-pixel index: ``F.fold`` on the CPU loops over the batch, and the
    backward passes fold thousands of small items at once."""
    pair = nn.modules.utils._pair
    kernel, dilation, padding, stride = pair(kernel), pair(dilation), pair(padding), pair(stride)
    batch, rows, positions = columns.shape
    channels = rows // (kernel[0] * kernel[1])
    key = (channels, tuple(size), kernel, dilation, padding, stride, positions, str(columns.device))
    index = _FOLD_INDEX.get(key)
    if index is None:
        # Unfold the pixel numbers (padding: -1) to learn which pixel each column entry came from.
        padded_size = (size[0] + 2 * padding[0], size[1] + 2 * padding[1])
        pixels = torch.arange(channels * size[0] * size[1], dtype=torch.float64, device=columns.device)
        image = F.pad(pixels.view(1, channels, *size), (padding[1], padding[1], padding[0], padding[0]), value=-1.0)
        unfolded = F.unfold(image, kernel, dilation=dilation, stride=stride)
        if unfolded.shape[1:] != (rows, positions) or image.shape[2:] != padded_size:
            raise CimguardError("internal: fold shapes do not match")  # never reached for the pools and convs here
        flat = unfolded.flatten().long()
        index = torch.where(flat < 0, channels * size[0] * size[1], flat)  # padding: one dropped extra slot
        _FOLD_INDEX[key] = index
    out = torch.zeros(batch, channels * size[0] * size[1] + 1, dtype=columns.dtype, device=columns.device)
    out.index_add_(1, index, columns.reshape(batch, -1))
    return out[:, :-1].view(batch, channels, *size)


def _neg_abs_chord(lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``-|a| >= slope·a + intercept`` on ``[lower, upper]`` (the chord of a concave function; exact at a sign)."""
    positive = lower >= 0
    negative = upper <= 0
    span = (upper - lower).clamp(min=1e-300)
    slope = torch.where(positive, -1.0, torch.where(negative, 1.0, (lower + upper) / span * -1.0))
    intercept = torch.where(positive | negative, 0.0, lower - slope * lower)  # -|l| = l for l < 0
    return slope.to(lower.dtype), intercept.to(lower.dtype)


def _activation_interval(rule: _Rule, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    kind = rule.activation
    if kind == "relu":
        return lower.clamp(min=0), upper.clamp(min=0)
    if kind == "leaky_relu":
        return F.leaky_relu(lower, rule.slope), F.leaky_relu(upper, rule.slope)
    if kind == "sigmoid":
        return torch.sigmoid(lower), torch.sigmoid(upper)
    if kind == "tanh":
        return torch.tanh(lower), torch.tanh(upper)
    # GELU falls to its one minimum and rises after it.
    f_low, f_up = F.gelu(lower), F.gelu(upper)
    floor = F.gelu(torch.tensor(_GELU_MIN_AT, dtype=lower.dtype)) - 1e-9
    inside = (lower <= _GELU_MIN_AT) & (upper >= _GELU_MIN_AT)
    return torch.where(inside, floor, torch.minimum(f_low, f_up)), torch.maximum(f_low, f_up)


def _activation_value(rule: _Rule, value: torch.Tensor) -> torch.Tensor:
    kind = rule.activation
    if kind == "leaky_relu":
        return F.leaky_relu(value, rule.slope)
    return {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}[kind](value)


def _activation_lines(rule: _Rule, lower: torch.Tensor, upper: torch.Tensor):
    """Per element, lines ``k_low·z + b_low <= f(z) <= k_up·z + b_up`` valid on ``[lower, upper]``."""
    kind = rule.activation
    if kind in ("relu", "leaky_relu"):
        alpha = rule.slope if kind == "leaky_relu" else 0.0
        active, inactive = lower >= 0, upper <= 0
        span = (upper - lower).clamp(min=1e-300)
        chord = (upper - alpha * lower) / span  # through (l, αl) and (u, u)
        # Lower line: slope 1 or α for an unstable element, whichever hugs the larger side (CROWN's choice).
        k_low = torch.where(active, 1.0, torch.where(inactive, alpha, torch.where(upper > -lower, 1.0, alpha)))
        k_up = torch.where(active, 1.0, torch.where(inactive, alpha, chord))
        b_up = torch.where(active | inactive, 0.0, alpha * lower - chord * lower)
        zero = torch.zeros_like(lower)
        return k_low.to(lower.dtype), zero, k_up.to(lower.dtype), b_up.to(lower.dtype)
    return _smooth_lines(kind, lower, upper)


def _smooth_lines(kind: str, lower: torch.Tensor, upper: torch.Tensor):
    """Chord-slope lines for a smooth activation, offsets from a grid and the curvature bound.

    With ``g(z) = f(z) - k z`` and ``|g''| = |f''| <= M``, ``g`` lies within ``M h²/8`` of its linear
    interpolation between grid points ``h`` apart, so the grid's minimum (maximum) less (plus) that
    is a sound offset of the lower (upper) line.
    """
    f = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "gelu": F.gelu}[kind]
    span = upper - lower
    slope = torch.where(span > 1e-12, (f(upper) - f(lower)) / span.clamp(min=1e-12), 0.0)
    steps = torch.linspace(0, 1, _GRID, dtype=lower.dtype, device=lower.device)
    grid = lower.unsqueeze(-1) + span.unsqueeze(-1) * steps
    gap = f(grid) - slope.unsqueeze(-1) * grid
    slack = _CURVATURE[kind] * (span / (_GRID - 1)) ** 2 / 8 + 1e-12
    return slope, gap.amin(dim=-1) - slack, slope, gap.amax(dim=-1) + slack


def _maxpool_backward(pool: nn.MaxPool2d, lam: torch.Tensor, lower: torch.Tensor, upper: torch.Tensor):
    """Back through a max pool: ``max >= a_j`` (j with the largest lower bound) and, above, the chord of
    ``max(a_k, M)`` (k with the largest upper bound, M the others' largest upper bound; exact when
    ``a_k`` dominates)."""
    n, s = lam.shape[:2]
    channels, height, width = lower.shape[1:]
    pair = nn.modules.utils._pair
    kernel, stride, padding, dilation = (pair(pool.kernel_size), pair(pool.stride or pool.kernel_size),
                                         pair(pool.padding), pair(pool.dilation))
    out_h, out_w = lam.shape[-2:]
    extra = [max(0, (o - 1) * st + d * (k - 1) + 1 - (size + 2 * p))
             for o, st, d, k, size, p in zip((out_h, out_w), stride, dilation, kernel, (height, width), padding)]
    pads = (padding[1], padding[1] + extra[1], padding[0], padding[0] + extra[0])
    padded = (height + pads[2] + pads[3], width + pads[0] + pads[1])

    def windows(t: torch.Tensor) -> torch.Tensor:
        flat = F.pad(t, pads, value=float("-inf")).reshape(n * channels, 1, *padded)
        return F.unfold(flat, kernel, dilation=dilation, stride=stride).view(n, channels, -1, out_h * out_w)

    low, up = windows(lower), windows(upper)
    size = low.shape[2]
    j_low = low.argmax(dim=2, keepdim=True)
    if size > 1:
        top = up.topk(2, dim=2)
        u_top, second, j_up = top.values[:, :, :1], top.values[:, :, 1:], top.indices[:, :, :1]
    else:
        u_top, second, j_up = up, torch.full_like(up, float("-inf")), torch.zeros_like(j_low)
    l_at = low.gather(2, j_up)
    exact = l_at >= second
    span = (u_top - l_at).clamp(min=1e-300)
    slope = torch.where(exact, 1.0, (u_top - second) / span).to(lower.dtype)
    intercept = torch.where(exact, 0.0, second - slope * l_at).to(lower.dtype)
    lam = lam.reshape(n, s, channels, 1, out_h * out_w)
    positive, negative = lam.clamp(min=0), lam.clamp(max=0)
    coefficient = torch.zeros(n, s, channels, size, out_h * out_w, dtype=lam.dtype, device=lam.device)
    coefficient.scatter_add_(3, j_low.unsqueeze(1).expand(n, s, channels, 1, -1), positive)
    coefficient.scatter_add_(3, j_up.unsqueeze(1).expand(n, s, channels, 1, -1), negative * slope.unsqueeze(1))
    constant = (negative * intercept.unsqueeze(1)).flatten(2).sum(dim=2)
    folded = _fold(coefficient.reshape(n * s * channels, size, out_h * out_w), padded, kernel, dilation, (0, 0),
                   stride)
    back = folded.view(n, s, channels, *padded)[..., pads[2]:pads[2] + height, pads[0]:pads[0] + width]
    return back, constant
