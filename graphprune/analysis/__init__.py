"""Analysis: propagate channel dimensions through every op (`graphprune.ops`) and group what is coupled —
channels, heads, neurons, the hidden dimension, experts, residual blocks — freezing what cannot be proven safe.
Also the plan format (which units of which groups go) and masking (units switched off in place)."""

from graphprune.analysis.coupling import GQA_UNITS, Analysis, analyze

__all__ = ["GQA_UNITS", "Analysis", "analyze"]
