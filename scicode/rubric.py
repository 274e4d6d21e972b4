"""`SciCodeRubric`: rewards and metrics of a rollout, each read from `state["scicode"]["steps"]`.

`subproblem_score` (weight 1) is the fraction of the problem's scored steps that pass;
`main_problem_score` (weight 0) is 1 when all pass. The other functions are metrics: counts of
passed and scored steps, seconds spent executing, and one count per failure kind. The paper's
headline number, the micro average over steps, is sum(steps_passed) / sum(steps_total) over a
run: `scicode report` and the CLI print it.
"""

from __future__ import annotations

from typing import Any

import verifiers as vf

from scicode import scores
from scicode.verdict import FailureKind


def _steps(state: dict[str, Any]) -> list[dict[str, Any]]:
    return (state.get("scicode") or {}).get("steps") or []


def _count(state: dict[str, Any], kind: FailureKind) -> float:
    return scores.kind_count(_steps(state), kind)


class SciCodeRubric(vf.Rubric):
    """Rewards and metrics of SciCode rollouts (see module docstring)."""

    def __init__(self, parser: vf.Parser | None = None) -> None:
        super().__init__(parser=parser)
        self.add_reward_func(self.subproblem_score, weight=1.0)
        self.add_reward_func(self.main_problem_score, weight=0.0)
        for metric in (
            self.steps_passed,
            self.steps_total,
            self.seconds_executing,
            self.no_code,
            self.syntax_error,
            self.runtime_error,
            self.timeout,
            self.memory,
            self.output_limit,
            self.wrong_answer,
            self.sandbox_error,
            self.targets_error,
        ):
            self.add_metric(metric)

    async def subproblem_score(self, state: dict[str, Any]) -> float:
        """Fraction of the problem's scored steps that pass."""
        return scores.subproblem_score(_steps(state))

    async def main_problem_score(self, state: dict[str, Any]) -> float:
        """1.0 iff every scored step passes."""
        return scores.main_problem_score(_steps(state))

    async def steps_passed(self, state: dict[str, Any]) -> float:
        """Scored steps that pass."""
        return scores.steps_passed(_steps(state))

    async def steps_total(self, state: dict[str, Any]) -> float:
        """Scored steps of the problem."""
        return scores.steps_total(_steps(state))

    async def seconds_executing(self, state: dict[str, Any]) -> float:
        """Wall seconds of this rollout's step programs."""
        return scores.seconds_executing(_steps(state))

    async def no_code(self, state: dict[str, Any]) -> float:
        """Steps whose reply had no code."""
        return _count(state, FailureKind.NO_CODE)

    async def syntax_error(self, state: dict[str, Any]) -> float:
        """Steps whose program did not compile."""
        return _count(state, FailureKind.SYNTAX_ERROR)

    async def runtime_error(self, state: dict[str, Any]) -> float:
        """Steps whose program raised, exited early or exited non-zero."""
        return _count(state, FailureKind.RUNTIME_ERROR)

    async def timeout(self, state: dict[str, Any]) -> float:
        """Steps that ran out of time."""
        return _count(state, FailureKind.TIMEOUT)

    async def memory(self, state: dict[str, Any]) -> float:
        """Steps that ran out of memory."""
        return _count(state, FailureKind.MEMORY)

    async def output_limit(self, state: dict[str, Any]) -> float:
        """Steps that wrote more than the output limit."""
        return _count(state, FailureKind.OUTPUT_LIMIT)

    async def wrong_answer(self, state: dict[str, Any]) -> float:
        """Steps whose values did not match the targets."""
        return _count(state, FailureKind.WRONG_ANSWER)

    async def sandbox_error(self, state: dict[str, Any]) -> float:
        """Steps the sandbox could not run (infrastructure)."""
        return _count(state, FailureKind.SANDBOX_ERROR)

    async def targets_error(self, state: dict[str, Any]) -> float:
        """Steps whose targets were missing or unreadable (infrastructure)."""
        return _count(state, FailureKind.TARGETS_ERROR)
