"""Scoring a step: build its program, run it (retrying sandbox failures), fetch targets, judge.

`StepScorer` is the one place the layers meet: `testplan` and `program` build, an `Executor` runs,
`TargetService` supplies targets (deriving validation targets from the gold code when the official
file is absent), and `verdict.judge` decides. The environment, the CLI and the benchmarks all
score through it, so they cannot disagree.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from scicode.dataset import Problem, Step, given_step_code
from scicode.errors import SandboxUnavailable, TargetsError
from scicode.execution.base import ExecResult, Executor, StepProgram
from scicode.parser import has_code
from scicode.program import build_step_program
from scicode.targets import ChainTargets, StepFileTargets, TargetStore
from scicode.testplan import TestPlan, plan_step
from scicode.verdict import FailureKind, StepVerdict, derive_targets, judge, no_run_verdict

logger = logging.getLogger(__name__)

#: Code run before a step's gold code when deriving its targets, to match the official file.
#: 78.3's reference solution picks its time step by timing two runs with time.time(); the official
#: targets were evidently made with a coarse (15.625 ms) clock, under which the fast run measures
#: 0 s and dt=10 wins. See README "Known dataset defects".
DERIVATION_SHIMS = {
    "78.3": (
        "import time as _scicode_time\n"
        "_scicode_clock = _scicode_time.time\n"
        "_scicode_time.time = lambda: (_scicode_clock() // 0.015625) * 0.015625\n"
    ),
}


@dataclass(frozen=True)
class ScoringOptions:
    """How steps are run and judged."""

    timeout: float = 300.0
    infra_retries: int = 2
    max_probe_bytes: int = 64 << 20
    retry_backoff: float = 1.0
    strict_comparisons: bool = True


@functools.lru_cache(maxsize=1024)
def _plan(step_id: str, dependencies: str, tests: tuple[str, ...]) -> TestPlan:
    return plan_step(step_id, dependencies, tests)


def plan_for(problem: Problem, step: Step) -> TestPlan:
    """The (cached) test plan of a step."""
    return _plan(step.step_id, problem.dependencies, step.test_cases)


def program_for(problem: Problem, index: int, codes: Sequence[str]) -> StepProgram:
    """The probe program of step `index` given the code of steps 0..index."""
    step = problem.steps[index]
    prior = [(s.step_id, c) for s, c in zip(problem.steps[:index], codes[:index], strict=True)]
    return build_step_program(
        step_id=step.step_id,
        dependencies=problem.dependencies,
        prior=prior,
        code=codes[index],
        plan=plan_for(problem, step),
    )


class TargetService:
    """Targets for judging: an official store first, then validation targets derived from gold code."""

    def __init__(self, official: TargetStore | None, derived: StepFileTargets | None) -> None:
        self.official = official
        self.derived = derived
        self._locks: dict[str, asyncio.Lock] = {}

    def _stores(self) -> ChainTargets:
        return ChainTargets([s for s in (self.official, self.derived) if s is not None])

    def available(self, step_id: str) -> bool:
        """True when targets for the step exist without deriving."""
        return self._stores().has(step_id)

    def can_derive(self, step: Step) -> bool:
        """True when the step's targets can be derived (a validation step with gold code)."""
        return self.derived is not None and step.gold_code is not None and not step.given

    def load(self, step: Step) -> list[Any]:
        """Targets of a step (sync; called from the judging thread)."""
        stores = self._stores()
        if not stores.has(step.step_id):
            raise TargetsError(
                f"no targets for step {step.step_id}; the test split needs the official test_data.h5 "
                "(see the README, 'Targets')."
            )
        return stores.load(step.step_id, len(step.test_cases))

    async def ensure(
        self, problem: Problem, step: Step, run: Callable[[StepProgram], Awaitable[ExecResult]], max_probe_bytes: int
    ) -> None:
        """Derive the step's targets from its gold code if no store has them yet."""
        if self.available(step.step_id) or not self.can_derive(step):
            return
        lock = self._locks.setdefault(step.step_id, asyncio.Lock())
        async with lock:
            if self.available(step.step_id):
                return
            assert self.derived is not None
            targets = await derive_step(problem, step, run, max_probe_bytes)
            await asyncio.to_thread(self.derived.save, step.step_id, targets)
            logger.info("derived targets of validation step %s from its gold code", step.step_id)


async def derive_step(
    problem: Problem, step: Step, run: Callable[[StepProgram], Awaitable[ExecResult]], max_probe_bytes: int
) -> list[Any]:
    """Run the gold code of steps 1..k and read step k's targets off its asserts.

    Raises:
        TargetsError: the gold run failed or its targets cannot be read.
    """
    index = problem.steps.index(step)
    codes = problem.gold_codes(index)
    codes[index] = DERIVATION_SHIMS.get(step.step_id, "") + codes[index]
    program = program_for(problem, index, codes)
    result = await run(program)
    try:
        return await asyncio.to_thread(derive_targets, plan_for(problem, step), result, max_probe_bytes=max_probe_bytes)
    except ValueError as e:
        raise TargetsError(f"cannot derive targets of step {step.step_id}: {e}") from e


class StepScorer:
    """Scores steps of problems (see module docstring)."""

    def __init__(
        self,
        executor: Executor,
        targets: TargetService,
        options: ScoringOptions,
        *,
        derivation: Executor | None = None,
    ) -> None:
        self.executor = executor
        self.targets = targets
        self.options = options
        # Gold code never runs where model code runs: validation targets are derived by an executor
        # of their own (local: workers that never see a model's program), never inside a rollout's
        # slot, so derivation can neither leak gold code to a model nor wait on a rollout.
        self._derivation = derivation

    @property
    def derivation(self) -> Executor:
        """The executor that runs gold code to derive validation targets (made on first use)."""
        if self._derivation is None:
            from scicode.execution import ExecutorOptions, make_executor

            self._derivation = make_executor("local", ExecutorOptions(extra={"isolation": "auto"}))
        return self._derivation

    async def _run_gold(self, program: StepProgram) -> ExecResult:
        for attempt in range(self.options.infra_retries + 1):
            try:
                return await self.derivation.run(program, timeout=self.options.timeout)
            except SandboxUnavailable as e:
                if attempt == self.options.infra_retries:
                    raise
                logger.warning("sandbox failure deriving step %s (attempt %d): %s", program.step_id, attempt + 1, e)
                await asyncio.sleep(self.options.retry_backoff * 2**attempt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        """Close both executors."""
        await self.executor.aclose()
        if self._derivation is not None:
            await self._derivation.aclose()

    async def run_program(self, program: StepProgram, session: str | None = None) -> ExecResult:
        """Run a program, retrying sandbox failures with backoff.

        Raises:
            SandboxUnavailable: it still failed after `infra_retries` retries; `during_program`
                is set only if the sandbox died during the program on every attempt.
        """
        suspect = True
        for attempt in range(self.options.infra_retries + 1):
            try:
                return await self.executor.run(program, timeout=self.options.timeout, session=session)
            except SandboxUnavailable as e:
                suspect = suspect and e.during_program
                if attempt == self.options.infra_retries:
                    raise SandboxUnavailable(str(e), during_program=suspect and attempt > 0) from e
                logger.warning("sandbox failure on step %s (attempt %d): %s", program.step_id, attempt + 1, e)
                await asyncio.sleep(self.options.retry_backoff * 2**attempt)
        raise AssertionError("unreachable")

    @property
    def isolation(self) -> str:
        """What isolates the programs, as reported in every rollout's results."""
        return str(getattr(self.executor, "isolation", self.executor.name))

    async def ensure_targets(self, problem: Problem, step: Step) -> None:
        """Derive the step's targets (with the derivation executor) if no store has them yet.

        Raises:
            TargetsError, SandboxUnavailable: they could not be derived.
        """
        await self.targets.ensure(problem, step, self._run_gold, self.options.max_probe_bytes)

    async def score(
        self, problem: Problem, index: int, codes: Sequence[str], *, session: str | None = None
    ) -> StepVerdict:
        """The verdict of step `index` of `problem`, whose steps 0..index have `codes`.

        `session` (the rollout) lets remote backends keep a rollout's programs in one sandbox.
        """
        step = problem.steps[index]
        if not has_code(codes[index]):
            return no_run_verdict(step.step_id, FailureKind.NO_CODE, "the reply contains no code")
        try:
            await self.ensure_targets(problem, step)
        except (TargetsError, SandboxUnavailable) as e:
            return no_run_verdict(step.step_id, FailureKind.TARGETS_ERROR, str(e))
        program = program_for(problem, index, codes)
        try:
            result = await self.run_program(program, session)
        except SandboxUnavailable as e:
            if e.during_program:  # died under this program on every attempt: the program did it
                return no_run_verdict(
                    step.step_id,
                    FailureKind.RUNTIME_ERROR,
                    f"the sandbox died every time this program ran ({e}); it killed its sandbox",
                )
            return no_run_verdict(step.step_id, FailureKind.SANDBOX_ERROR, str(e))
        try:
            return await asyncio.to_thread(
                judge,
                plan_for(problem, step),
                program,
                result,
                lambda: self.targets.load(step),
                max_probe_bytes=self.options.max_probe_bytes,
                strict=self.options.strict_comparisons,
            )
        except TargetsError as e:
            return no_run_verdict(step.step_id, FailureKind.TARGETS_ERROR, str(e))


def rollout_codes(problem: Problem, given_mode: str) -> list[str | None]:
    """A rollout's code per step before any reply: given steps' code (in `given_mode`), else None."""
    return [given_step_code(s, mode=given_mode) if s.given else None for s in problem.steps]


def infrastructure_failure(records: Sequence[dict[str, Any]]) -> str | None:
    """Why some steps of a rollout could not be judged (not the model's failure), if any could not."""
    infra = [r for r in records if FailureKind(r["kind"]).is_infrastructure]
    if not infra:
        return None
    return f"{len(infra)} step(s) could not be judged ({infra[0]['kind']}: {infra[0]['detail'][:300]})"


def step_records(
    problem: Problem, verdicts: dict[str, StepVerdict], codes: Sequence[str | None]
) -> list[dict[str, Any]]:
    """The rollout's record of every scored step, in order (unanswered steps are `no_code`)."""
    records = []
    for i, step in enumerate(problem.steps):
        if step.given:
            continue
        verdict = verdicts.get(step.step_id) or no_run_verdict(
            step.step_id, FailureKind.NO_CODE, "the rollout ended before this step was answered"
        )
        records.append({"problem_id": problem.problem_id, **verdict.to_dict(), "code": codes[i] or ""})
    return records
