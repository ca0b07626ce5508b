"""Importance criteria; importing registers them all."""

from graphprune.passes.importance import magnitude  # noqa: F401
from graphprune.passes.importance.registry import Criterion, criteria, get_criterion, register_criterion

__all__ = ["Criterion", "criteria", "get_criterion", "register_criterion"]
