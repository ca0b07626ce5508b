"""graphprune: structured pruning compiler for ONNX graphs.

Core (this package): IR loading/saving, the op dimension-rule registry, dependency analysis into groups,
pruning plans, ONNX Runtime helpers, verification and cost metrics. Passes (scoring, allocation, rewrite,
the end-to-end pipeline) live in `graphprune.passes`; the command line in `graphprune.cli`.
"""

from graphprune.analysis import Analysis, analyze
from graphprune.errors import GraphpruneError, ModelLoadError, PlanError
from graphprune.groups import Group, Member
from graphprune.io import load_model, save_model
from graphprune.plan import PruningPlan

__version__ = "0.1.0"

__all__ = [
    "Analysis", "GraphpruneError", "Group", "Member", "ModelLoadError", "PlanError", "PruningPlan",
    "analyze", "load_model", "save_model",
]
