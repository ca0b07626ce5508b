"""Op dimension rules; importing this package registers every rule module."""

from graphprune.ops import contrib, conv, einsum, elementwise, frozen, layout, linear, moe, norm, pool, resize, slicing  # noqa: F401
from graphprune.ops.registry import CoupleContext, Dim, OpRule, Port, RewriteContext, lookup, register, registered_ops

__all__ = ["CoupleContext", "Dim", "OpRule", "Port", "RewriteContext", "lookup", "register", "registered_ops"]
