"""graphprune: structured pruning compiler for ONNX graphs.

Core (this package), one folder per stage: `io` (load, save, ONNX Runtime), `canonicalize`, `ops` (the op
dimension-rule registry), `analysis` (groups, plans, masking), `verify` (checks, drift, cost). Passes
(calibration, importance, allocation, rewrite, the end-to-end pipeline) live in `graphprune.passes`; the
command line in `graphprune.cli`; reference models in `graphprune.models`.
"""

from graphprune.analysis.coupling import Analysis, analyze
from graphprune.analysis.groups import Group, Member
from graphprune.analysis.plan import PruningPlan
from graphprune.errors import GraphpruneError, ModelLoadError, PlanError
from graphprune.io.load import load_model
from graphprune.io.save import save_model

__version__ = "0.1.0"

__all__ = [
    "Analysis", "GraphpruneError", "Group", "Member", "ModelLoadError", "PlanError", "PruningPlan",
    "analyze", "load_model", "save_model",
]
