"""Files exported with a fixed batch: a symbolic batch axis, or one sample at a time.

``torch.onnx.export(model, (x,), path)`` with today's defaults writes the example's
batch size (usually 1) into the graph: the input shape, the output shape and every
``Reshape`` shape constant (``[1, 512]`` before ResNet's classifier).  Such a file runs
only on batches of that size.  cimguard makes it run on any batch, in one of two ways,
and never gives a wrong answer:

* **symbolic batch** (:func:`symbolic_batch`): the input and output batch axes become
  symbolic and every constant ``Reshape`` shape whose leading entries copy the input's
  leading dimensions has them replaced by ``0`` ("copy this dimension", exact at the
  exported batch size).  The rewritten model is accepted only if, on a few distinct
  random samples run together, it reproduces the fixed-batch model run one sample at a
  time (:func:`batch_preserved`).  ResNet, MobileNet and most CNNs take this path.
* **one sample at a time** (:class:`PerSampleForward`): where the rewrite is not
  checked safe (a transformer whose heads fold the batch into ``[L, B·H, d]``, a
  class token expanded to batch 1...), the fixed-batch module runs on each sample alone,
  vectorised with ``torch.func.vmap`` when that gives the same numbers as a plain loop,
  else in a loop.  Only files exported with batch 1 can run this way.
* **fixed** (:class:`FixedBatchForward`): a file whose batch is neither (a fixed batch
  above 1 whose rewrite fails the check, a batch-1 file whose outputs have no per-sample
  axis) runs only on its own batch size, as before; any other size is a one-line error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from torch.utils._pytree import tree_map

from cimguard.seeds import torch_generator

#: Samples in the random check of a rewrite (distinct, so a mix-up between samples shows).
CHECK_SAMPLES = 3
#: Largest relative difference (of the output scale) between the two ways of running the model.
CHECK_TOLERANCE = 1e-5

#: Largest fixed batch cimguard rewrites (the check runs two such batches).
MAX_FIXED_BATCH = 64

#: How a model with a fixed batch runs on a batch of any size.
DYNAMIC = "dynamic"
SYMBOLIC = "symbolic"
VMAP = "vmap"
LOOP = "loop"
FIXED = "fixed"

BATCH_MODE_TEXT = {
    DYNAMIC: "the file's batch axis is dynamic",
    SYMBOLIC: "the file fixes the batch size; cimguard made it symbolic (checked against one sample at a time)",
    VMAP: "the file fixes batch 1; cimguard runs one sample at a time, vectorised with torch.func.vmap",
    LOOP: "the file fixes batch 1; cimguard runs one sample at a time in a loop",
    FIXED: "the file fixes the batch size and its samples are not independent: it runs only on batches of that size",
}


@dataclass(frozen=True)
class BatchRewrite:
    """A copy of a fixed-batch model with a symbolic batch axis."""

    model: onnx.ModelProto
    reshapes: int
    """Reshape nodes whose shape constant was rewritten."""


def fixed_batch(model: onnx.ModelProto) -> int | None:
    """The batch size the file fixes on its (single) input's first axis; ``None`` when dynamic or unknown."""
    initializers = {init.name for init in model.graph.initializer}
    inputs = [value for value in model.graph.input if value.name not in initializers]
    if len(inputs) != 1:
        return None
    dims = inputs[0].type.tensor_type.shape.dim
    if not dims or not dims[0].HasField("dim_value") or dims[0].dim_value <= 0:
        return None
    return int(dims[0].dim_value)


def symbolic_batch(model: onnx.ModelProto, batch: int) -> BatchRewrite:
    """A copy of ``model`` (legalised, shapes inferred) with batch axis ``batch`` made symbolic."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    shapes = _static_shapes(copy)
    initializers = {init.name: init for init in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    rewritten = 0
    for index, node in enumerate(graph.node):
        if node.op_type != "Reshape" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
            continue
        source = shapes.get(node.input[0])
        shape_tensor = initializers.get(node.input[1])
        if source is None or shape_tensor is None:
            continue
        target = numpy_helper.to_array(shape_tensor).astype(np.int64).reshape(-1)
        allowzero = any(a.name == "allowzero" and a.i == 1 for a in node.attribute)
        if allowzero and (target == 0).any():
            continue  # a literal zero-size axis: leave it alone
        prefix = 0
        while prefix < min(len(target), len(source)) and target[prefix] == source[prefix] and target[prefix] > 0:
            prefix += 1
        if prefix == 0:
            continue
        new_target = target.copy()
        new_target[:prefix] = 0  # "copy the input's dimension": the same value at the exported batch size
        name = f"{node.input[1]}__cimguard_batch_{index}"
        graph.initializer.append(numpy_helper.from_array(new_target, name=name))
        node.input[1] = name
        kept = [a for a in node.attribute if a.name != "allowzero"]
        del node.attribute[:]
        node.attribute.extend(kept)
        rewritten += 1
    # Shapes inferred at the fixed batch are stale now; the converter re-infers what it needs.
    del graph.value_info[:]
    for value in list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or not dims:
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value == batch:
            dims[0].dim_param = "batch"
    used = {name for node in graph.node for name in node.input}
    for init in [init for init in graph.initializer if init.name not in used and init.name not in
                 {v.name for v in graph.output}]:
        graph.initializer.remove(init)
    return BatchRewrite(copy, rewritten)


def _static_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for value in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            shapes[value.name] = tuple(int(d.dim_value) for d in dims)
    return shapes


def check_inputs(sample_shape: tuple[int, ...], samples: int = CHECK_SAMPLES) -> torch.Tensor:
    """Distinct seeded random samples of one input shape."""
    generator = torch_generator(1234)
    return torch.randn((samples, *sample_shape), generator=generator)


def one_at_a_time(module: Callable, x: torch.Tensor, size: int = 1):
    """``module`` on consecutive chunks of ``size`` samples of ``x``, outputs concatenated."""
    outputs = [module(x[i : i + size]) for i in range(0, len(x), size)]
    first = outputs[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(outputs)
    return type(first)(torch.cat([out[k] for out in outputs]) for k in range(len(first)))


def check_count(size: int) -> int:
    """Samples in the check of a rewrite of a model with fixed batch ``size``: two batches (at least 3 samples)."""
    return CHECK_SAMPLES if size == 1 else 2 * size


def same_outputs(reference, actual, tolerance: float = CHECK_TOLERANCE) -> bool:
    """True when every output tensor has the same shape and agrees within ``tolerance`` of its scale."""
    reference = [reference] if isinstance(reference, torch.Tensor) else list(reference)
    actual = [actual] if isinstance(actual, torch.Tensor) else list(actual)
    if len(reference) != len(actual):
        return False
    return all(
        output_mismatch(ref.detach().numpy(), out.detach().numpy()) <= tolerance for ref, out in zip(reference, actual)
    )


def batch_preserved(fixed: nn.Module, candidate: nn.Module, x: torch.Tensor, size: int = 1) -> bool:
    """True when ``candidate`` on the whole batch ``x`` gives what ``fixed`` gives on chunks of ``size`` samples."""
    with torch.no_grad():
        reference = one_at_a_time(fixed, x, size)
        try:
            actual = candidate(x)
        except Exception:  # noqa: BLE001 - a rewrite that does not run is simply not used
            return False
    return same_outputs(reference, actual)


class PerSampleForward:
    """The forward pass of a batch-1 module, applied to every sample of a batch.

    Installed as the module's own ``forward`` so that everything calling the module
    (``functional_call`` with a chip's weights, gradients for the solvers and trainers)
    works unchanged.  ``vectorised``: ``torch.func.vmap`` over the samples (one batched
    kernel per layer), else a Python loop.
    """

    def __init__(self, forward: Callable, vectorised: bool) -> None:
        self._forward = forward
        self.vectorised = vectorised

    def __call__(self, x: torch.Tensor):
        if not self.vectorised:
            return one_at_a_time(self._forward, x)

        def one(sample: torch.Tensor):
            return tree_map(lambda t: t.squeeze(0), self._forward(sample.unsqueeze(0)))

        return torch.func.vmap(one)(x)


class FixedBatchForward:
    """The forward pass of a module that only runs on its file's batch size: anything else is a clear error."""

    def __init__(self, forward: Callable, size: int) -> None:
        self._forward = forward
        self.size = size

    def __call__(self, x: torch.Tensor):
        if len(x) != self.size:
            from cimguard.errors import CimguardError

            raise CimguardError(
                f"the model fixes the batch size to {self.size} and cimguard could not check that its samples are "
                f"independent, so it cannot run {len(x)} samples; re-export it with batch 1 or a dynamic batch axis"
            )
        return self._forward(x)


def keep_fixed(module: nn.Module, size: int) -> str:
    """Let ``module`` run only on batches of ``size`` (with a one-line error otherwise); returns :data:`FIXED`."""
    module.forward = FixedBatchForward(module.forward, size)
    return FIXED


def run_per_sample(module: nn.Module, x: torch.Tensor) -> str:
    """Make ``module`` (exported with batch 1) run on any batch; returns :data:`VMAP` or :data:`LOOP`.

    vmap is used only when it runs and matches the loop on ``x``.  Outputs without a
    leading batch axis of size 1 (a loss, a reduction over the batch) cannot be split by
    sample: the module then keeps its fixed batch (:func:`keep_fixed`, :data:`FIXED`).
    """
    forward = module.forward
    with torch.no_grad():
        single = forward(x[:1])
    for output in [single] if isinstance(single, torch.Tensor) else list(single):
        if output.dim() == 0 or output.shape[0] != 1:
            return keep_fixed(module, 1)
    vectorised = PerSampleForward(forward, vectorised=True)
    try:
        with torch.no_grad():
            works = same_outputs(one_at_a_time(forward, x), vectorised(x))
    except Exception:  # noqa: BLE001 - operators without a vmap rule: fall back to the loop
        works = False
    module.forward = vectorised if works else PerSampleForward(forward, vectorised=False)
    return VMAP if works else LOOP


def output_mismatch(reference: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference relative to the reference's output scale."""
    reference = np.asarray(reference, dtype=np.float64)
    actual = np.asarray(actual, dtype=np.float64)
    if reference.shape != actual.shape:
        return float("inf")
    scale = max(float(np.abs(reference).max(initial=0.0)), 1e-6)
    return float(np.abs(reference - actual).max(initial=0.0)) / scale
