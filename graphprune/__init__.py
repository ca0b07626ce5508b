"""graphprune: structured pruning compiler for ONNX graphs.

Core (this package), one folder per stage: `io` (load, save, ONNX Runtime), `canonicalize`, `ops` (the op
dimension-rule registry), `analysis` (groups, plans, masking), `verify` (checks, drift, cost). Passes
(calibration, importance, allocation, rewrite, the end-to-end pipeline) live in `graphprune.passes`; the
command line in `graphprune.cli`; reference models in `graphprune.models`.
"""

import importlib

__version__ = "0.1.0"

_EXPORTS = {  # name -> module; imported on first use, so `import graphprune.cli.entry` stays light
    "Analysis": "graphprune.analysis.coupling", "analyze": "graphprune.analysis.coupling",
    "Group": "graphprune.analysis.groups", "Member": "graphprune.analysis.groups",
    "PruningPlan": "graphprune.analysis.plan", "GraphpruneError": "graphprune.errors",
    "ModelLoadError": "graphprune.errors", "PlanError": "graphprune.errors",
    "load_model": "graphprune.io.load", "save_model": "graphprune.io.save",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'graphprune' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
