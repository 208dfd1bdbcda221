"""cimguard's onnx2torch converters: one module per operator family.

Importing this package registers every converter once, through onnx2torch's own registry
(:mod:`cimguard.onnx.converters.registry`); ``cimguard.onnx.model`` imports it before any
conversion.  Three kinds of additions:

* **aliases**: a newer operator version whose schema has the same inputs, outputs and
  attributes as the newest version onnx2torch converts (the change only widened the
  element types) reuses that converter (:func:`register_signature_aliases`);
* **checked aliases**: a newer version that added an input or attribute reuses the old
  converter when the node does not use the new feature, and is refused otherwise;
* **cimguard's converters**: operators (or versions) onnx2torch lacks, and operators it
  converts wrongly for some attributes (routed to cimguard's domain by legalisation).

A node a converter cannot reproduce exactly is refused in one line naming the operator
and the reason (:class:`~cimguard.onnx.converters.registry.Unsupported`).
"""

from __future__ import annotations

from cimguard.onnx.converters import (  # noqa: F401 - each module registers its family
    activations,
    attention,
    indexing,
    linear_algebra,
    normalization,
    pooling,
    recurrent,
    reduce,
    resize,
    sampling,
    shape,
)
from cimguard.onnx.converters.registry import (
    ADDED,
    CIMGUARD_DOMAIN,
    CIMGUARD_DOMAIN_VERSION,
    Unsupported,
    register_signature_aliases,
    route_own_converters,
)

register_signature_aliases()

__all__ = ["ADDED", "CIMGUARD_DOMAIN", "CIMGUARD_DOMAIN_VERSION", "Unsupported", "route_own_converters"]
