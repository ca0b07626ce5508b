"""Errors graphprune raises for unusable input; the CLI turns them into one clear line."""


class GraphpruneError(Exception):
    """Base class: the input or the request cannot be processed."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries such as ONNX Runtime append pages of context), or
    its type name when the message is empty."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class ModelLoadError(GraphpruneError):
    """The file is missing, truncated, or not an ONNX model."""


class PlanError(GraphpruneError):
    """A pruning plan does not fit the model it is applied to."""
