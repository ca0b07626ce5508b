"""Verify and measure: checker and ONNX Runtime checks against the original, output drift, params and MACs."""

from graphprune.verify.checks import Verification, VerificationError, check, verify_like

__all__ = ["Verification", "VerificationError", "check", "verify_like"]
