"""Summaries of a run, as the paper defines its metrics.

* Main-problem resolve rate: problems whose every scored step passes / problems.
* Subproblem pass rate: the *micro* average, steps passed / steps scored over the whole run
  (the paper's number), next to the macro average of per-problem fractions (the reward's mean).
* With several rollouts per problem, pass@k for both, by the unbiased estimator.

Denominators are those of the problems in the run: the paper's test numbers are over 65 problems
and 288 steps, validation over 15 and 50, both splits together over 80 and 338. Given steps are
never scored.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class RolloutRecord:
    """One rollout's outcome: a problem and its steps' verdicts (or only their counts)."""

    problem_id: str
    split: str
    steps: tuple[Mapping[str, Any], ...] = ()
    """Each: step_id, passed, kind, detail, seconds (and code)."""
    counts: tuple[int, int] | None = None
    """(passed, total) when the per-step records were not saved."""

    @property
    def passed(self) -> int:
        """Steps that pass."""
        return self.counts[0] if self.counts else sum(bool(s["passed"]) for s in self.steps)

    @property
    def total(self) -> int:
        """Scored steps."""
        return self.counts[1] if self.counts else len(self.steps)

    @property
    def solved(self) -> bool:
        """True when every scored step passes."""
        return self.total > 0 and self.passed == self.total


@dataclass(frozen=True)
class Summary:
    """Paper-style figures of a set of rollouts."""

    problems: int
    problems_solved: float
    """Mean over problems of the fraction of its rollouts that solve it (= count at 1 rollout)."""
    steps: int
    steps_passed: float
    macro: float
    rollouts: int
    kinds: dict[str, int] = field(default_factory=dict)
    pass_at_k: dict[str, float] = field(default_factory=dict)

    @property
    def resolve_rate(self) -> float:
        """Main problems solved / problems."""
        return self.problems_solved / self.problems if self.problems else 0.0

    @property
    def micro(self) -> float:
        """Steps passed / steps scored (the paper's subproblem rate)."""
        return self.steps_passed / self.steps if self.steps else 0.0


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c correct (Chen et al., 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def summarize(records: Iterable[RolloutRecord]) -> Summary:
    """Figures over all records (several rollouts of a problem are averaged per problem)."""
    by_problem: dict[str, list[RolloutRecord]] = defaultdict(list)
    for r in records:
        by_problem[r.problem_id].append(r)
    kinds: Counter[str] = Counter()
    problems_solved = steps_passed = macro = 0.0
    steps = rollouts = 0
    for runs in by_problem.values():
        rollouts += len(runs)
        problems_solved += sum(r.solved for r in runs) / len(runs)
        steps += runs[0].total
        steps_passed += sum(r.passed for r in runs) / len(runs)
        macro += sum(r.passed / r.total if r.total else 0.0 for r in runs) / len(runs)
        for r in runs:
            kinds.update(str(s["kind"]) for s in r.steps)
    n = len(by_problem)
    return Summary(
        problems=n,
        problems_solved=problems_solved,
        steps=steps,
        steps_passed=steps_passed,
        macro=macro / n if n else 0.0,
        rollouts=rollouts,
        kinds=dict(kinds),
        pass_at_k=_pass_at_k(by_problem),
    )


def _pass_at_k(by_problem: Mapping[str, Sequence[RolloutRecord]]) -> dict[str, float]:
    counts = {len(runs) for runs in by_problem.values()}
    if not by_problem or min(counts) < 2:
        return {}
    n = min(counts)
    out: dict[str, float] = {}
    for k in sorted({1, 2, 4, 8, n} & set(range(1, n + 1))):
        main = [pass_at_k(n, sum(r.solved for r in runs[:n]), k) for runs in by_problem.values()]
        out[f"main@{k}"] = sum(main) / len(main)
        if all(r.steps for runs in by_problem.values() for r in runs):
            step_scores = [
                pass_at_k(n, sum(bool(r.steps[i]["passed"]) for r in runs[:n]), k)
                for runs in by_problem.values()
                for i in range(len(runs[0].steps))
            ]
            out[f"subproblem@{k}"] = sum(step_scores) / len(step_scores)
    return out


def by_split(records: Sequence[RolloutRecord]) -> dict[str, Summary]:
    """One summary per split present, plus `all` when there are several."""
    splits = sorted({r.split for r in records})
    out = {s: summarize(r for r in records if r.split == s) for s in splits}
    if len(splits) > 1:
        out["all"] = summarize(records)
    return out


def format_summary(summaries: Mapping[str, Summary]) -> str:
    """The paper-style table as text."""
    lines = [
        f"{'split':<11} {'main problems':>22} {'subproblems (micro)':>24} {'macro':>7} {'rollouts':>9}",
    ]
    for name, s in summaries.items():
        lines.append(
            f"{name:<11} {s.problems_solved:>8.2f}/{s.problems:<4} {100 * s.resolve_rate:6.1f}% "
            f"{s.steps_passed:>10.2f}/{s.steps:<4} {100 * s.micro:6.1f}% {100 * s.macro:6.1f}% {s.rollouts:>9}"
        )
    for name, s in summaries.items():
        if s.pass_at_k:
            lines.append(f"{name} pass@k: " + ", ".join(f"{k}={100 * v:.1f}%" for k, v in s.pass_at_k.items()))
    kinds: Counter[str] = Counter()
    for s in summaries.values():
        if "all" in summaries and s is not summaries["all"]:
            continue
        kinds.update(s.kinds)
    if kinds:
        lines.append("step outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items())))
    return "\n".join(lines)


def load_run(path: Path) -> list[RolloutRecord]:
    """Rollout records from saved results.

    Reads `scicode run`'s results.json, classic vf-eval's results.jsonl (per-step records in
    `info.scicode_steps`, else the step counts from the metrics), or verifiers 0.4 vf-eval's
    traces.jsonl (records in each trace's `info.scicode`).

    Raises:
        FileNotFoundError: no results file at or under `path`.
    """
    path = results_file(path)
    if path.name == "traces.jsonl":  # verifiers 0.4: one episode per line, traces inside
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        return [_v1_record(trace) for row in rows for trace in row.get("traces", [])]
    if path.suffix == ".jsonl":
        return [_vf_record(json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
    data = json.loads(path.read_text())
    return [RolloutRecord(str(r["problem_id"]), str(r["split"]), tuple(r["steps"])) for r in data["rollouts"]]


def results_file(path: Path) -> Path:
    """The results file at `path`, or the newest under it when it is a directory.

    Raises:
        FileNotFoundError: there is none.
    """
    path = Path(path)
    if path.is_dir():
        for name in ("results.jsonl", "traces.jsonl", "results.json"):
            found = sorted(path.rglob(name), key=lambda p: p.stat().st_mtime)
            if found:
                return found[-1]
        raise FileNotFoundError(f"no results.json, results.jsonl or traces.jsonl under {path}")
    if not path.is_file():
        raise FileNotFoundError(f"no results file at {path}")
    return path


def _v1_record(trace: Mapping[str, Any]) -> RolloutRecord:
    sc = (trace.get("info") or {}).get("scicode") or {}
    data = (trace.get("task") or {}).get("data") or {}
    pid = str(sc.get("problem_id") or data.get("problem_id"))
    return RolloutRecord(pid, str(sc.get("split") or data.get("split") or "?"), tuple(sc.get("steps") or ()))


def _vf_record(row: Mapping[str, Any]) -> RolloutRecord:
    sc = row.get("scicode") or {}
    info = row.get("info") or {}
    if isinstance(info, str):
        info = json.loads(info)
    pid = str(sc.get("problem_id") or info.get("problem_id"))
    split = str(sc.get("split") or info.get("split") or "?")
    steps = sc.get("steps") or info.get("scicode_steps")
    if steps:
        return RolloutRecord(pid, split, tuple(steps))
    metrics = row.get("metrics") or row
    return RolloutRecord(pid, split, counts=(int(metrics.get("steps_passed", 0)), int(metrics.get("steps_total", 0))))
