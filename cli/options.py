"""Command-line value types and cross-option checks: every option is refused before any work starts."""

from __future__ import annotations

import argparse
from pathlib import Path

from graphprune.errors import GraphpruneError
from graphprune.io.outputs import check_location


def _number(text: str, kind: type) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None


def fraction(text: str) -> float:
    """A ratio to remove, in [0, 1)."""
    value = _number(text, float)
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1), got {text}")
    return value


def kept_fraction(text: str) -> float:
    """A fraction to keep or a cap, in (0, 1]."""
    value = _number(text, float)
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def positive_int(text: str) -> int:
    value = _number(text, int)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def nonzero(text: str) -> float:
    value = _number(text, float)
    if value == 0:
        raise argparse.ArgumentTypeError("must not be 0")
    return value


def dim(text: str) -> tuple[str, int]:
    """NAME=VALUE: the size of a symbolic input axis."""
    name, _, value = text.partition("=")
    if not name or not value:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    return name, positive_int(value)


def token_keep(text: str) -> float | str:
    """A fraction of tokens to keep, in (0, 1], or "auto" (rates measured per block to a --target-flops)."""
    return text if text == "auto" else kept_fraction(text)


def blocks(text: str) -> tuple[int, ...]:
    """B1,B2,…: block indices, each a positive integer."""
    return tuple(sorted({positive_int(v) for v in text.split(",")}))


def sweep(text: str) -> tuple[str, list[float]]:
    """METRIC=T1,T2,…: the cost a sweep varies (latency, params, flops) and its targets, each in (0, 1]."""
    metric, _, values = text.partition("=")
    if metric not in ("latency", "params", "flops") or not values:
        raise argparse.ArgumentTypeError(f"expected latency|params|flops=T1,T2,…, got {text!r}")
    return metric, [kept_fraction(v) for v in values.split(",")]


def existing_file(path: str | Path) -> None:
    """Raise unless `path` is a file, saying whether it is missing or a folder."""
    if Path(path).is_dir():
        raise GraphpruneError(f"{path} is a folder, not a file")
    if not Path(path).is_file():
        raise GraphpruneError(f"{path}: no such file")


def check(args: argparse.Namespace) -> None:
    """Checks that involve several options or the file system; raise GraphpruneError before any work."""
    for name in ("feeds", "plan", "tokenizer"):
        path = getattr(args, name, None)
        if path is not None:
            existing_file(path)
    if getattr(args, "output", None) is None and getattr(args, "dry_run", None) is False:
        raise GraphpruneError("prune needs -o/--output (or --dry-run)")
    channels = 1 if getattr(args, "grayscale", False) else 3
    for name in ("image_mean", "image_std"):
        values = getattr(args, name, None)
        if values is not None and len(values) not in (1, channels):
            raise GraphpruneError(f"--{name.replace('_', '-')} takes 1 or {channels} values, got {len(values)}")
    policy = getattr(args, "policy", None)
    if policy is not None and not Path(policy).exists():
        check_location(policy, "policy")
    models = getattr(args, "models", None)
    if models is not None and len(models) > 2:
        raise GraphpruneError("bench takes one or two models")
