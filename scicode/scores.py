"""Rollout scores from step records: shared by the classic rubric and the v1 task.

A step record is the dict the environment stores for each scored step (`step_id`, `passed`,
`kind`, `detail`, `seconds`, `code`); these functions only read them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Steps = Sequence[Mapping[str, Any]]


def subproblem_score(steps: Steps) -> float:
    """Fraction of the problem's scored steps that pass (the reward)."""
    return sum(bool(s["passed"]) for s in steps) / len(steps) if steps else 0.0


def main_problem_score(steps: Steps) -> float:
    """1.0 iff every scored step passes."""
    return float(bool(steps) and all(s["passed"] for s in steps))


def steps_passed(steps: Steps) -> float:
    """Scored steps that pass."""
    return float(sum(bool(s["passed"]) for s in steps))


def steps_total(steps: Steps) -> float:
    """Scored steps."""
    return float(len(steps))


def seconds_executing(steps: Steps) -> float:
    """Wall seconds of the step programs."""
    return float(sum(s["seconds"] for s in steps))


def kind_count(steps: Steps, kind: str) -> float:
    """Steps that ended with this failure kind."""
    return float(sum(1 for s in steps if s["kind"] == kind))


def metrics(steps: Steps, kinds: Sequence[str]) -> dict[str, float]:
    """Every metric of a rollout (all but the two rewards), by name."""
    out = {
        "steps_passed": steps_passed(steps),
        "steps_total": steps_total(steps),
        "seconds_executing": seconds_executing(steps),
    }
    out.update({kind: kind_count(steps, kind) for kind in kinds})
    return out
