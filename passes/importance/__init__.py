"""Importance criteria; importing registers them all."""

from graphprune.passes.importance import activation, experts, magnitude, obs, policy  # noqa: F401
from graphprune.passes.importance.registry import (
    Criterion,
    criteria_for,
    criterion_class,
    get_criterion,
    needs_data,
    register_criterion,
)

__all__ = ["Criterion", "criteria_for", "criterion_class", "get_criterion", "needs_data", "register_criterion"]
