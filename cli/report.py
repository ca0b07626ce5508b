"""What `prune` and `apply` tell the user: costs before/after, widths per pruned group, frozen groups by reason,
what was verified and how far the outputs moved — as text, or as one JSON document with --json."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import Counter

from graphprune.cli.table import human, ratio, render
from graphprune.io import runtime
from graphprune.passes.allocation.latency import TOLERANCE
from graphprune.passes.pipeline.prune import PruneResult
from graphprune.verify.polynomial import names_in, size_of


def widths(result: PruneResult) -> list[dict]:
    """Every pruned group: its layer, kind and width before/after."""
    rows = []
    for gid, units in sorted(result.plan.removed.items()):
        group = result.groups[gid]
        rows.append({"group": gid, "kind": group.kind, "layer": group.layer, "label": group.label,
                     "before": group.size, "after": group.size - len(units)})
    return rows


def kind_summary(result: PruneResult) -> list[dict]:
    """Per group kind: prunable groups, groups pruned, and units before/after across the prunable ones."""
    removed = result.plan.removed
    rows = {}
    for group in result.groups:
        if group.frozen:
            continue
        row = rows.setdefault(group.kind, {"kind": group.kind, "groups": 0, "pruned": 0, "before": 0, "after": 0})
        cut = len(removed.get(group.id, ()))
        row["groups"] += 1
        row["pruned"] += bool(cut)
        row["before"] += group.size
        row["after"] += group.size - cut
    return list(rows.values())


def frozen_summary(result: PruneResult) -> dict[str, int]:
    """Frozen groups counted by their first reason, most common first."""
    return dict(Counter(g.frozen_reasons[0] for g in result.groups if g.frozen).most_common())


def as_json(result: PruneResult, args: argparse.Namespace, how: str, replayed: bool = False) -> dict:
    check = result.verification
    return {
        "output": None if result.dry_run else str(args.output),
        "plan": args.save_plan if getattr(args, "save_plan", None) else None,
        "dry_run": result.dry_run,
        "how": how,
        "before": result.before.row(),
        "after": result.after.row(),
        "groups": widths(result),
        "kinds": kind_summary(result),
        "groups_total": len(result.groups),
        "frozen": frozen_summary(result),
        "calibration": result.plan.meta.get("calibration"),
        "latency": result.plan.meta.get("latency"),
        "quality": result.plan.meta.get("quality"),
        "reconstruction": result.plan.meta.get("reconstruction"),
        "validation": result.plan.meta.get("validation"),
        "fusion": result.fusion,
        "warnings": missed(result, replayed),
        "verification": None if check is None else {"passed": check.passed, "not_verified": check.skipped,
                                                    "drift": check.drift, "inputs": check.inputs},
    }


DRIFT_WARNING = 0.5  # an output drift from this size (half the outputs' range) is said to be large


def _tokens_line(tokens: dict, dims: dict[str, int]) -> str:
    """What token reduction did: the rate(s), the method, tokens kept before each block, what reads them."""
    schedule = tokens["schedule"]
    per_block = isinstance(schedule["keep"], (list, tuple))
    kept = ", ".join(f"before block {site['block']}: {_token_count(site, dims)}"
                     + (f" (keep {site['keep']:g})" if per_block else "") for site in tokens["sites"])
    how = "merged (ToMe, proportional attention)" if schedule.get("method") == "merge" else \
        f"by {schedule['score']} attention"
    rate = "rates chosen per block" if per_block else f"{schedule['keep']:g} each time"
    measured = tokens.get("measured")
    chosen = _measured_line(measured) if measured else ""
    return (f"tokens kept ({rate}, {how}, first {schedule['protect']} protected): {kept}"
            + (f"; read by {', '.join(tokens['pooled'])}" if tokens["pooled"] else "")
            + (f"; dropped tokens restored in {', '.join(tokens['restored'])}" if tokens["restored"] else "") + chosen)


def _measured_line(measured: dict) -> str:
    """How the token rates were chosen: alone to a MACs target, or in one budget with the widths."""
    target = f"MACs {measured['target']:.3g}" + (f" (the fraction whose timed latency meets {measured['latency']:g})"
                                                 if measured.get("latency") else "")
    if measured.get("joint"):
        return (f"\none budget over tokens and widths for {target} of the dense model's: reached "
                f"{measured['macs']:.3f} (the token rates alone leave {measured['tokens_alone']:.3f}, the widths "
                f"alone {measured['widths_alone']:.3f}); predicted output error {measured['error']:.3g} = tokens "
                f"{measured['token_error']:.3g} + widths {measured['width_error']:.3g} (relative squared, added "
                f"from one-at-a-time measurements on the calibration data; {measured['evaluations']} token runs)")
    return (f"\ntoken rates measured for {target} of the dense model's: reached {measured['macs']:.3f}, output error "
            f"{measured['error']:.3g} (relative squared, on the measuring inputs; {measured['evaluations']} runs)")


def _token_count(site: dict, dims: dict[str, int]) -> str:
    """"K of N tokens" for one reduction site; for a symbolic count, at the --dim sizes that name it."""
    before, kept = site["before"], site["kept"]
    if isinstance(kept, int):
        return f"{kept} of {before} tokens"
    names = sorted(names_in(kept))
    if not names or not all(name in dims for name in names):
        return f"{kept} tokens (--dim {'/'.join(names)}=N gives the count)"
    return f"{size_of(kept, dims)} of {size_of(str(before), dims)} tokens " \
        f"({', '.join(f'{n}={dims[n]}' for n in names)})"


def report(result: PruneResult, args: argparse.Namespace, how: str, replayed: bool = False) -> None:
    """Print the run's outcome (JSON with --json); warnings go to stderr. `replayed`: a saved plan was applied,
    so what the plan records of its own making (latency probes) is shown as such, not as measured now."""
    check = result.verification
    if check is not None and not check.passed:
        print("graphprune: warning: the output passed no check (the original fails them all); see 'not verified'",
              file=sys.stderr)
    for warning in missed(result, replayed):
        print(f"graphprune: warning: {warning}", file=sys.stderr)
    if args.json:
        print(json.dumps(as_json(result, args, how, replayed), indent=1))
        return
    b, a = result.before, result.after
    projected = " (projected)" if result.dry_run else ""
    print(render(["", "before", f"after{projected}", "ratio"], [
        ["params", human(b.params), human(a.params), ratio(a.params, b.params)],
        ["MACs", human(b.macs), human(a.macs), ratio(a.macs, b.macs)],
        ["file bytes", human(b.bytes), human(a.bytes), ratio(a.bytes, b.bytes)],
    ]))
    if b.formula is not None and b.formula.symbols():
        sizes = ", ".join(f"{name}={dict(args.dim).get(name, 1)}" for name in sorted(b.formula.free_sizes()))
        print(f"MACs at {sizes} (--dim NAME=VALUE sets them); before: {b.formula}"
              + (f"; after: {a.formula}" if a.formula is not None else ""))
    rows = [[r["group"], r["kind"], r["layer"], f"{r['before']} -> {r['after']}"] for r in widths(result)]
    if rows:
        print("\n" + render(["group", "kind", "layer", "width"], rows))
    kinds = [[k["kind"], f"{k['pruned']} of {k['groups']}", f"{k['before']} -> {k['after']}"]
             for k in kind_summary(result)]
    if kinds:
        print("\n" + render(["kind", "groups pruned", "units (prunable groups)"], kinds))
    frozen = frozen_summary(result)
    if frozen:
        print(f"\nfrozen: {sum(frozen.values())} group(s), by reason:")
        for reason, count in frozen.items():
            print(f"  {count} × {reason}")
    done = "dry run, nothing written" if result.dry_run else f"wrote {args.output}"
    print(f"\npruned {result.groups_pruned} of {len(result.groups)} groups ({how}); {done}")
    calibration = result.plan.meta.get("calibration")
    if calibration:
        print(f"calibration: {calibration['samples']} samples, {calibration['source']}")
    if result.fusion is not None:
        fused = ", ".join(f"{n} {op}" for op, n in sorted(result.fusion["fused"].items())) or "nothing"
        kept = "kept" if result.fusion["kept"] else "not kept"
        error = f", max relative error {result.fusion['error']:.2g}" if "error" in result.fusion else ""
        print(f"optimize: fused {fused}; {kept}{error}")
    latency = result.plan.meta.get("latency")
    if latency:
        probes = ", ".join(f"{p['flops']:.2f}→{p['latency']:.2f}" for p in latency["probes"])
        when = "measured when the plan was made" if replayed else "measured"
        searched = "kept layer ms" if result.plan.meta.get("cost") == "ms" else "FLOPs"
        print(f"latency: {latency['measured']:.3f}x the dense model's, {when} (target {latency['target']:g}); "
              f"probes, {searched}→latency: {probes}")
    quality = result.plan.meta.get("quality")
    if quality:
        print(f"quality floor: held-out error {quality['held_out_error']:.4g} (at most {quality['max_error']:g}; "
              f"{quality['held_out_batches']} held-out calibration batches, units masked before any refit)")
    chosen = result.plan.meta.get("validation")
    if chosen:
        errors = ", ".join(f"{name} {error:.4g}" for name, error in chosen["held_out_errors"].items())
        print(f"method: {chosen['chosen']}, the least output error on {chosen['held_out_batches']} held-out "
              f"calibration batch(es) ({errors}); its weights then fitted on all the batches")
    tokens = result.plan.meta.get("tokens")
    if tokens and tokens.get("sites"):
        print(_tokens_line(tokens, dict(args.dim)))
    elif tokens and tokens.get("measured"):
        print("tokens kept: all (the widths cost less output error per MAC)" + _measured_line(tokens["measured"]))
    rebuilt = result.plan.meta.get("reconstruction")
    if rebuilt:
        print(f"reconstruction: {rebuilt['stages']} stages, {rebuilt['layers refit']} layers refit, "
              f"{rebuilt['groups re-picked']} groups re-picked, {rebuilt['seconds']} s, statistics "
              f"{rebuilt['statistics MiB']} MiB at most")
    if getattr(args, "save_plan", None):
        print(f"plan: {args.save_plan}")
    if check is None:
        return
    print(f"verified: {', '.join(check.passed) or 'nothing'}")
    for note in check.skipped:
        print(f"not verified: {note}")
    if check.drift is not None:
        print(f"output drift vs the original: {check.drift:.3g} (max relative error, {check.inputs})")


def missed(result: PruneResult, replayed: bool = False) -> list[str]:
    """What the result says it fell short of: a latency target missed by more than the search's tolerance, an
    output drift large enough that the pruned model is unlikely to do the original's job."""
    warnings = []
    latency = result.plan.meta.get("latency")
    if latency and not replayed and abs(latency["measured"] - latency["target"]) > TOLERANCE * latency["target"]:
        warnings.append(f"the measured latency, {latency['measured']:.3f}x the dense model's, misses the target "
                        f"{latency['target']:g} by more than {TOLERANCE:.0%} (no probe landed closer; the "
                        "nearest under the target was kept)")
    drift = result.verification.drift if result.verification is not None else None
    if drift is not None and drift >= DRIFT_WARNING:
        warnings.append(f"the outputs drift {drift:.3g} (max relative error, {result.verification.inputs}) from the "
                        "original's: check the pruned model on real data (--feeds), calibrate with --calib, or prune "
                        "less")
    return warnings


def bench_summary(models: list[str], times: list[list[float]], rounds: int) -> dict:
    """min/median/max per model and, for two models, the ratio of medians with its spread over the `rounds`
    blocks the runs were interleaved in."""
    summary: dict = {"models": [{"model": m, "min_ms": min(t), "median_ms": statistics.median(t), "max_ms": max(t),
                                 "runs": len(t)} for m, t in zip(models, times, strict=True)]}
    if len(times) == 2:
        per_round = runtime.round_ratios(times[0], times[1], rounds)
        summary["ratio"] = {"median": statistics.median(per_round), "min": min(per_round), "max": max(per_round)}
    return summary
