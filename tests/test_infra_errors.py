"""Infrastructure failures are retried and reported, never scored silently as the model's failure."""

from __future__ import annotations

import pytest

from scicode.errors import SandboxUnavailable
from scicode.execution import ExecutorOptions, make_executor
from scicode.policies import GoldPolicy
from scicode.runner import run_policy
from scicode.scorer import ScoringOptions, StepScorer
from scicode.verdict import FailureKind

pytestmark = pytest.mark.verifiers_api


class FlakyExecutor:
    """Implements the Executor protocol: fails `failures` times, then delegates to a real one."""

    name = "flaky"

    def __init__(self, inner, failures: int, *, owns_inner: bool = False) -> None:
        self.inner, self.failures, self.calls, self.owns_inner = inner, failures, 0, owns_inner

    async def run(self, program, *, timeout, session=None):
        self.calls += 1
        if self.calls <= self.failures:
            raise SandboxUnavailable("the fake backend is down")
        return await self.inner.run(program, timeout=timeout, session=session)

    async def release(self, session) -> None:
        pass

    async def aclose(self) -> None:
        if self.owns_inner:
            await self.inner.aclose()

    def describe(self):
        return {"sandbox": self.name}


async def test_a_transient_failure_is_retried(executor, scorer, validation) -> None:
    flaky = FlakyExecutor(executor, failures=1)
    s = StepScorer(flaky, scorer.targets, ScoringOptions(infra_retries=2, retry_backoff=0.01))
    v = await s.score(validation["1"], 0, validation["1"].gold_codes(0))
    assert v.passed and flaky.calls == 2


async def test_a_persistent_failure_is_a_sandbox_error(executor, scorer, validation) -> None:
    flaky = FlakyExecutor(executor, failures=10)
    s = StepScorer(flaky, scorer.targets, ScoringOptions(infra_retries=2, retry_backoff=0.01))
    v = await s.score(validation["1"], 0, validation["1"].gold_codes(0))
    assert v.kind is FailureKind.SANDBOX_ERROR and v.kind.is_infrastructure and flaky.calls == 3


async def test_the_rollout_is_flagged_not_silently_scored(validation) -> None:
    """The rollout carries a sandbox error (classic: state error, retried by vf-eval; v1: a failed
    trace with stop condition sandbox_error, dropped by trainers), and the step says why."""

    def break_sandbox(scorer) -> None:
        scorer.executor = FlakyExecutor(scorer.executor, failures=10, owns_inner=True)

    env_args = {"split": "validation", "problems": ["1"], "dataset_source": "bundled", "infra_retries": 0}
    result = await run_policy(GoldPolicy([validation["1"]]), env_args, setup=break_sandbox)
    (out,) = result.outcomes
    assert out.steps[0]["kind"] == "sandbox_error" and "fake backend is down" in out.steps[0]["detail"]
    assert out.error is not None and "could not be judged" in out.error


async def _score_at(level: str, prefix: str, scorer, validation, retries: int):
    """Gold code of step 1.1 with `prefix` in front, judged by a fresh executor at `level`."""
    ex = make_executor("local", ExecutorOptions(concurrency=1, extra={"isolation": level}))
    s = StepScorer(ex, scorer.targets, ScoringOptions(infra_retries=retries, retry_backoff=0.01))
    codes = validation["1"].gold_codes(0)
    codes[0] = prefix + codes[0]
    try:
        return await s.score(validation["1"], 0, codes)
    finally:
        await ex.aclose()


async def test_a_program_that_kills_its_sandbox_is_failed_not_excused(scorer, validation) -> None:
    """At level `none` a program can kill its worker; it happens on every retry, so it is the
    program's failure (runtime_error), not an infrastructure error that a trainer would mask."""
    v = await _score_at("none", "__import__('os').kill(__import__('os').getppid(), 9)\n", scorer, validation, 1)
    assert v.kind is FailureKind.RUNTIME_ERROR and "killed its sandbox" in v.detail


@pytest.mark.parametrize("level", ["bwrap", "unshare"])
async def test_the_worker_cannot_be_killed_from_inside(scorer, validation, level) -> None:
    from scicode.execution.isolation import probe

    if level not in probe(__import__("sys").executable):
        pytest.skip(f"{level} is not available here")
    prefix = "import os, signal\nfor pid in (1, os.getppid()):\n    try:\n        os.kill(pid, 9)\n    except OSError:\n        pass\n"
    v = await _score_at(level, prefix, scorer, validation, 0)
    assert v.passed, v
