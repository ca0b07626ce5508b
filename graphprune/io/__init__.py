"""Models in and out: loading (external data kept lazy), atomic saving, scratch memory, output locations and
ONNX Runtime sessions."""
