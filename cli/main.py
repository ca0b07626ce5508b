"""The `graphprune` command: analyze, prune, apply, bench, ops, demo. A thin front end over the library: options
are checked before any work, errors are one line (a traceback with --debug), progress goes to stderr."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from dataclasses import replace

import graphprune
from graphprune import progress
from graphprune.analysis.coupling import GQA_UNITS, Analysis
from graphprune.analysis.groups import Group
from graphprune.analysis.tokens import TOKEN_AXIS, TokenFlow, find_token_flow
from graphprune.cli import options
from graphprune.cli.report import bench_summary, report
from graphprune.cli.sweep import run_sweep
from graphprune.cli.table import human, render
from graphprune.errors import GraphpruneError
from graphprune.io import runtime
from graphprune.io.load import load_model
from graphprune.ops.table import markdown, op_table
from graphprune.passes.allocation.spec import STRATEGIES, Allocation
from graphprune.passes.calibration.sources import ImageSpec
from graphprune.passes.calibration.spec import CalibrationSpec
from graphprune.passes.importance import criteria_for, needs_data
from graphprune.passes.pipeline.method import choose_method
from graphprune.passes.pipeline.prune import PruneResult, apply_file, prune_file, run_analysis
from graphprune.passes.pipeline.request import EXPERT_CRITERION, Output, PruneRequest
from graphprune.passes.rewrite.optimize import model_types
from graphprune.passes.rewrite.tokens import RESTORES, TOKEN_METHODS, TOKEN_SCORES, TokenSchedule


def cmd_analyze(args: argparse.Namespace) -> int:
    model = load_model(args.model)
    if args.tokens:
        return print_token_flow(find_token_flow(model), args.json)
    analysis = run_analysis(model, allow_approximate=args.prune_hidden, gqa_units=args.gqa_units, depth=True)
    blocks = [g for g in analysis.groups if g.kind == "block"]
    shown = analysis.groups if args.depth else [g for g in analysis.groups if g.kind != "block"]
    if args.json:
        print(json.dumps([g.summary() for g in shown], indent=1))
        return 0
    print_groups(analysis, shown)
    if blocks and not args.depth:
        print(f"\nnot listed: {blocks[0].size} residual blocks, one more group (kind block) that --depth lists; prune "
              "removes whole blocks with --depth, and by default when it has calibration data")
    return 0


def print_token_flow(flow: TokenFlow, as_json: bool) -> int:
    """The token axis, the blocks found and, before each, whether tokens can be reduced there and why not."""
    rows = [[site.block, "eligible" if site.reason is None else "no", site.hidden.name,
             site.reason or ("; ".join(sorted(set(site.walk.pooled))) or "per-token outputs restored")]
            for site in flow.sites]
    if as_json:
        print(json.dumps({"blocks": flow.blocks, "tokens": flow.tokens, "reason": flow.reason,
                          "sites": [dict(zip(["block", "status", "input", "detail"], r, strict=True)) for r in rows]},
                         indent=1))
        return 0
    if flow.reason is not None:
        print(f"no token reduction: {flow.reason}")
        return 0
    print(f"{flow.blocks} attention blocks; token axis {TOKEN_AXIS} of the residual stream, {flow.tokens} tokens\n")
    print(render(["before block", "tokens", "block input", "reason / what reads the tokens"], rows))
    print(f"\n{len(flow.eligible())} of {len(flow.sites)} blocks can reduce their tokens (prune --tokens KEEP "
          "--token-blocks B1,B2,…)")
    return 0


def print_groups(analysis: Analysis, shown: list[Group]) -> None:
    rows = [
        [g.id, g.kind, g.size, human(g.params), "frozen" if g.frozen else "prunable", g.layer, g.label,
         g.frozen_reasons[0] if g.frozen else g.detail()]
        for g in shown
    ]
    print(render(["id", "kind", "size", "params", "status", "layer", "anchor", "reason / detail"], rows))
    prunable = [g for g in analysis.prunable() if g in shown]
    print(f"\n{len(shown)} groups, {len(prunable)} prunable")
    layers = [g for g in shown if g.experts is not None]
    if layers:
        print(f"\n{len(layers)} MoE layer(s):")
        for g in layers:
            status = f"frozen: {g.frozen_reasons[0]}" if g.frozen else "experts prunable with --expert-ratio"
            print(f"  group {g.id}: {g.size} experts, top-{g.experts.top_k}, router {g.label}; {status}")


def cmd_prune(args: argparse.Namespace) -> int:
    kind_ratios = {kind: getattr(args, f"{kind}_ratio") for kind in (*KINDS, "block")
                   if getattr(args, f"{kind}_ratio") is not None}
    targets = {"params": args.target_params, "flops": args.target_flops, "latency": args.target_latency}
    target = next(((metric, value) for metric, value in targets.items() if value is not None), None)
    token_target, joint = None, False
    if args.tokens == "auto" and (args.ratio == 0 or not calibration_spec(args).wanted()):  # tokens alone
        if args.target_flops is None:
            raise GraphpruneError("--tokens auto measures a keep rate per block to reach --target-flops FRACTION: "
                                  "give one (or a fixed --tokens KEEP)")
        token_target, target = args.target_flops, None
    elif args.tokens == "auto":  # with calibration data: one budget over tokens and widths
        if target is None or target[0] == "params":
            raise GraphpruneError("--tokens auto with calibration data spends one --target-flops or --target-latency "
                                  "on tokens and widths together: give one (--ratio 0 for tokens alone, or a fixed "
                                  "--tokens KEEP)")
        joint = True
    if args.ratio is None:  # --tokens alone reduces tokens only
        alone = args.tokens is not None and not kind_ratios and target is None and args.max_error is None
        args.ratio = 0.0 if alone else 0.5
    tokens = TokenSchedule(1.0 if token_target or joint else args.tokens, args.token_blocks, args.token_score,
                           args.token_protect, args.token_restore, args.token_method) \
        if args.tokens is not None else None
    fast_widths = args.fast_widths if args.fast_widths is not None else args.target_latency is not None
    free_hand = args.compensate is None and not args.expert_ratio and not args.expert_merge
    method = choose_method(calibration_spec(args), args.criterion, args.sequential, args.allocation,
                           args.depth or args.block_ratio is not None, free_hand)
    criterion, sequential, strategy, depth, picked = method.criterion, method.sequential, method.allocation, \
        method.depth, method.why
    if tokens is not None and not (args.depth or args.block_ratio is not None):
        depth = False  # removing a residual block would move the blocks token reduction goes before
    allocation = Allocation(strategy, args.ratio, kind_ratios, args.round_to, args.max_layer_ratio, target,
                            args.expert_ratio, fast_widths=fast_widths, latency_table=args.latency_table,
                            threads=args.threads, max_error=args.max_error)
    request = PruneRequest(criterion, args.ratio, args.round_to, args.seed, kind_ratios, args.prune_hidden,
                           calibration_spec(args), args.compensate, allocation,
                           {"policy_file": args.policy} if args.policy else None, args.gqa_units,
                           args.expert_criterion, args.expert_merge, sequential, depth, tokens, token_target,
                           joint)
    if args.validate and picked == "default with calibration data" and free_hand and args.allocation is None \
            and not args.sequential and request.validates():
        request = replace(request, validate=True)
    method = criterion + (" refit sequentially" if sequential else "") + (" with depth" if depth else "") \
        + (f" ({picked})" if picked else "")
    if args.sweep is not None:
        return run_sweep(args, request, method)
    result = prune_file(args.model, output_of(args), request)
    chosen = result.plan.meta.get("validation")
    if chosen:  # the method is the form of the default that held-out data chose
        method, strategy = f"{criterion} {chosen['chosen']} ({picked}, chosen on held-out data)", ""
    stop = f"target {target[0]} {target[1]}" if target else f"held-out error at most {args.max_error}" \
        if args.max_error is not None else f"{strategy} ratio {args.ratio}".lstrip()
    ratios = ", ".join([stop]
                       + [f"{kind} {value}" for kind, value in kind_ratios.items()]
                       + ([f"experts {args.expert_ratio} by {args.expert_criterion}"] if args.expert_ratio else []))
    report(result, args, f"{method}, {ratios}")
    if args.provider == "cuda":
        _warn_unaligned_widths(result, GPU_WIDTH, ("channel", "neuron", "hidden"), "on a GPU such widths can make "
                               "the pruned model slower than the dense one")
    elif (block := runtime.conv_channel_block()) is not None:
        _warn_unaligned_widths(result, block, ("channel",), f"ONNX Runtime's CPU convolutions here compute channels "
                               f"in blocks of {block}, so such widths run as the next multiple", convolutions=True)
    return 0


GPU_WIDTH = 16  # channel/neuron widths GPU matrix products keep their fast kernels at


def _warn_unaligned_widths(result: PruneResult, width: int, kinds: tuple[str, ...], why: str,
                           convolutions: bool = False) -> None:
    """Pruned widths off a multiple of `width` (where the dense one was on it) waste what they save: measured on an
    H200, a 1B LLaMA at 25 % heads + 30 % FFN (FFN 5632 -> 3943) ran at 1.17x the dense latency, and at 0.80x with
    --round-to 16 (3936); on an AVX-512 CPU the demo's convs at 24 of 32 channels cost what 32 do. With
    `convolutions`, only groups a Conv computes with count."""
    kept = {group.id: group.size - len(result.plan.removed.get(group.id, ())) for group in result.groups}
    unaligned = [group for group in result.groups if group.kind in kinds and group.size % width == 0
                 and kept[group.id] % width and (not convolutions or _convolved(group))]
    if unaligned:
        logging.getLogger("graphprune").warning(
            "%d pruned group(s) keep widths that are not multiples of %d; %s: pass --round-to %d", len(unaligned),
            width, why, width)


def _convolved(group) -> bool:
    """Whether a Conv (or ConvTranspose) computes with one of the group's weights."""
    return any(use.node.op_type in ("Conv", "ConvTranspose") for m in group.members if m.is_param
               for use in m.value.uses())


def output_of(args: argparse.Namespace) -> Output:
    """Where the run writes and which inputs verification runs the models on."""
    feeds = runtime.load_feeds(args.feeds) if args.feeds else None
    return Output(args.output, args.save_plan, args.dry_run, feeds, dict(args.dim) or None, (args.feeds,),
                  getattr(args, "optimize", None))


def calibration_spec(args: argparse.Namespace) -> CalibrationSpec:
    image = ImageSpec(tuple(args.image_size), tuple(args.image_mean), tuple(args.image_std), args.image_layout,
                      args.grayscale)
    return CalibrationSpec(args.calib, args.data_free, args.samples, args.batch_size, image=image,
                           match_bn=args.match_bn, tokenizer=args.tokenizer, smooth_images=args.smooth_images,
                           length=args.calib_length, pack=args.calib_pack)


def cmd_apply(args: argparse.Namespace) -> int:
    result = apply_file(args.model, args.plan, output_of(args), calibration_spec(args), args.compensate)
    report(result, args, f"plan {args.plan}", replayed=True)
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    for path in args.models:
        options.existing_file(path)
    given = runtime.load_feeds(args.feeds) if args.feeds else None
    sessions = [runtime.session(path, threads=args.threads, timing=True) for path in args.models]
    specs = [{i.name: (list(i.shape), None) for i in sess.get_inputs()} for sess in sessions]
    if given is not None:
        feeds = [runtime.conform_feeds(given, spec, args.feeds) for spec in specs]
    else:
        _warn_defaulted_dims(specs, dict(args.dim))
        feeds = [runtime.random_feeds(sess, batch=args.batch, dims=dict(args.dim) or None) for sess in sessions]
    times = runtime.interleaved_ms(sessions, feeds, args.warmup, args.runs)
    summary = bench_summary(args.models, times, runtime.ROUNDS)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    inputs = args.feeds or f"random inputs, batch {args.batch}"
    print(render(["model", "min ms", "median ms", "max ms"],
                 [[m["model"], f"{m['min_ms']:.3f}", f"{m['median_ms']:.3f}", f"{m['max_ms']:.3f}"]
                  for m in summary["models"]]))
    where = runtime.device_of(sessions[0])
    bound = f"; inputs and outputs held on {where} (IO binding)" if where else ""
    print(f"\n{inputs}{bound}; {args.runs} runs each, interleaved in {runtime.ROUNDS} rounds")
    if "ratio" in summary:
        ratio = summary["ratio"]
        print(f"latency ratio (second / first, median of the rounds' median ratios): {ratio['median']:.3f} "
              f"(per round {ratio['min']:.3f} to {ratio['max']:.3f})")
    return 0


def _warn_defaulted_dims(specs: list[dict], dims: dict[str, int]) -> None:
    """Symbolic axes past the batch axis that no --dim sizes are timed at 1: say so (a transformer at
    sequence length 1 shows nothing of a pruning speedup)."""
    names = sorted({str(d) for spec in specs for shape, _ in spec.values() for axis, d in enumerate(shape)
                    if not isinstance(d, int) and axis > 0 and d not in dims})
    if names:
        logging.getLogger("graphprune").warning(
            "symbolic input axes %s are timed at size 1; give real sizes with --dim NAME=VALUE", ", ".join(names))


def cmd_ops(args: argparse.Namespace) -> int:
    rows = op_table()
    if args.names:
        wanted = {name.lower() for name in args.names}
        unknown = sorted(wanted - {row.op.lower() for row in rows})
        if unknown:
            raise GraphpruneError(f"not modelled (groups reaching them freeze): {', '.join(unknown)}")
        rows = [row for row in rows if row.op.lower() in wanted]
    if args.json:
        print(json.dumps([row.as_dict() for row in rows], indent=1))
    elif args.markdown:
        print(markdown(rows), end="")
    elif args.names:
        for row in rows:
            print(f"{row.domain}::{row.op}: {row.rule} ({row.file}); token rule: {row.token_rule or 'none'}")
            print("".join(f"  - {reason}\n" for reason in row.reasons) or "  (never freezes)\n", end="")
    else:
        print(render(["op", "domain", "rule", "file", "reasons", "token rule"],
                     [[row.op, row.domain, row.rule, row.file, len(row.reasons), row.token_rule or "-"]
                      for row in rows]))
        print(f"\n{len(rows)} ops; `graphprune ops OP` spells out the reasons")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from graphprune.cli.demo import run_demo

    run_demo(ratio=args.ratio, criterion=args.criterion, round_to=args.round_to, output=args.output)
    return 0


KINDS = ("channel", "head", "neuron", "hidden")


def add_common_arguments(p: argparse.ArgumentParser, default=None) -> None:
    """-q/-v/--debug, accepted before or after the subcommand (`default` SUPPRESS on subcommands, so a flag
    given before the subcommand is not reset after it)."""
    p.add_argument("-q", "--quiet", action="store_true", default=default,
                   help="no progress on stderr (progress is shown only on a terminal anyway)")
    p.add_argument("-v", "--verbose", action="count", default=default,
                   help="log what each step does (stdlib logging on stderr; -vv for debug detail)")
    p.add_argument("--debug", action="store_true", default=default, help="on an error, show the full traceback")
    p.add_argument("--provider", choices=sorted(runtime.PROVIDERS), default=default,
                   help="ONNX Runtime execution provider for calibration, verification and bench (default cpu; "
                        "cuda needs the gpu extra and falls back to the CPU with a warning)")


def add_gqa_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--gqa-units", choices=GQA_UNITS, default="kv-group",
                   help="grouped-query attention: remove whole KV groups (a KV head with its query heads), or "
                        "the same query slot of every group (default kv-group)")


def add_verification_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--feeds", metavar="FILE.npz",
                   help="inputs (arrays keyed by input name) on which the result is checked against the original "
                        "(default: seeded random inputs)")
    p.add_argument("--dim", type=options.dim, action="append", default=[], metavar="NAME=VALUE",
                   help="size of a symbolic input axis for random inputs, e.g. --dim seq=128 (repeatable; "
                        "default: batch 1, other symbolic axes 1)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON document")
    p.add_argument("--optimize", metavar="MODEL_TYPE", choices=model_types(),
                   help="fuse the result with ONNX Runtime's transformer optimizer (attention, LayerNorm, GELU) for "
                        f"this model type ({', '.join(model_types())}); kept only if it computes the same")
    p.add_argument("--save-plan", metavar="FILE.json", help="also write the pruning plan as JSON (written last)")


def add_calibration_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calib", metavar="PATH",
                   help="calibration inputs: .npz keyed by input name, .npy (one input), .txt (one sequence per "
                        "line: token ids, or raw text with --tokenizer), or a folder of images")
    p.add_argument("--tokenizer", metavar="tokenizer.json",
                   help="encode a .txt of raw text with this Hugging Face tokenizer (needs the tokenizers library)")
    p.add_argument("--calib-length", type=options.positive_int, metavar="N",
                   help="text calibration rows of N tokens: each line padded to N (cut when longer), as a fixed-shape "
                        "serving batch is; measured token rates depend on the length they are measured at")
    p.add_argument("--calib-pack", action="store_true",
                   help="with --calib-length, fill each row with consecutive lines (documents of N tokens)")
    p.add_argument("--image-size", type=options.positive_int, nargs=2, metavar=("H", "W"), default=(224, 224),
                   help="resize calibration images to H x W; with --data-free, the size of synthetic images where the "
                        "model's input leaves it open (default 224 224)")
    p.add_argument("--image-mean", type=float, nargs="+", default=[0.0, 0.0, 0.0],
                   help="per-channel mean subtracted after scaling pixels to [0, 1] (1 or 3 values; default 0)")
    p.add_argument("--image-std", type=options.nonzero, nargs="+", default=[1.0, 1.0, 1.0],
                   help="per-channel std dividing after the mean (1 or 3 values; default 1)")
    p.add_argument("--image-layout", choices=["NCHW", "NHWC"], default="NCHW",
                   help="layout of the image input (default NCHW)")
    p.add_argument("--grayscale", action="store_true", help="images as one channel")
    p.add_argument("--data-free", action="store_true",
                   help="calibrate on synthetic inputs (no data): Gaussian images, token ids over the table they index")
    p.add_argument("--smooth-images", action="store_true",
                   help="with --data-free, blur synthetic images by a Gaussian of 1/20 of their shorter side "
                        "(--image-layout says which axes): measured to help text recognizers (PP-OCRv4 at 30 %%: "
                        "0.47 -> 0.72) and to hurt the PP-OCRv4 text detector (at 10 %%: 0.98 -> 0.49)")
    p.add_argument("--match-bn", action="store_true",
                   help="data-free inputs with the per-channel moments the first Conv→BatchNormalization expects")
    p.add_argument("--samples", type=options.positive_int, default=128,
                   help="calibration samples to use at most (default 128)")
    p.add_argument("--batch-size", type=options.positive_int, default=16, help="calibration batch size (default 16)")
    p.add_argument("--compensate", action=argparse.BooleanOptionalAction, default=None,
                   help="compensate removed channels: consumer biases (flap) or OBS weight updates (obs); "
                        "default on for flap and obs (apply: as the plan was made); needs calibration data")


def _criteria_help(experts: bool) -> str:
    names = criteria_for(experts)
    data = [n for n in names if needs_data(n)]
    return f"{', '.join(names)}; {', '.join(data)} need --calib or --data-free" if data else ", ".join(names)


_log_handler: logging.Handler | None = None


def configure_logging(verbosity: int) -> None:
    """Log the `graphprune` logger to the current stderr: warnings, or INFO with -v, DEBUG with -vv."""
    global _log_handler
    logger = logging.getLogger("graphprune")
    if _log_handler is not None:
        logger.removeHandler(_log_handler)
    _log_handler = logging.StreamHandler(sys.stderr)
    _log_handler.setFormatter(logging.Formatter("graphprune: %(levelname)s: %(message)s"))
    logger.addHandler(_log_handler)
    logger.propagate = False  # the command line owns stderr: one copy of each message
    logger.setLevel((logging.WARNING, logging.INFO, logging.DEBUG)[min(verbosity, 2)])


class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line (the full usage stays in --help)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="graphprune", description="Structured pruning of ONNX models: analyze "
                                     "coupled channels, heads, neurons and experts, remove the least important, "
                                     "verify in ONNX Runtime.")
    parser.add_argument("--version", action="version", version=f"graphprune {graphprune.__version__}")
    add_common_arguments(parser, default=False)
    parser.set_defaults(verbose=0, provider="cpu")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, help_text: str, func) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_common_arguments(p, default=argparse.SUPPRESS)
        p.set_defaults(func=func)
        return p

    p = command("analyze", "list channel groups, what they are, and why any are frozen", cmd_analyze)
    p.add_argument("model", help="ONNX model file (external data beside it is found automatically)")
    p.add_argument("--json", action="store_true", help="machine-readable output (one entry per group)")
    p.add_argument("--prune-hidden", action="store_true", help="treat approximate (hidden) groups as prunable")
    p.add_argument("--depth", action="store_true", help="also list the residual blocks (one group of kind block)")
    p.add_argument("--tokens", action="store_true",
                   help="list the token axis and the blocks token reduction (prune --tokens) can go before, or why not")
    add_gqa_argument(p)

    p = command("prune", "remove the least important units and write a smaller, verified model", cmd_prune)
    p.add_argument("model", help="ONNX model file; it and its external data are never modified")
    p.add_argument("-o", "--output", help="where to write the pruned model (its external data goes beside it as "
                                          "OUTPUT.<run>.data when needed); missing folders are created")
    p.add_argument("--dry-run", action="store_true",
                   help="analyze, score and allocate, print what would be removed and the projected costs; "
                        "write no model (only --save-plan, if given)")
    p.add_argument("--ratio", type=options.fraction, default=None,
                   help="fraction of each group's units to remove, in [0, 1) (default 0.5; 0 with --tokens alone)")
    for kind in KINDS:
        p.add_argument(f"--{kind}-ratio", type=options.fraction, default=None,
                       help=f"fraction of each {kind} group to remove (default: --ratio)")
    p.add_argument("--prune-hidden", action="store_true",
                   help="also prune the hidden dimension (approximate: normalisation statistics change)")
    p.add_argument("--depth", action="store_true",
                   help="also offer whole residual blocks x + f(x) (removing one leaves x), ranked by how little "
                        "they change their input on the calibration data; removed by --block-ratio or "
                        "--allocation measured (depth against width); needs --calib or --data-free")
    p.add_argument("--block-ratio", type=options.fraction, default=None,
                   help="fraction of the residual blocks to remove (implies --depth; default 0)")
    add_gqa_argument(p)
    p.add_argument("--expert-ratio", type=options.fraction, default=0.0,
                   help="fraction of each MoE layer's experts to remove (default 0: keep all experts)")
    p.add_argument("--expert-criterion", choices=criteria_for(True), default=EXPERT_CRITERION,
                   help=f"how experts are ranked (default {EXPERT_CRITERION}): {_criteria_help(True)}")
    p.add_argument("--expert-merge", action="store_true",
                   help="fold removed experts into their nearest surviving expert (router rows and weights "
                        "averaged by gate weight; approximate) instead of dropping them")
    p.add_argument("--criterion", choices=criteria_for(False), default=None,
                   help="how channels, heads and neurons are ranked (default: obs refit sequentially with --calib, "
                        "obs with --data-free, both spending the budget by measured sensitivity over width and "
                        f"depth; l2 without data; the summary says which): {_criteria_help(False)}")
    p.add_argument("--sequential", action="store_true",
                   help="prune stage by stage along the graph: each stage re-picks its units on the pruned "
                        "model's own activations and refits its layers by ridge least squares to the dense "
                        "model's outputs (replaces --compensate; needs --calib or --data-free)")
    p.add_argument("--no-validate", dest="validate", action="store_false",
                   help="with --calib and the default method, do not hold out a quarter of the calibration data to "
                        "choose between the default and its simpler forms (uniform or measured allocation, "
                        "one-shot OBS or sequential refit): run the full default directly (faster)")
    p.add_argument("--round-to", type=options.positive_int, default=1,
                   help="keep widths that are multiples of N: the kept width is rounded down to a multiple of "
                        "N, never below N; groups narrower than N are not rounded (default 1)")
    p.add_argument("--allocation", choices=STRATEGIES, default=None,
                   help="uniform: the same ratio per group; global: one threshold over normalised scores; "
                        "adaptive: FLAP-style by parameter cost; measured: the uniform plan's parameters (or "
                        "the target) spent where the model's outputs, measured in ONNX Runtime on the "
                        "calibration data, move least per parameter (default: measured when prune picks the method, "
                        "else uniform)")
    p.add_argument("--max-layer-ratio", type=options.kept_fraction, default=0.99,
                   help="never remove more than this fraction of one group, in (0, 1] (default 0.99)")
    target = p.add_mutually_exclusive_group()
    target.add_argument("--target-params", type=options.kept_fraction, metavar="FRACTION",
                        help="keep this fraction of the parameters, in (0, 1] (exact, overrides --ratio)")
    target.add_argument("--target-flops", type=options.kept_fraction, metavar="FRACTION",
                        help="keep this fraction of the FLOPs/MACs, in (0, 1] (exact, overrides --ratio; "
                             "symbolic sizes from --dim)")
    target.add_argument("--target-latency", type=options.kept_fraction, metavar="FRACTION",
                        help="run in this fraction of the dense model's ONNX Runtime latency, in (0, 1]: plans are "
                             "timed on --feeds or random inputs sized by --dim until one is within 3 %% "
                             "(turns on --fast-widths); with calibration data, units go by measured error per "
                             "millisecond from the latency table")
    target.add_argument("--sweep", type=options.sweep, metavar="METRIC=T1,T2,…", default=None,
                        help="prune at each target of latency, params or flops (e.g. latency=0.9,0.7,0.5) into the "
                             "folder -o, re-time each result, and write report.html there (quality against "
                             "latency and parameters, kept widths, frozen groups, settings)")
    target.add_argument("--max-error", type=options.fraction, metavar="E", default=None,
                        help="a quality floor: prune as far as the output error (relative squared error) on a "
                             "held-out quarter of the calibration batches stays within E, in (0, 1) (needs "
                             "calibration data; overrides --ratio)")
    p.add_argument("--tokens", type=options.token_keep, metavar="KEEP|auto", default=None,
                   help="compile token reduction into the graph: before each of --token-blocks keep this fraction "
                        "of the tokens, those the previous block's attention ranks highest, in order; per-token "
                        "outputs get the dropped tokens back (alone, it prunes no width). auto: a rate per block, "
                        "measured (output error per MAC saved, on the calibration data or random inputs at --dim) "
                        "to reach --target-flops; with calibration data (--calib, --data-free) one budget over "
                        "tokens and widths for --target-flops or --target-latency (--ratio 0: tokens alone)")
    p.add_argument("--token-blocks", type=options.blocks, metavar="B1,B2,…", default=None,
                   help="blocks to reduce the tokens before (default: a quarter, half and three quarters down the "
                        "stack; `graphprune analyze --tokens` lists the eligible ones)")
    p.add_argument("--token-method", choices=list(TOKEN_METHODS), default="topk",
                   help="topk: keep the tokens the previous block's attention ranks highest; merge: average the most "
                        "similar tokens into one another (ToMe) with proportional attention, at most half per block "
                        "(default topk)")
    p.add_argument("--token-score", choices=list(TOKEN_SCORES), default="received",
                   help="token importance: received (attention each token receives, mean over heads and queries) "
                        "or cls (attention from the first token) (default received)")
    p.add_argument("--token-protect", type=options.non_negative_int, default=1, metavar="N",
                   help="always keep the first N tokens (CLS; default 1)")
    p.add_argument("--token-restore", choices=list(RESTORES), default="nearest",
                   help="what a per-token output holds for a dropped token: nearest (the final value of the kept "
                        "token most similar to it when dropped) or dropped (its own value when dropped) "
                        "(default nearest)")
    p.add_argument("--fast-widths", action=argparse.BooleanOptionalAction, default=None,
                   help="round each group's kept width down to the multiple its layers run fast at, measured per "
                        "layer in ONNX Runtime (default: on with --target-latency)")
    p.add_argument("--latency-table", metavar="FILE.json", default=None,
                   help="where to keep the per-layer latency table (reused when made for this model, provider, "
                        "threads and sizes)")
    p.add_argument("--threads", type=options.positive_int, default=None,
                   help="ONNX Runtime intra-op threads when timing (default: ONNX Runtime's choice)")
    p.add_argument("--seed", type=int, default=0, help="seed for random criteria and synthetic data (default 0)")
    p.add_argument("--policy", metavar="FILE", help="criterion policy: a saved PruneNet policy to use, or where to "
                                                    "save the one trained now (needs torch)")
    add_calibration_arguments(p)
    add_verification_arguments(p)

    p = command("apply", "apply a saved pruning plan (made for this very model) and write the result", cmd_apply)
    p.add_argument("model", help="ONNX model file the plan was made for")
    p.add_argument("plan", help="plan JSON written by prune --save-plan")
    p.add_argument("-o", "--output", required=True, help="where to write the pruned model")
    add_calibration_arguments(p)
    add_verification_arguments(p)
    p.set_defaults(dry_run=False)

    p = command("bench", "ONNX Runtime median latency of one model, or the ratio of two", cmd_bench)
    p.add_argument("models", nargs="+", metavar="model", help="one or two ONNX model files")
    p.add_argument("--batch", type=options.positive_int, default=1, help="leading (batch) axis size (default 1)")
    p.add_argument("--dim", type=options.dim, action="append", default=[], metavar="NAME=VALUE",
                   help="size of a symbolic input axis, e.g. --dim seq=128 (repeatable; default 1)")
    p.add_argument("--runs", type=options.positive_int, default=50, help="timed runs (default 50)")
    p.add_argument("--warmup", type=options.non_negative_int, default=5, help="untimed runs first (default 5)")
    p.add_argument("--threads", type=options.positive_int, default=None,
                   help="ONNX Runtime intra-op threads (default: ONNX Runtime's choice)")
    p.add_argument("--feeds", metavar="FILE.npz", default=None,
                   help="time on these inputs (arrays keyed by input name) instead of random ones")
    p.add_argument("--json", action="store_true", help="print the timings as JSON")

    p = command("ops", "list every supported op: its domain, rule, file and the reasons it can freeze for", cmd_ops)
    p.add_argument("names", nargs="*", metavar="OP", help="only these ops, with every reason spelled out")
    output = p.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="machine-readable output (one entry per op)")
    output.add_argument("--markdown", action="store_true", help="the Markdown table of docs/ops.md")

    p = command("demo", "prune the embedded digits CNN; show accuracy and latency before/after", cmd_demo)
    p.add_argument("--ratio", type=options.fraction, default=0.25, help="fraction to remove (default 0.25)")
    p.add_argument("--criterion", choices=criteria_for(False), default="obs", help="criterion (default obs)")
    p.add_argument("--round-to", type=options.positive_int, default=8, help="width multiple (default 8)")
    p.add_argument("-o", "--output", default=None, help="where to keep the pruned model")
    return parser


def _describe(exc: Exception) -> str:
    """One line for an unexpected error; an OSError names its file, or, with none (a full disk while writing a
    mapped or temporary file), the folders the run writes to."""
    if not isinstance(exc, OSError):
        return f"{type(exc).__name__}: {exc}"
    if exc.filename:
        return f"{exc.filename}: {exc.strerror or exc}"
    return f"{exc.strerror or exc} (this run writes temporary files to {tempfile.gettempdir()}, set by TMPDIR, " \
           "and its output beside the output path)"


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as done:  # usage errors, --help, --version: argparse has printed what to say
        return done.code if isinstance(done.code, int) else 0
    configure_logging(args.verbose)
    try:
        options.check(args)
        with progress.reporting(sys.stderr.isatty() and not args.quiet), runtime.using(args.provider):
            return args.func(args)
    except BrokenPipeError:
        # The reader went away (`graphprune analyze --json | head`): stop quietly, like a Unix tool.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the CLI promises one line, not a traceback
        if args.debug:
            raise
        message = str(exc) if isinstance(exc, GraphpruneError) else _describe(exc)
        print(f"graphprune: error: {message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    from graphprune.cli.entry import main as entry

    sys.exit(entry())
