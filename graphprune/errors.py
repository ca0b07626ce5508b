"""Errors graphprune raises for unusable input; the CLI turns them into one clear line."""


class GraphpruneError(Exception):
    """Base class: the input or the request cannot be processed."""


class ModelLoadError(GraphpruneError):
    """The file is missing, truncated, or not an ONNX model."""


class PlanError(GraphpruneError):
    """A pruning plan does not fit the model it is applied to."""
