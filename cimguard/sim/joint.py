"""The joint certificate: how many samples can *one* chip misclassify at most?

A per-sample certificate (:mod:`cimguard.sim.certify`) proves samples one at a time, each against its own
worst chip, so it can never exceed the fraction of samples that no chip of the box flips.  The worst single
chip does better: the chips that flip different samples pull the same weights different ways.  This
module bounds the worst single chip directly.

For every sample the per-sample cascade left open and every class ``j`` no bound there ruled out, CROWN
with a centred split (:meth:`cimguard.sim.certify._Run.linear_in_weights`) gives a *row*, a bound linear in
the chip: ``z_y - z_j - t >= c + g·u`` for every ``u = ΔW / R`` in ``[-1, 1]^n`` (``t`` the certify
tolerance).  A chip misclassifies the sample only if one of its rows is ``<= 0`` there.

Two rows ``r`` and ``s`` of different samples *conflict* when no chip puts both at or below zero.  For any
``μ > 0`` the weighted sum ``μ(c_r + g_r·u) + (c_s + g_s·u)`` is at least ``μ c_r + c_s - |μ g_r + g_s|_1``
on the box, so the rows conflict when that is positive; ``μ`` runs over :data:`WEIGHTS`.  Every set of
samples one chip misclassifies then picks one row per sample, no two of them conflicting, so its size is at
most the optimum of the set-packing program

    maximise Σ_r z_r   over z_r in {0, 1}
    subject to Σ_{r of sample i} z_r <= 1,   z_r + z_s <= 1 for every conflicting pair,

which HiGHS (through :func:`scipy.optimize.milp`) solves.  Its dual bound is a proof at any point, so the
search stops at a node limit (deterministic, unlike a time limit) with the bound, never the best packing.
"Open samples" include those the nominal chip already misclassifies: they too may be right on the worst
chip, and the packing decides.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from cimguard.errors import CimguardError

#: The weights ``μ`` of the pair test (``μ`` and ``1/μ`` both, through the pair's two orders).
WEIGHTS: tuple[float, ...] = (1.0, 2.0)

#: A pair conflicts only when its bound exceeds this times the scale of its terms (float64 rounding).
PAIR_SLACK = 1e-9

#: The packing's dual bound is rounded down to an integer only after adding this (its LP is floating point).
DUAL_MARGIN = 1e-3

#: Branch-and-bound nodes HiGHS may explore; the dual bound at the limit is still a proof.
NODE_LIMIT = 10_000

#: The pair test costs ``rows² · n``; above this many elements it is skipped and every open sample counts as
#: misclassified (sound, and the per-sample bound again): the joint certificate is for the last few dozen
#: samples a per-sample proof leaves, not for a box that leaves most samples open.
PAIR_BUDGET = 1 << 33

#: Rows tested against each other at once (memory: this × rows × n float64).
_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class JointRows:
    """The linear bounds of the open (sample, class) pairs, one row each."""

    constants: np.ndarray
    """``c`` per row: the bound at the nominal chip, less the sample's certify tolerance."""
    gradients: np.ndarray
    """``g`` per row, ``(rows, n)``: the coefficient of ``u = ΔW / R`` (every mapped weight)."""
    owners: np.ndarray
    """The sample each row belongs to (its index into the evaluation set)."""


@dataclass(frozen=True)
class JointBound:
    """At most ``flips`` of the ``open_samples`` are misclassified by any one chip of the box."""

    flips: int
    """Proved: no chip of the box misclassifies more of the open samples than this."""
    found: int
    """The largest packing the search found (``flips`` cannot be proved below it this way)."""
    open_samples: int
    rows: int
    optimal: bool
    """True when the search closed (``flips == found``) before its node limit."""
    skipped: bool = False
    """The rows were too many for the pair test (:data:`PAIR_BUDGET`): every open sample is counted."""

    @classmethod
    def every_open_sample(cls, open_samples: int, rows: int) -> "JointBound":
        """The bound without the pair test: all of them."""
        return cls(open_samples, 0, open_samples, rows, False, True)


def conflicts(rows: JointRows) -> np.ndarray:
    """The conflicting pairs ``(r, s)``, ``r < s``, of rows of different samples (see the module docstring)."""
    count = len(rows.constants)
    if count == 0:
        return np.zeros((0, 2), dtype=np.int64)
    c = torch.from_numpy(rows.constants)
    g = torch.from_numpy(rows.gradients)
    found = torch.zeros(count, count, dtype=torch.bool)
    step = max(1, _CHUNK_ELEMENTS // max(1, count * g.shape[1]))
    for weight in WEIGHTS:
        for begin in range(0, count, step):
            # (chunk, 1, n) against (1, rows, n): μ g_r + g_s for every r of the chunk and every s.
            mixed = weight * g[begin:begin + step, None] + g[None]
            bound = weight * c[begin:begin + step, None] + c[None] - mixed.abs().sum(dim=2)
            scale = (weight * c[begin:begin + step, None].abs() + c[None].abs()
                     + weight * g[begin:begin + step].abs().sum(dim=1)[:, None] + g.abs().sum(dim=1)[None])
            found[begin:begin + step] |= bound > PAIR_SLACK * scale
    found |= found.clone().T
    owners = torch.from_numpy(rows.owners)
    found &= owners[:, None] != owners[None, :]
    return torch.nonzero(torch.triu(found, diagonal=1)).numpy()


def solve(rows: JointRows, node_limit: int = NODE_LIMIT) -> JointBound:
    """Bound the number of open samples one chip misclassifies (the set packing of the module docstring)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_matrix, vstack

    count = len(rows.constants)
    samples = np.unique(rows.owners)
    if count == 0:
        return JointBound(0, 0, 0, 0, True)
    if count * count * rows.gradients.shape[1] > PAIR_BUDGET:
        return JointBound.every_open_sample(len(samples), count)
    if not (np.all(np.isfinite(rows.constants)) and np.all(np.isfinite(rows.gradients))):
        raise CimguardError("cannot certify jointly: a linear bound is not finite")
    pairs = conflicts(rows)
    per_sample = csr_matrix((np.ones(count), (np.searchsorted(samples, rows.owners), np.arange(count))),
                            shape=(len(samples), count))
    exclusive = csr_matrix((np.ones(2 * len(pairs)), (np.repeat(np.arange(len(pairs)), 2), pairs.ravel())),
                           shape=(len(pairs), count))
    result = milp(-np.ones(count), constraints=LinearConstraint(vstack([per_sample, exclusive]), -np.inf, 1),
                  integrality=np.ones(count), bounds=Bounds(0, 1),
                  options={"node_limit": node_limit, "disp": False})
    dual = getattr(result, "mip_dual_bound", None)
    if dual is None or not math.isfinite(dual):
        # No proof at all (stopped before its first relaxation): every open sample counts as misclassified.
        return JointBound(len(samples), 0, len(samples), count, False)
    # The optimum is an integer at most the dual bound; the margin covers the LP's floating-point error (unit
    # coefficients, a few hundred variables: far below it), so rounding down never cuts below the optimum.
    flips = min(len(samples), int(math.floor(-dual + DUAL_MARGIN)))
    found = 0 if result.fun is None else int(round(-result.fun))
    return JointBound(flips, found, len(samples), count, result.status == 0)
