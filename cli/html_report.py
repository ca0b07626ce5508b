"""The sweep report: one self-contained HTML file (inline SVG, no scripts, nothing fetched) with quality against
latency and against parameters, a table of the points, the kept width of every pruned layer at each target,
what stayed frozen and why, and the settings the numbers were taken with."""

from __future__ import annotations

import html
from collections import Counter

from graphprune.passes.pipeline.sweep import SweepPoint

WIDTH, HEIGHT, PAD = 420, 300, 48
STYLE = """body{font-family:sans-serif;margin:24px;color:#222}h1{font-size:20px}h2{font-size:16px;margin-top:28px}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f0f0f0}td.l{text-align:left}.plots{display:flex;gap:24px;flex-wrap:wrap}
svg{background:#fafafa;border:1px solid #ddd}"""


def render(points: list[SweepPoint], title: str, settings: dict[str, str]) -> str:
    """The report for `points` (one per target), titled `title`, with `settings` listed as given."""
    params = [(p.result.after.params / max(p.result.before.params, 1), p.error, f"{p.target:g}") for p in points]
    latency = [(p.latency[0], p.error, f"{p.target:g}") for p in points]
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{_e(title)}</title><style>{STYLE}</style>"
             f"</head><body><h1>{_e(title)}</h1>",
             "<div class='plots'>", _plot(latency, "latency, pruned / dense (re-timed)", "output error"),
             _plot(params, "parameters, pruned / dense", "output error"), "</div>",
             "<h2>Points</h2>", _points_table(points), "<h2>Kept width of each pruned layer</h2>", _widths(points),
             "<h2>Frozen groups, by reason</h2>", _frozen(points), "<h2>Settings</h2>", _settings(settings),
             "</body></html>"]
    return "\n".join(parts)


def _e(text: object) -> str:
    return html.escape(str(text))


def _plot(series: list[tuple[float, float, str]], x_label: str, y_label: str) -> str:
    """A scatter of (x, y, label) joined in x order, axes from 0 to the largest value (x at least 1)."""
    x_top = max([1.0] + [x for x, _, _ in series])
    y_top = max([1e-12] + [y for _, y, _ in series]) * 1.1

    def at(x: float, y: float) -> tuple[float, float]:
        return PAD + (WIDTH - 2 * PAD) * x / x_top, HEIGHT - PAD - (HEIGHT - 2 * PAD) * y / y_top

    ordered = sorted(series)
    line = " ".join(f"{a:.1f},{b:.1f}" for a, b in (at(x, y) for x, y, _ in ordered))
    marks = []
    for x, y, label in ordered:
        cx, cy = at(x, y)
        marks.append(f"<circle cx='{cx:.1f}' cy='{cy:.1f}' r='4' fill='#1f77b4'><title>target {_e(label)}: "
                     f"x {x:.3f}, error {y:.4g}</title></circle>"
                     f"<text x='{cx + 6:.1f}' y='{cy - 6:.1f}' font-size='11'>{_e(label)}</text>")
    ticks = []
    for fraction in (0, 0.25, 0.5, 0.75, 1.0):
        tx, _ = at(x_top * fraction, 0)
        _, ty = at(0, y_top * fraction)
        ticks.append(f"<text x='{tx:.1f}' y='{HEIGHT - PAD + 16}' font-size='10' text-anchor='middle'>"
                     f"{x_top * fraction:.2f}</text><text x='{PAD - 6}' y='{ty + 3:.1f}' font-size='10' "
                     f"text-anchor='end'>{y_top * fraction:.2g}</text>")
    x0, y0 = at(0, 0)
    return (f"<svg width='{WIDTH}' height='{HEIGHT}'>"
            f"<line x1='{x0}' y1='{y0}' x2='{WIDTH - PAD}' y2='{y0}' stroke='#444'/>"
            f"<line x1='{x0}' y1='{y0}' x2='{x0}' y2='{PAD}' stroke='#444'/>{''.join(ticks)}"
            f"<polyline points='{line}' fill='none' stroke='#1f77b4'/>{''.join(marks)}"
            f"<text x='{WIDTH / 2}' y='{HEIGHT - 8}' font-size='12' text-anchor='middle'>{_e(x_label)}</text>"
            f"<text x='14' y='{HEIGHT / 2}' font-size='12' transform='rotate(-90 14 {HEIGHT / 2})' "
            f"text-anchor='middle'>{_e(y_label)}</text></svg>")


def _table(header: list[str], rows: list[list[object]], left: int = 1) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td{' class=l' if i < left else ''}>{_e(c)}</td>" for i, c in enumerate(r))
                   + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _points_table(points: list[SweepPoint]) -> str:
    rows = []
    for p in points:
        before, after = p.result.before, p.result.after
        drift = p.result.verification.drift if p.result.verification is not None else None
        rows.append([f"{p.target:g}", f"{p.latency[0]:.3f} ({p.latency[1]:.3f}–{p.latency[2]:.3f})",
                     f"{after.params / max(before.params, 1):.3f}", f"{after.macs / max(before.macs, 1):.3f}",
                     f"{p.error:.4g}", "-" if drift is None else f"{drift:.3g}", p.path.name])
    return _table(["target", "latency (per round)", "params", "MACs", f"output error ({points[0].inputs})",
                   "max relative drift", "file"], rows)


def _widths(points: list[SweepPoint]) -> str:
    groups = points[0].result.groups
    pruned = sorted({gid for p in points for gid in p.result.plan.removed})
    rows = [[groups[gid].layer or groups[gid].label, groups[gid].kind, groups[gid].size]
            + [groups[gid].size - len(p.result.plan.removed.get(gid, ())) for p in points] for gid in pruned]
    return _table(["layer", "kind", "dense"] + [f"at {p.target:g}" for p in points], rows, left=2)


def _frozen(points: list[SweepPoint]) -> str:
    reasons = Counter(g.frozen_reasons[0] for g in points[0].result.groups if g.frozen)
    return _table(["groups", "reason"], [[n, r] for r, n in reasons.most_common()], left=0) if reasons else \
        "<p>none</p>"


def _settings(settings: dict[str, str]) -> str:
    return _table(["setting", "value"], [[k, v] for k, v in settings.items()], left=2)
