"""Shared fixtures: reference models exported once per test session with each torch exporter."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

logging.getLogger("torch").setLevel(logging.ERROR)


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """exported(name, dynamo) -> path of reference model `name` exported by that exporter (cached)."""
    torch = pytest.importorskip("torch")
    from graphprune.models.reference import export_reference

    torch.set_num_threads(1)
    cache: dict[tuple[str, bool], Path] = {}
    folder = tmp_path_factory.mktemp("exported")

    def get(name: str, dynamo: bool) -> Path:
        key = (name, dynamo)
        if key not in cache:
            cache[key] = export_reference(name, dynamo, folder)
        return cache[key]

    return get
