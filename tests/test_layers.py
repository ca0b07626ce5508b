"""The folder layout is the architecture: each stage's folder imports only the stages below it, so data flows one
way and there is no import loop. A module that reaches up the order fails here, naming the import."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# bottom to top; a module may import its own layer and those listed before it
LAYERS = [
    ["graphprune.errors", "graphprune.progress"],
    ["graphprune.ir"],
    ["graphprune.ops"],
    ["graphprune.canonicalize"],
    ["graphprune.io"],
    ["graphprune.analysis"],
    ["graphprune.verify"],
    ["graphprune.passes.calibration"],
    ["graphprune.passes.importance"],
    ["graphprune.passes.rewrite"],
    ["graphprune.passes.allocation"],
    ["graphprune.passes.pipeline"],
    ["graphprune.models"],
    ["graphprune.cli"],
]
FACADES = {"graphprune", "graphprune.passes"}  # package roots that re-export for users, importing any layer
FOLDERS = {"graphprune": ROOT / "graphprune", "graphprune.passes": ROOT / "passes", "graphprune.cli": ROOT / "cli",
           "graphprune.models": ROOT / "models"}


def layer_of(module: str) -> int | None:
    found = [i for i, names in enumerate(LAYERS) for name in names if module == name or module.startswith(name + ".")]
    return max(found) if found else None


def modules() -> list[tuple[str, Path]]:
    found = []
    for package, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            if "data" in path.relative_to(folder).parts:
                continue
            rel = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *rel)).removesuffix(".__init__")
            if package == "graphprune" and rel[0] in ("passes", "cli", "models"):
                continue
            found.append((name, path))
    return sorted(found)


def imported(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every graphprune import in the file, at any depth (lazy imports count too)."""
    result = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("graphprune"):
            result += [(node.lineno, node.module)] + [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
        elif isinstance(node, ast.Import):
            result += [(node.lineno, a.name) for a in node.names if a.name.startswith("graphprune")]
    return result


def test_every_module_sits_in_a_layer():
    assert [name for name, _ in modules() if name not in FACADES and layer_of(name) is None] == []


@pytest.mark.parametrize("name, path", modules(), ids=[name for name, _ in modules()])
def test_imports_only_reach_down(name, path):
    if name in FACADES:
        return
    mine = layer_of(name)
    upward = [f"line {line}: {target}" for line, target in imported(path)
              if (theirs := layer_of(target)) is not None and theirs > mine]
    assert upward == [], f"{name} ({LAYERS[mine][0]}) imports from a later stage"


def test_an_upward_import_is_found(tmp_path):
    """The check itself can fail: a rule module importing the pipeline, even lazily, is reported."""
    module = tmp_path / "rule.py"
    module.write_text("def f():\n    from graphprune.passes.pipeline.prune import prune_file\n")
    found = [target for _, target in imported(module) if layer_of(target) > layer_of("graphprune.ops.conv")]
    assert found == ["graphprune.passes.pipeline.prune", "graphprune.passes.pipeline.prune.prune_file"]
