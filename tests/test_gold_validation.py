"""The gold code passes every scored validation step, except the documented dataset defect 78.3."""

from __future__ import annotations

import asyncio

import pytest

from scicode.dataset import load_problems
from scicode.verdict import FailureKind

#: Documented in the README ("Known dataset defects"): 78.3's reference solution chooses its
#: time step from wall-clock timings; the official targets come from a coarse clock, so the gold
#: code fails them on Linux, as it does under the official harness.
KNOWN_DEFECTS = {"78.3"}
STEPS = [
    (p.problem_id, i, s.step_id)
    for p in load_problems(split="validation", source="bundled")
    for i, s in enumerate(p.steps)
    if not s.given
]


@pytest.fixture(scope="module")
async def gold_verdicts(scorer, validation):
    jobs = [scorer.score(validation[pid], i, validation[pid].gold_codes(i)) for pid, i, _ in STEPS]
    verdicts = await asyncio.gather(*jobs)
    return {v.step_id: v for v in verdicts}


def test_fifty_scored_validation_steps() -> None:
    assert len(STEPS) == 50


@pytest.mark.parametrize("step_id", [sid for *_, sid in STEPS])
async def test_gold_passes(gold_verdicts, step_id: str) -> None:
    verdict = gold_verdicts[step_id]
    if step_id in KNOWN_DEFECTS:
        assert verdict.kind is FailureKind.WRONG_ANSWER, verdict.detail
        pytest.xfail("documented dataset defect: clock-dependent reference solution")
    assert verdict.passed, f"{verdict.kind}: {verdict.detail}"
