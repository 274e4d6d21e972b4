"""A self-contained HTML report of a run: the paper-style table, a problem × step grid, failure kinds.

No JavaScript, no external assets: one file to attach to a review or open offline. Each grid cell
is a step of a problem, coloured by outcome (the share of rollouts that pass, when there are
several); hovering shows the step id, the kinds and the first failure's detail.
"""

from __future__ import annotations

import html
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence

from scicode.report import RolloutRecord, Summary, by_split

KIND_COLOURS = {
    "passed": "#2e7d32",
    "wrong_answer": "#c62828",
    "runtime_error": "#ef6c00",
    "syntax_error": "#8e24aa",
    "no_code": "#757575",
    "timeout": "#1565c0",
    "memory": "#00838f",
    "output_limit": "#6d4c41",
    "sandbox_error": "#000000",
    "targets_error": "#37474f",
}
_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table.summary{border-collapse:collapse;margin-bottom:1.5em}
table.summary td,table.summary th{border:1px solid #ccc;padding:4px 10px;text-align:right}
.grid{display:grid;grid-template-columns:max-content 1fr;gap:4px 12px;align-items:center}
.row{display:flex;gap:3px;flex-wrap:wrap}
.cell{width:22px;height:22px;border-radius:3px;display:inline-block}
.legend span{margin-right:1em}
svg text{font-size:12px}
"""


def render(records: Sequence[RolloutRecord], *, title: str = "SciCode run") -> str:
    """The whole report as one HTML document."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        _summary_table(by_split(list(records))),
        "<h2>Steps</h2>",
        _legend(),
        _grid(records),
        "<h2>Outcomes</h2>",
        _bar_chart(records),
        "</body></html>",
    ]
    return "\n".join(parts)


def _summary_table(summaries: Mapping[str, Summary]) -> str:
    rows = [
        "<table class='summary' id='summary'><tr><th>split</th><th>main problems</th><th>resolve rate</th>"
        "<th>subproblems</th><th>micro</th><th>macro</th><th>rollouts</th></tr>"
    ]
    for name, s in summaries.items():
        rows.append(
            f"<tr><td>{html.escape(name)}</td><td>{s.problems_solved:.2f}/{s.problems}</td>"
            f"<td>{100 * s.resolve_rate:.1f}%</td><td>{s.steps_passed:.2f}/{s.steps}</td>"
            f"<td>{100 * s.micro:.1f}%</td><td>{100 * s.macro:.1f}%</td><td>{s.rollouts}</td></tr>"
        )
        for k, v in s.pass_at_k.items():
            rows.append(
                f"<tr><td colspan='6'>{html.escape(name)} pass@k {html.escape(k)}</td><td>{100 * v:.1f}%</td></tr>"
            )
    return "".join(rows) + "</table>"


def _legend() -> str:
    items = [f"<span><i class='cell' style='background:{c}'></i> {k}</span>" for k, c in KIND_COLOURS.items()]
    return "<p class='legend'>" + " ".join(items) + "</p>"


def _grid(records: Sequence[RolloutRecord]) -> str:
    by_problem: dict[str, list[RolloutRecord]] = defaultdict(list)
    for r in records:
        by_problem[r.problem_id].append(r)
    rows = ["<div class='grid' id='grid'>"]
    for pid in sorted(by_problem, key=lambda p: (len(p), p)):
        runs = by_problem[pid]
        cells = [_cell(pid, i, runs) for i in range(max(len(r.steps) for r in runs))]
        rows.append(
            f"<div>problem {html.escape(pid)} ({html.escape(runs[0].split)})</div>"
            f"<div class='row'>{''.join(cells)}</div>"
        )
    return "".join(rows) + "</div>"


def _cell(pid: str, index: int, runs: Sequence[RolloutRecord]) -> str:
    steps = [r.steps[index] for r in runs if index < len(r.steps)]
    kinds = Counter(str(s["kind"]) for s in steps)
    passed = sum(bool(s["passed"]) for s in steps) / len(steps) if steps else 0.0
    step_id = str(steps[0].get("step_id", f"{pid}.{index + 1}")) if steps else f"{pid}.{index + 1}"
    failure = next((s for s in steps if not s["passed"]), None)
    colour = KIND_COLOURS["passed"] if passed == 1 else KIND_COLOURS.get(kinds.most_common(1)[0][0], "#999")
    opacity = 1.0 if passed in (0.0, 1.0) else 0.4 + 0.6 * passed
    hover = f"{step_id}: " + ", ".join(f"{k}×{n}" for k, n in kinds.most_common())
    if failure is not None and failure.get("detail"):
        hover += "\n" + str(failure["detail"])[:600]
    return (
        f"<span class='cell' data-step='{html.escape(step_id)}' data-kind='{html.escape(kinds.most_common(1)[0][0])}' "
        f"style='background:{colour};opacity:{opacity:.2f}' title='{html.escape(hover)}'></span>"
    )


def _bar_chart(records: Sequence[RolloutRecord]) -> str:
    counts: Counter[str] = Counter(str(s["kind"]) for r in records for s in r.steps)
    if not counts:
        return "<p>No per-step records were saved.</p>"
    width, bar_h, gap, label_w = 520, 20, 6, 120
    top = max(counts.values())
    bars: list[str] = []
    for i, (kind, n) in enumerate(counts.most_common()):
        y = i * (bar_h + gap)
        w = max(2, int((width - label_w - 60) * n / top))
        colour = KIND_COLOURS.get(kind, "#999")
        bars.append(
            f"<text x='0' y='{y + 15}'>{html.escape(kind)}</text>"
            f"<rect class='bar' data-kind='{html.escape(kind)}' x='{label_w}' y='{y}' "
            f"width='{w}' height='{bar_h}' fill='{colour}'/>"
            f"<text x='{label_w + w + 6}' y='{y + 15}'>{n}</text>"
        )
    height = len(counts) * (bar_h + gap)
    return f"<svg id='kinds' width='{width}' height='{height}' xmlns='http://www.w3.org/2000/svg'>{''.join(bars)}</svg>"
