"""Export: the vendor's original ONNX graph with only the mapped weights replaced."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from cimguard.errors import CimguardError
from cimguard.model import ImportedModel, output_mismatch, run_onnxruntime
from cimguard.report import check_new_output, write_new_file


def with_weights(imported: ImportedModel, weights: Mapping[str, torch.Tensor]) -> onnx.ModelProto:
    """A copy of the original model whose mapped initializers hold ``weights`` (by torch name)."""
    by_initializer: dict[str, np.ndarray] = {}
    for mapped in imported.mapped:
        if mapped.torch_name not in weights:
            continue
        value = mapped.to_onnx(weights[mapped.torch_name])
        previous = by_initializer.get(mapped.initializer)
        if previous is not None and not np.array_equal(previous, value):
            raise CimguardError(
                f"initializer {mapped.initializer} feeds several layers that now hold different weights; "
                "it cannot be exported as one tensor"
            )
        by_initializer[mapped.initializer] = value
    model = onnx.ModelProto()
    model.CopyFrom(imported.onnx_model)
    replaced = set()
    for initializer in model.graph.initializer:
        if initializer.name in by_initializer:
            _replace_tensor(initializer, by_initializer[initializer.name])
            replaced.add(initializer.name)
    # Weights that the vendor's file produced with Constant nodes are written back there.
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output and node.output[0] in by_initializer:
            for attr in node.attribute:
                if attr.name == "value":
                    _replace_tensor(attr.t, by_initializer[node.output[0]])
                    replaced.add(node.output[0])
    missing = set(by_initializer) - replaced
    if missing:
        raise CimguardError(f"cannot find where the original model stores weight(s) {', '.join(sorted(missing))}")
    return model


def _replace_tensor(tensor: onnx.TensorProto, value: np.ndarray) -> None:
    dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
    if tuple(tensor.dims) != value.shape:
        raise CimguardError(f"weight {tensor.name} has shape {value.shape}, the model stores {tuple(tensor.dims)}")
    new = numpy_helper.from_array(value.astype(dtype), name=tensor.name)
    tensor.CopyFrom(new)


def export_onnx(
    imported: ImportedModel,
    weights: Mapping[str, torch.Tensor],
    path: str | Path,
    *,
    check_inputs: torch.Tensor | None = None,
    tolerance: float = 1e-4,
) -> Path:
    """Write the original graph with new weights to a new file, after checking it in onnxruntime.

    With ``check_inputs`` the exported model must reproduce the torch model run with
    ``weights`` (relative to output scale) or nothing is written.  The input file is
    never overwritten and an existing file is never replaced.
    """
    path = check_new_output(path, inputs=(imported.path,) if imported.path else ())
    model = with_weights(imported, weights)
    if check_inputs is not None:
        from torch.func import functional_call

        x = check_inputs.detach().cpu().float()
        module = imported.module
        device = next(iter(imported.weights().values())).device
        with torch.no_grad():
            ours = functional_call(module, {k: v.to(device) for k, v in weights.items()}, (x.to(device),), strict=False)
        ours = ours if isinstance(ours, torch.Tensor) else ours[0]
        error = output_mismatch(ours.cpu().numpy(), run_onnxruntime(model, x.numpy()))
        if not error <= tolerance:
            raise CimguardError(
                f"the exported model does not reproduce the torch model in onnxruntime "
                f"(relative difference {error:.3g}); nothing was written"
            )
    data = model.SerializeToString()
    return write_new_file(path, lambda tmp: tmp.write_bytes(data))
