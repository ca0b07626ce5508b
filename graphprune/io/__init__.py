"""Models in and out: loading (external data kept lazy), atomic saving, scratch memory, output locations and
ONNX Runtime sessions."""

from graphprune.io.load import load_model
from graphprune.io.save import save_model

__all__ = ["load_model", "save_model"]
