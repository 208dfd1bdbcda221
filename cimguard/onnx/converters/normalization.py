"""Normalisations: ``LayerNormalization`` (with its ``Mean`` and ``InvStdDev`` outputs),
``GroupNormalization`` (opset 18: scale per group; 21: per channel), ``RMSNormalization``
(23), ``MeanVarianceNormalization``, ``LpNormalization``, ``InstanceNormalization`` and
``BatchNormalization`` in its inference and training forms (``training_mode=1``: batch
statistics and the running-statistics outputs)."""

from __future__ import annotations

import onnx
import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, attribute, converter, function_result


def _stash(x: torch.Tensor, stash_type: int) -> torch.Tensor:
    # stash_type 1 computes the statistics in float32; float64 inputs keep their precision.
    return x if x.dtype == torch.float64 or stash_type != 1 else x.float()


@converter("LayerNormalization", 17, "Mean and InvStdDev outputs", replace=True)
def _layer_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", -1))
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    stash_type = int(node.attributes.get("stash_type", 1))
    outputs = len(node.output_values)

    def layer_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None):
        dims = list(range(axis % x.dim(), x.dim()))
        data = _stash(x, stash_type)
        mean = data.mean(dim=dims, keepdim=True)
        inv_std = torch.rsqrt(((data - mean) ** 2).mean(dim=dims, keepdim=True) + epsilon)
        y = ((data - mean) * inv_std).to(x.dtype) * scale
        if bias is not None:
            y = y + bias
        return (y, mean, inv_std)[:outputs] if outputs > 1 else y

    return function_result(node, layer_norm)


@converter("GroupNormalization", 18, "scale per group (18) or channel (21)")
def _group_norm(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:  # noqa: ARG001
    groups = int(node.attributes["num_groups"])
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    stash_type = int(node.attributes.get("stash_type", 1))

    def group_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        n, c = x.shape[:2]
        data = _stash(x, stash_type).reshape(n, groups, -1)
        mean = data.mean(dim=-1, keepdim=True)
        var = ((data - mean) ** 2).mean(dim=-1, keepdim=True)
        y = ((data - mean) / torch.sqrt(var + epsilon)).to(x.dtype)
        shape = [1, -1] + [1] * (x.dim() - 2)
        if version < 21:  # scale and bias per group
            y = y * scale.reshape(1, groups, 1) + bias.reshape(1, groups, 1)
            return y.reshape(x.shape)
        return y.reshape(x.shape) * scale.reshape(shape) + bias.reshape(shape)

    return function_result(node, group_norm)


@converter("RMSNormalization", 23, "new")
def _rms_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", -1))
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    stash_type = int(node.attributes.get("stash_type", 1))

    def rms_norm(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        dims = list(range(axis % x.dim(), x.dim()))
        data = _stash(x, stash_type)
        y = data * torch.rsqrt((data * data).mean(dim=dims, keepdim=True) + epsilon)
        return y.to(x.dtype) * scale

    return function_result(node, rms_norm)


@converter("MeanVarianceNormalization", 9, "new")
def _mvn(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axes = attribute(node, "axes", None) or [0, 2, 3]

    def mvn(x: torch.Tensor) -> torch.Tensor:
        dims = sorted({a % x.dim() for a in axes})
        mean = x.mean(dim=dims, keepdim=True)
        var = (x * x).mean(dim=dims, keepdim=True) - mean * mean
        return (x - mean) / (torch.sqrt(var) + 1e-9)

    return function_result(node, mvn)


@converter("LpNormalization", 1, "new")
def _lp_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    axis = int(node.attributes.get("axis", -1))
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise Unsupported(f"LpNormalization p={p} is not supported (the standard allows 1 and 2)")

    def lp_norm(x: torch.Tensor) -> torch.Tensor:
        norm = x.abs().sum(dim=axis, keepdim=True) if p == 1 else torch.sqrt((x * x).sum(dim=axis, keepdim=True))
        return x / torch.where(norm == 0, torch.ones_like(norm), norm)

    return function_result(node, lp_norm)


@converter("InstanceNormalization", 1, "any rank", replace=True)
def _instance_norm(node: OnnxNode, graph: OnnxGraph) -> OperationConverterResult:  # noqa: ARG001
    epsilon = float(node.attributes.get("epsilon", 1e-5))

    def instance_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        dims = list(range(2, x.dim()))
        mean = x.mean(dim=dims, keepdim=True)
        var = ((x - mean) ** 2).mean(dim=dims, keepdim=True)
        shape = [1, -1] + [1] * (x.dim() - 2)
        return (x - mean) / torch.sqrt(var + epsilon) * scale.reshape(shape) + bias.reshape(shape)

    return function_result(node, instance_norm)


def _training_form(node: onnx.NodeProto) -> bool:
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    return bool(attrs.get("training_mode", 0)) or not attrs.get("is_test", 1) or len(node.output) > 1


@converter("BatchNormalization", 6, "inference and training forms", replace=True, when=_training_form)
def _batch_norm(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:  # noqa: ARG001
    epsilon = float(node.attributes.get("epsilon", 1e-5))
    momentum = float(node.attributes.get("momentum", 0.9))
    training = bool(node.attributes.get("training_mode", 0)) or (version < 14 and len(node.output_values) > 1)
    if version < 7 and not node.attributes.get("is_test", 1):
        training = True
    outputs = len(node.output_values)

    def batch_norm(x: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                   var: torch.Tensor):
        shape = [1, -1] + [1] * (x.dim() - 2)
        if not training:
            return (x - mean.reshape(shape)) / torch.sqrt(var.reshape(shape) + epsilon) * scale.reshape(shape) + \
                bias.reshape(shape)
        dims = [0] + list(range(2, x.dim()))
        batch_mean = x.mean(dim=dims)
        batch_var = ((x - batch_mean.reshape(shape)) ** 2).mean(dim=dims)
        y = (x - batch_mean.reshape(shape)) / torch.sqrt(batch_var.reshape(shape) + epsilon) * \
            scale.reshape(shape) + bias.reshape(shape)
        running_mean = mean * momentum + batch_mean * (1 - momentum)
        running_var = var * momentum + batch_var * (1 - momentum)
        return (y, running_mean, running_var)[:outputs] if outputs > 1 else y

    return function_result(node, batch_norm)
