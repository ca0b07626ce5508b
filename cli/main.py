"""The `graphprune` command: analyze, prune, bench, demo. A thin front end over the library."""

from __future__ import annotations

import argparse
import json
import sys

from graphprune import runtime
from graphprune.analysis import GQA_UNITS, analyze
from graphprune.cli.table import human, ratio, render
from graphprune.errors import GraphpruneError
from graphprune.io import load_model
from graphprune.passes.calibration import ImageSpec
from graphprune.passes.importance import criteria
from graphprune.passes.pipeline import (
    EXPERT_CRITERION,
    Allocation,
    CalibrationSpec,
    PruneResult,
    apply_file,
    prune_file,
)


def cmd_analyze(args: argparse.Namespace) -> int:
    analysis = analyze(load_model(args.model), allow_approximate=args.prune_hidden, gqa_units=args.gqa_units)
    if args.json:
        print(json.dumps([g.summary() for g in analysis.groups], indent=1))
        return 0
    rows = [
        [g.id, g.kind, g.size, human(g.params), "frozen" if g.frozen else "prunable", g.label,
         g.frozen_reasons[0] if g.frozen else g.detail()]
        for g in analysis.groups
    ]
    print(render(["id", "kind", "size", "params", "status", "anchor", "reason / detail"], rows))
    print(f"\n{len(analysis.groups)} groups, {len(analysis.prunable())} prunable")
    layers = [g for g in analysis.groups if g.experts is not None]
    if layers:
        print(f"\n{len(layers)} MoE layer(s):")
        for g in layers:
            status = f"frozen: {g.frozen_reasons[0]}" if g.frozen else "experts prunable with --expert-ratio"
            print(f"  group {g.id}: {g.size} experts, top-{g.experts.top_k}, router {g.label}; {status}")
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    kind_ratios = {kind: getattr(args, f"{kind}_ratio") for kind in KINDS if getattr(args, f"{kind}_ratio") is not None}
    spec = calibration_spec(args)
    target = None
    if args.target_params or args.target_flops:
        target = ("params", args.target_params) if args.target_params else ("flops", args.target_flops)
    allocation = Allocation(args.allocation, args.ratio, kind_ratios, args.round_to, args.max_layer_ratio, target,
                            args.expert_ratio)
    result = prune_file(args.model, args.output, args.criterion, args.ratio, args.round_to, args.seed,
                        kind_ratios, args.prune_hidden, spec, args.compensate, allocation,
                        {"policy_file": args.policy} if args.policy else None, args.gqa_units, args.expert_criterion,
                        args.expert_merge)
    if args.save_plan:
        result.plan.save(args.save_plan, result.groups)
    ratios = ", ".join([f"{args.allocation} ratio {args.ratio}" if not target else f"target {target[0]} {target[1]}"]
                       + [f"{kind} {value}" for kind, value in kind_ratios.items()]
                       + ([f"experts {args.expert_ratio} by {args.expert_criterion}"] if args.expert_ratio else []))
    report(result, args, f"{args.criterion}, {ratios}")
    return 0


def report(result: PruneResult, args: argparse.Namespace, how: str) -> None:
    """The before/after table and what was verified."""
    b, a = result.before, result.after
    print(render(["", "before", "after", "ratio"], [
        ["params", human(b.params), human(a.params), ratio(a.params, b.params)],
        ["MACs", human(b.macs), human(a.macs), ratio(a.macs, b.macs)],
        ["file bytes", human(b.bytes), human(a.bytes), ratio(a.bytes, b.bytes)],
    ]))
    print(f"\npruned {result.groups_pruned} of {len(result.groups)} groups ({how}); wrote {args.output}")
    print(f"verified: {', '.join(result.verification.passed) or 'nothing'}")
    for note in result.verification.skipped:
        print(f"not verified: {note}")


def calibration_spec(args: argparse.Namespace) -> CalibrationSpec:
    image = ImageSpec(tuple(args.image_size), tuple(args.image_mean), tuple(args.image_std), args.image_layout,
                      args.grayscale)
    return CalibrationSpec(args.calib, args.data_free, args.samples, args.batch_size, progress=True, image=image,
                           match_bn=args.match_bn)


def cmd_apply(args: argparse.Namespace) -> int:
    spec = calibration_spec(args)
    result = apply_file(args.model, args.plan, args.output, spec, args.compensate)
    report(result, args, f"plan {args.plan}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    rows, times = [], []
    for path in args.models:
        sess = runtime.session(path, threads=args.threads)
        ms = runtime.latency_ms(sess, runtime.random_feeds(sess, batch=args.batch), args.warmup, args.runs)
        times.append(ms)
        rows.append([path, f"{ms:.3f}"])
    print(render(["model", f"median ms (batch {args.batch})"], rows))
    if len(times) == 2:
        print(f"\nlatency ratio (second / first): {times[1] / times[0]:.3f}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from graphprune.models.demo import run_demo

    run_demo(ratio=args.ratio, criterion=args.criterion, round_to=args.round_to, output=args.output)
    return 0


KINDS = ("channel", "head", "neuron", "hidden")


def add_gqa_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gqa-units", choices=GQA_UNITS, default="kv-group",
                   help="grouped-query attention: remove whole KV groups, or the same query slot of every group")


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", help="calibration inputs: .npz keyed by input name, .npy (one input), .txt of "
                                   "token ids (one sequence per line), or a folder of images")
    p.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=(224, 224))
    p.add_argument("--image-mean", type=float, nargs="+", default=[0.0, 0.0, 0.0])
    p.add_argument("--image-std", type=float, nargs="+", default=[1.0, 1.0, 1.0])
    p.add_argument("--image-layout", choices=["NCHW", "NHWC"], default="NCHW")
    p.add_argument("--grayscale", action="store_true", help="images as one channel")
    p.add_argument("--data-free", action="store_true", help="calibrate on synthetic Gaussian inputs")
    p.add_argument("--match-bn", action="store_true",
                   help="data-free inputs with the per-channel moments the first Conv→BatchNormalization expects")
    p.add_argument("--samples", type=int, default=128, help="calibration samples (default 128)")
    p.add_argument("--batch-size", type=int, default=16, help="calibration batch size (default 16)")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=None,
                   help="compensate removed channels: consumer biases (flap) or OBS weight updates (obs); "
                        "default on for flap and obs (apply: as the plan was made)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="graphprune", description="Structured pruning of ONNX models.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("analyze", help="list channel groups and why any are frozen")
    p.add_argument("model")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--prune-hidden", action="store_true", help="treat approximate (hidden) groups as prunable")
    add_gqa_argument(p)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("prune", help="remove channels and write a smaller model")
    p.add_argument("model")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of each group to remove (default 0.5)")
    for kind in KINDS:
        p.add_argument(f"--{kind}-ratio", type=float, default=None, help=f"ratio for {kind} groups (default --ratio)")
    p.add_argument("--prune-hidden", action="store_true",
                   help="also prune the hidden dimension (approximate: normalisation statistics change)")
    add_gqa_argument(p)
    p.add_argument("--expert-ratio", type=float, default=0.0,
                   help="fraction of each MoE layer's experts to remove (default 0: keep all experts)")
    p.add_argument("--expert-criterion", choices=criteria(), default=EXPERT_CRITERION,
                   help=f"how experts are ranked (default {EXPERT_CRITERION}, weights only; router-frequency and "
                        "expert-output need --calib or --data-free)")
    p.add_argument("--expert-merge", action="store_true",
                   help="fold removed experts into their nearest surviving expert (router rows and weights "
                        "averaged by gate weight; approximate) instead of dropping them")
    p.add_argument("--criterion", choices=criteria(), default="l2")
    p.add_argument("--round-to", type=int, default=1, help="keep widths that are multiples of N")
    p.add_argument("--allocation", choices=["uniform", "global", "adaptive"], default="uniform",
                   help="same ratio per group; one threshold over normalised scores; FLAP-style by parameter cost")
    p.add_argument("--max-layer-ratio", type=float, default=0.99, help="never remove more of one group")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-params", type=float, help="keep this fraction of the parameters (exact)")
    target.add_argument("--target-flops", type=float, help="keep this fraction of the FLOPs/MACs (exact)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--policy", help="criterion policy: saved PruneNet policy to use, or where to save one trained now")
    add_calibration_arguments(p)
    p.add_argument("--save-plan", help="also write the pruning plan as JSON")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("apply", help="apply a saved pruning plan")
    p.add_argument("model")
    p.add_argument("plan")
    p.add_argument("-o", "--output", required=True)
    add_calibration_arguments(p)
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("bench", help="ONNX Runtime latency of one model, or the ratio of two")
    p.add_argument("models", nargs="+")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("demo", help="prune the embedded digits CNN; show accuracy and latency before/after")
    p.add_argument("--ratio", type=float, default=0.25)
    p.add_argument("--criterion", choices=criteria(), default="obs")
    p.add_argument("--round-to", type=int, default=8)
    p.add_argument("-o", "--output", default=None, help="where to keep the pruned model")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "models", None) and len(args.models) > 2:
        print("graphprune: error: bench takes one or two models", file=sys.stderr)
        return 2
    for name in ("ratio", "expert_ratio", *(f"{kind}_ratio" for kind in KINDS)):
        value = getattr(args, name, None)
        if value is not None and not 0.0 <= value < 1.0:
            print(f"graphprune: error: --{name.replace('_', '-')} must be in [0, 1), got {value}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except GraphpruneError as exc:
        print(f"graphprune: error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, never a traceback
        print(f"graphprune: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
