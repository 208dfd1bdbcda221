"""``Resize`` (opset 10 on) and ``Upsample``: every mode, coordinate transformation, nearest
rounding, ``cubic_coeff_a``, ``exclude_outside``, ``antialias``, ``axes``,
``keep_aspect_ratio_policy`` and ``tf_crop_and_resize`` with its extrapolation value.

Interpolation is separable: along each resized axis the output is a fixed matrix (output
size x input size) times the input.  The matrix follows the ONNX specification (the
reference implementation's neighbour choice, edge clamping and coefficient functions) and is
built once per input size; onnx2torch's converter maps onto ``F.interpolate``, whose
coordinate rules differ for most of these modes."""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx2torch.onnx_graph import OnnxGraph
from onnx2torch.onnx_node import OnnxNode
from onnx2torch.utils.common import OperationConverterResult

from cimguard.onnx.converters.registry import Unsupported, attribute, converter, function_result

_MODES = ("nearest", "linear", "cubic")
_COORDINATES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners", "asymmetric",
                "tf_crop_and_resize")


def _nearest(mode: str):
    def coeffs(ratio: float, scale: float) -> np.ndarray:  # noqa: ARG001
        if float(ratio).is_integer():
            return np.array([0.0, 1.0])
        up = {"round_prefer_floor": ratio > 0.5, "round_prefer_ceil": ratio >= 0.5, "floor": False, "ceil": True}[mode]
        return np.array([0.0, 1.0]) if up else np.array([1.0, 0.0])

    return coeffs


def _cubic(a: float, antialias: bool):
    def kernel(x: float) -> float:
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([kernel(ratio + 1), kernel(ratio), kernel(1 - ratio), kernel(2 - ratio)])
        scale = min(scale, 1.0)
        start = int(math.floor(-2 / scale) + 1)
        values = np.array([kernel(scale * (i - ratio)) for i in range(start, 2 - start)])
        return values / values.sum()

    return coeffs


def _linear(antialias: bool):
    def coeffs(ratio: float, scale: float) -> np.ndarray:
        if not antialias:
            return np.array([1 - ratio, ratio])
        scale = min(scale, 1.0)
        start = int(math.floor(-1 / scale) + 1)
        values = np.clip(1 - np.abs((np.arange(start, 2 - start) - ratio) * scale), 0, 1)
        return values / values.sum()

    return coeffs


def axis_matrix(size: int, out: int, scale: float, mode: str, coeffs, exclude_outside: bool,
                roi: tuple[float, float] | None) -> tuple[np.ndarray, np.ndarray]:
    """The (out x size) interpolation matrix of one axis and the rows to extrapolate."""
    width = scale * size
    y = np.arange(out, dtype=np.float64)
    extrapolated = np.zeros(out, dtype=bool)
    if mode == "align_corners":
        x = np.zeros(out) if width == 1 else y * (size - 1) / (width - 1)
    elif mode == "asymmetric":
        x = y / scale
    elif mode == "tf_crop_and_resize":
        start, end = roi
        x = np.full(out, (end - start) * (size - 1) / 2) if width == 1 else y * (end - start) * (size - 1) / (width - 1)
        x = x + start * (size - 1)
        extrapolated = (x < 0) | (x > size - 1)
    elif mode == "pytorch_half_pixel":
        x = np.full(out, -0.5) if width == 1 else (y + 0.5) / scale - 0.5
    elif mode == "half_pixel":
        x = (y + 0.5) / scale - 0.5
    else:  # half_pixel_symmetric
        offset = size / 2 * (1 - out / width)
        x = offset + (y + 0.5) / scale - 0.5
    floor = np.floor(x)
    ratios = np.where(x == floor, 1.0, x - floor)
    rows = [np.asarray(coeffs(float(r), scale), dtype=np.float64) for r in ratios]
    n = len(rows[0]) if rows else 2
    pad = math.ceil(n / 2)
    padded = x + pad
    p = np.floor(padded)
    frac = padded - p
    if n % 2 == 0:
        offset = np.where(frac == 0, -(n // 2), -(n // 2) + 1)
    else:
        offset = np.where(frac <= 0.5, -((n - 1) // 2), -((n - 1) // 2) + 1)
    neighbours = (p + offset).astype(np.int64)[:, None] + np.arange(n)[None, :] - pad
    matrix = np.zeros((out, size))
    for o, (row, taps) in enumerate(zip(rows, neighbours)):
        if exclude_outside:
            row = np.where((taps < 0) | (taps >= size), 0.0, row)
            total = row.sum()
            row = row / (total if total != 0 else 1.0)
        for c, t in zip(row, np.clip(taps, 0, size - 1)):
            matrix[o, t] += c
    return matrix, extrapolated


class _Plan:
    """What a node asks for, with the matrices built per input shape."""

    def __init__(self, node: OnnxNode, version: int):
        attrs = node.attributes
        self.mode = attrs.get("mode", "nearest")
        self.coordinates = attrs.get("coordinate_transformation_mode", "half_pixel" if version >= 11 else "asymmetric")
        if self.mode not in _MODES or self.coordinates not in _COORDINATES:
            raise Unsupported(f"Resize mode {self.mode!r} / {self.coordinates!r} is not supported")
        antialias = bool(attrs.get("antialias", 0))
        if self.mode == "nearest":
            nearest = attrs.get("nearest_mode", "round_prefer_floor")
            self.coeffs = _nearest(nearest)
        elif self.mode == "cubic":
            self.coeffs = _cubic(float(attrs.get("cubic_coeff_a", -0.75)), antialias)
        else:
            self.coeffs = _linear(antialias)
        self.exclude_outside = bool(attrs.get("exclude_outside", 0))
        self.extrapolation = float(attrs.get("extrapolation_value", 0.0))
        self.axes = attribute(node, "axes", None) or None
        self.policy = attrs.get("keep_aspect_ratio_policy", "stretch")
        self.version = version
        self._cache: dict = {}

    def sizes_and_scales(self, shape: list[int], scales: list[float] | None,
                         sizes: list[int] | None) -> tuple[list[int], list[float], list[int]]:
        rank = len(shape)
        axes = [a % rank for a in self.axes] if self.axes else list(range(rank))
        full_scales = [1.0] * rank
        full_sizes = list(shape)
        if sizes:
            for axis, size in zip(axes, sizes):
                full_sizes[axis] = int(size)
            full_scales = [full_sizes[i] / shape[i] for i in range(rank)]
            if self.policy != "stretch":
                picked = [full_scales[a] for a in axes]
                scale = min(picked) if self.policy == "not_larger" else max(picked)
                full_scales = [scale if i in axes else 1.0 for i in range(rank)]
                full_sizes = [int(scale * shape[i] + 0.5) if i in axes else shape[i] for i in range(rank)]
        else:
            for axis, scale in zip(axes, scales):
                full_scales[axis] = float(scale)
            full_sizes = [int(full_scales[i] * shape[i]) for i in range(rank)]
        return axes, full_scales, full_sizes

    def __call__(self, x: torch.Tensor, roi: torch.Tensor | None, scales: torch.Tensor | None,
                 sizes: torch.Tensor | None) -> torch.Tensor:
        shape = list(x.shape)
        scale_list = [float(s) for s in scales.reshape(-1).tolist()] if scales is not None and scales.numel() else None
        size_list = [int(s) for s in sizes.reshape(-1).tolist()] if sizes is not None and sizes.numel() else None
        roi_list = [float(r) for r in roi.reshape(-1).tolist()] if roi is not None and roi.numel() else None
        axes, full_scales, full_sizes = self.sizes_and_scales(shape, scale_list, size_list)
        rank = len(shape)
        if roi_list is not None and self.axes:
            full = [0.0] * rank + [1.0] * rank
            for i, axis in enumerate(axes):
                full[axis], full[rank + axis] = roi_list[i], roi_list[len(axes) + i]
            roi_list = full
        result = x if x.dtype == torch.float64 else x.to(torch.float32)
        for axis in axes:
            axis_roi = (roi_list[axis], roi_list[axis + rank]) if roi_list is not None else None
            if (math.isclose(full_scales[axis], 1.0) and full_sizes[axis] == result.shape[axis]
                    and (axis_roi is None or self.coordinates != "tf_crop_and_resize" or axis_roi == (0.0, 1.0))):
                continue
            key = (axis, result.shape[axis], full_sizes[axis], full_scales[axis], axis_roi)
            if key not in self._cache:
                self._cache[key] = axis_matrix(result.shape[axis], full_sizes[axis], full_scales[axis],
                                               self.coordinates, self.coeffs, self.exclude_outside,
                                               axis_roi if self.coordinates == "tf_crop_and_resize" else None)
            matrix, extrapolated = self._cache[key]
            weights = torch.as_tensor(matrix, dtype=result.dtype, device=x.device)
            moved = torch.movedim(result, axis, -1) @ weights.T
            if extrapolated.any():
                mask = torch.as_tensor(extrapolated, device=x.device)
                moved = torch.where(mask, torch.full_like(moved, self.extrapolation), moved)
            result = torch.movedim(moved, -1, axis)
        if not x.is_floating_point():
            result = torch.round(result)
        return result.to(x.dtype)


@converter("Resize", 10, "every mode", replace=True)
def _resize(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:  # noqa: ARG001
    plan = _Plan(node, version)
    if version == 10:
        return function_result(node, lambda x, scales: plan(x, None, scales, None))
    return function_result(node, lambda x, roi=None, scales=None, sizes=None: plan(x, roi, scales, sizes))


@converter("Upsample", 7, "as Resize 10", until=9, replace=True)
def _upsample(node: OnnxNode, graph: OnnxGraph, version: int) -> OperationConverterResult:  # noqa: ARG001
    plan = _Plan(node, 10)
    if plan.mode == "nearest":
        plan.coeffs = _nearest("floor")  # Upsample's nearest takes the floor of the source coordinate
    if version == 7:
        scales = torch.tensor(node.attributes["scales"], dtype=torch.float32)
        return function_result(node, lambda x: plan(x, None, scales, None))
    return function_result(node, lambda x, scales: plan(x, None, scales, None))
