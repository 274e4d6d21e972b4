"""SciCode for verifiers 0.4 (the `verifiers.v1` API): a taskset, a chat harness and an env.

Everything below the turn loop is shared with the classic environment (`scicode.env`): the
dataset, prompts, parser, scorer, executors, verdicts and targets. Only the loop differs:

* `SciCodeTaskset` builds one task per problem; its config fields are the env args of the
  manifest (`--env.taskset.split validation`, `--env.taskset.problems 1 10`, ...).
* `SciCodeHarness` (the taskset's default harness) sends each turn as a fresh conversation,
  [system prompt,] one user message, as the official harness does; the default v1 harnesses
  would accumulate the chat history.
* `SciCodeV1Env.run` asks the scored steps one by one, parses each reply, scores it in the
  background while the model writes the next, and stores the step records in `trace.info`,
  which the task's rewards read (so `vf-replay` can re-score offline). A step the sandbox could
  not judge raises `vf.SandboxError` inside the interaction: the trace is marked failed and
  dropped by trainers, never scored 0.
* The executor is env-wide: created in `start()`, closed in `stop()`.
"""

from __future__ import annotations

import asyncio
from typing import Any

import verifiers.v1 as vf
from openai import AsyncOpenAI
from pydantic import Field

from scicode import components, config, scores
from scicode.components import Selection
from scicode.dataset import Problem
from scicode.parser import extract_code
from scicode.prompts import step_prompt
from scicode.scorer import StepScorer, infrastructure_failure, rollout_codes, step_records
from scicode.verdict import FAILURE_KINDS, StepVerdict


def _arg(name: str) -> Any:
    spec = config.arg_specs()[name]
    return Field(default=spec["default"], description=spec["description"])


class SciCodeConfig(vf.TasksetConfig):
    """The env args (see the README's table), as v1 taskset config fields.

    One difference: `system_prompt` is verifiers' own field, a path to a file with the prompt.
    """

    split: str = _arg("split")
    problems: list[str] = _arg("problems")
    with_background: bool = _arg("with_background")
    # `system_prompt` is verifiers' own taskset field here: a path to a file holding the prompt.
    dataset_source: str = _arg("dataset_source")
    h5py_file: str = _arg("h5py_file")
    given_step_code: str = _arg("given_step_code")
    strict_comparisons: bool = _arg("strict_comparisons")
    sandbox: str = _arg("sandbox")
    timeout_per_test: float = _arg("timeout_per_test")
    memory_limit_mb: int = _arg("memory_limit_mb")
    max_output_mb: int = _arg("max_output_mb")
    max_concurrent_steps: int = _arg("max_concurrent_steps")
    max_processes: int = _arg("max_processes")
    max_disk_mb: int = _arg("max_disk_mb")
    isolation: str = _arg("isolation")
    worker_mode: str = _arg("worker_mode")
    sandbox_python: str = _arg("sandbox_python")
    infra_retries: int = _arg("infra_retries")
    sandbox_docker_image: str = _arg("sandbox_docker_image")
    sandbox_name: str = _arg("sandbox_name")
    sandbox_cpu_cores: float = _arg("sandbox_cpu_cores")
    sandbox_memory_gb: float = _arg("sandbox_memory_gb")
    sandbox_disk_gb: float = _arg("sandbox_disk_gb")
    sandbox_labels: list[str] = _arg("sandbox_labels")


class SciCodeData(vf.TaskData):
    """One problem."""

    problem_id: str
    split: str


class SciCodeTask(vf.Task[SciCodeData]):
    """Rewards and metrics from the step records the env stored in `trace.info["scicode"]`."""

    @staticmethod
    def _steps(trace: vf.Trace) -> list[dict[str, Any]]:
        return list((trace.info.get("scicode") or {}).get("steps") or [])

    @vf.reward(weight=1.0)
    async def subproblem_score(self, trace: vf.Trace) -> float:
        """Fraction of the problem's scored steps that pass."""
        return scores.subproblem_score(self._steps(trace))

    @vf.reward(weight=0.0)
    async def main_problem_score(self, trace: vf.Trace) -> float:
        """1.0 iff every scored step passes."""
        return scores.main_problem_score(self._steps(trace))

    @vf.metric
    async def step_metrics(self, trace: vf.Trace) -> dict[str, float]:
        """Steps passed and scored, execution seconds, and one count per failure kind."""
        return scores.metrics(self._steps(trace), [str(k) for k in FAILURE_KINDS])


class SciCodeTaskset(vf.Taskset[SciCodeTask, SciCodeConfig]):
    """One task per SciCode problem of the configured split."""

    _selection: Selection | None = None

    def selection(self) -> Selection:
        """The selected problems and their targets (once; a missing targets file fails at once)."""
        if self._selection is None:
            self._selection = components.select(self.config.model_dump())
        return self._selection

    def problems(self) -> dict[str, Problem]:
        """The selected problems by id."""
        return {p.problem_id: p for p in self.selection().problems}

    def load(self) -> list[SciCodeTask]:
        """The tasks: each turn's prompt is built by the env, so the data holds no prompt."""
        system = self.config.system_prompt or None
        return [
            SciCodeTask(
                SciCodeData(
                    id=pid, name=p.name or pid, prompt=None, system_prompt=system, problem_id=pid, split=p.split
                ),
                self.config.task,
            )
            for pid, p in self.problems().items()
        ]


class SciCodeHarnessConfig(vf.HarnessConfig):
    """No options: SciCode's turns are always fresh conversations."""


class SciCodeHarness(vf.Harness[SciCodeHarnessConfig]):
    """In-process chat harness: each turn is [system prompt,] the turn's user message, no history."""

    APPENDS_SYSTEM_PROMPT = True
    SUPPORTS_RESUME = True
    EXECUTES_CODE = False
    NEEDS_CONTAINER = False

    async def launch(
        self, ctx: Any, trace: Any, runtime: Any, endpoint: str, secret: str, mcp_urls: Any, data: Any, **_: Any
    ) -> vf.ProgramResult:
        """Send one request through the rollout's interception endpoint (which records it)."""
        system, prompt = self.resolve_prompt(data)
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system else []
        if isinstance(prompt, str):
            messages.append({"role": "user", "content": prompt})
        else:
            messages += [m.model_dump(exclude_none=True) for m in prompt or []]
        client = AsyncOpenAI(base_url=endpoint, api_key=secret, max_retries=0)
        try:
            await client.chat.completions.create(model=ctx.model, messages=messages)  # type: ignore[arg-type]
        finally:
            await client.close()
        return vf.ProgramResult(exit_code=0, stdout="", stderr="")

    async def resume(
        self,
        ctx: Any,
        trace: Any,
        runtime: Any,
        endpoint: str,
        secret: str,
        mcp_urls: Any,
        data: Any,
        messages: Any,
        tool_interception_url: Any = None,
    ) -> vf.ProgramResult:
        """A later turn: a fresh conversation of this turn's messages only."""
        return await self.launch(
            ctx, trace, runtime, endpoint, secret, mcp_urls, data.model_copy(update={"prompt": list(messages)})
        )


class SciCodeEnvConfig(vf.SingleAgentEnvConfig):
    """Seat defaults: the in-process harness needs only the lightest runtime."""

    agent: vf.AgentConfig = vf.AgentConfig(runtime={"type": "subprocess"})


class SciCodeV1Env(vf.SingleAgentEnv, vf.Env[SciCodeEnvConfig]):
    """The turn loop (see the module docstring)."""

    def __init__(self, config: SciCodeEnvConfig) -> None:
        super().__init__(config)
        self.scorer: StepScorer | None = None

    async def start(self) -> None:
        """Build the env-wide scorer and its executor."""
        args = self.taskset.config.model_dump()
        self.scorer = components.build_scorer(args, self.taskset.selection())  # type: ignore[attr-defined]

    async def stop(self) -> None:
        """Stop the executor's workers or sandboxes."""
        if self.scorer is not None:
            await self.scorer.aclose()
            self.scorer = None

    def describe_executor(self) -> dict[str, object]:
        """What runs the step programs, for run metadata."""
        return self.scorer.executor.describe() if self.scorer is not None else {}

    async def run(self, task: Any, agents: Any) -> None:
        """Ask every scored step, score them in the background, record the verdicts."""
        assert self.scorer is not None, "the env must be served (env.serving()) before running episodes"
        cfg: SciCodeConfig = self.taskset.config  # type: ignore[assignment]
        problem = self.taskset.problems()[task.data.problem_id]  # type: ignore[attr-defined]
        codes = rollout_codes(problem, cfg.given_step_code)
        pending: list[asyncio.Task[StepVerdict]] = []
        async with agents.agent.interaction(task) as chat:
            session = f"{task.data.problem_id}-{id(chat)}"
            try:
                for index, step in enumerate(problem.steps):
                    if step.given:
                        continue
                    prior = [c or "" for c in codes[:index]]
                    segment = await chat.turn(step_prompt(problem, index, prior, with_background=cfg.with_background))
                    if segment.terminated:
                        break
                    codes[index] = extract_code(segment.last_reply or "")
                    current = [c or "" for c in codes[: index + 1]]
                    pending.append(asyncio.create_task(self.scorer.score(problem, index, current, session=session)))
                verdicts = {v.step_id: v for v in await asyncio.gather(*pending)}
            finally:
                for p in pending:
                    p.cancel()
                await self.scorer.executor.release(session)
            records = step_records(problem, verdicts, codes)
            chat.trace.info["scicode"] = {
                "problem_id": problem.problem_id,
                "split": problem.split,
                "steps": records,
                "isolation": self.scorer.isolation,
            }
            failure = infrastructure_failure(records)
            if failure is not None:
                raise vf.SandboxError(failure)
