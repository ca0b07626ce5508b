"""Op dimension rules; importing this package registers every rule module."""

from graphprune.ops import (  # noqa: F401
    contrib,
    conv,
    einsum,
    elementwise,
    frozen,
    layout,
    linear,
    moe,
    norm,
    pool,
    quantized,
    recurrent,
    reduce,
    repeat,
    resize,
    shape,
    slicing,
)
from graphprune.ops.registry import (
    CoupleContext,
    Dim,
    OpRule,
    Port,
    RewriteContext,
    lookup,
    lookup_rule,
    register,
    registered_ops,
)

__all__ = ["CoupleContext", "Dim", "OpRule", "Port", "RewriteContext", "lookup", "lookup_rule", "register",
           "registered_ops"]
