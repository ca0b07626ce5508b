"""The op table is generated from the registry: every registered op is in it with the file that serves it and
the reasons its rule's code gives; docs/ops.md is what `graphprune ops --markdown` prints now."""

from __future__ import annotations

import inspect
from pathlib import Path

from graphprune import ops
from graphprune.cli.main import main
from graphprune.ops.table import markdown, op_table

ROOT = Path(__file__).resolve().parents[2]


def test_every_registered_op_is_listed_with_its_rule_and_file():
    rows = op_table()
    assert sorted(f"{r.domain}::{r.op}" for r in rows) == ops.registered_ops()
    for row in rows:
        source = (ROOT / row.file).read_text()
        assert f"class {row.rule}(" in source, row


def test_reasons_come_from_the_rule_source():
    rows = {(r.domain, r.op): r for r in op_table()}
    assert "DepthToSpace/PixelShuffle moves channels into space" in rows["ai.onnx", "DepthToSpace"].reasons
    assert rows["ai.onnx", "DepthToSpace"].reasons == ("DepthToSpace/PixelShuffle moves channels into space",)
    assert "grouped Conv with unknown channel counts" in rows["ai.onnx", "Conv"].reasons
    # a reason a helper forwards (contrib's _freeze_unless) is found at the call site
    contrib = [r for (domain, _), r in rows.items() if domain == "com.microsoft"]
    assert all(not reason.startswith("<") for r in rows.values() for reason in r.reasons)
    assert any(r.reasons for r in contrib)
    rules = "".join(path.read_text() for path in (ROOT / "graphprune" / "ops").glob("*.py"))
    for row in rows.values():  # every reason is text the rules' code really holds (fields as written)
        assert inspect.getmodule(type(ops.lookup_rule(row.domain, row.op))).__file__.endswith(row.file)
        for reason in row.reasons:
            pieces = reason.replace(row.op, "{node.op_type}").split("{")[0], reason.split("{")[0]
            assert any(piece in rules for piece in pieces), (row.op, reason)


def test_docs_table_is_current():
    assert (ROOT / "docs" / "ops.md").read_text() == markdown(op_table()), \
        "docs/ops.md is stale: run `graphprune ops --markdown > docs/ops.md`"


def test_ops_command(capsys):
    assert main(["ops", "Conv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ai.onnx::Conv: Conv (graphprune/ops/conv.py)") and "grouped Conv" in out
    assert main(["ops", "NonMaxSuppression"]) == 1
    assert "not modelled" in capsys.readouterr().err
    assert main(["ops"]) == 0
    assert f"{len(op_table())} ops" in capsys.readouterr().out
