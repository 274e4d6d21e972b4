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

from scicode import config, scores
from scicode.dataset import Problem, given_step_code, load_problems
from scicode.errors import ConfigError
from scicode.execution import ExecutorOptions, make_executor
from scicode.parser import extract_code
from scicode.prompts import step_prompt
from scicode.scorer import ScoringOptions, StepScorer, step_records
from scicode.target_sources import resolve_targets
from scicode.verdict import FAILURE_KINDS, FailureKind, StepVerdict


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

    _problems: dict[str, Problem] | None = None

    def problems(self) -> dict[str, Problem]:
        """The selected problems by id (loaded once; the test split's targets checked at once)."""
        if self._problems is None:
            cfg = self.config
            for name in ("split", "dataset_source", "given_step_code", "sandbox", "isolation", "worker_mode"):
                config.check_choice(name, getattr(cfg, name))
            if min(cfg.timeout_per_test, cfg.memory_limit_mb, cfg.max_output_mb) <= 0 or cfg.infra_retries < 0:
                raise ConfigError(
                    "timeout_per_test, memory_limit_mb and max_output_mb must be positive, infra_retries >= 0"
                )
            selected = load_problems(split=cfg.split, problems=tuple(cfg.problems), source=cfg.dataset_source)
            resolve_targets(cfg.h5py_file, selected)  # fail now, before any model call, if targets are missing
            self._problems = {p.problem_id: p for p in selected}
        return self._problems

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
        cfg: SciCodeConfig = self.taskset.config  # type: ignore[assignment]
        problems = list(self.taskset.problems().values())  # type: ignore[attr-defined]
        targets, hidden = resolve_targets(cfg.h5py_file, problems)
        options = ExecutorOptions(
            memory_mb=cfg.memory_limit_mb,
            output_mb=cfg.max_output_mb,
            concurrency=cfg.max_concurrent_steps,
            disk_mb=cfg.max_disk_mb,
            max_processes=cfg.max_processes,
            extra={
                "isolation": cfg.isolation,
                "worker_mode": cfg.worker_mode,
                "python": cfg.sandbox_python,
                "hidden_paths": hidden,
                "image": cfg.sandbox_docker_image,
                "name": cfg.sandbox_name,
                "cpu_cores": cfg.sandbox_cpu_cores,
                "memory_gb": cfg.sandbox_memory_gb,
                "disk_gb": cfg.sandbox_disk_gb,
                "labels": tuple(cfg.sandbox_labels),
            },
        )
        self.scorer = StepScorer(
            make_executor(cfg.sandbox, options),
            targets,
            ScoringOptions(
                timeout=cfg.timeout_per_test,
                infra_retries=cfg.infra_retries,
                max_probe_bytes=cfg.max_output_mb << 20,
                strict_comparisons=cfg.strict_comparisons,
            ),
        )

    async def stop(self) -> None:
        """Stop the executor's workers or sandboxes."""
        if self.scorer is not None:
            await self.scorer.executor.aclose()
            self.scorer = None

    def describe_executor(self) -> dict[str, object]:
        """What runs the step programs, for run metadata."""
        return self.scorer.executor.describe() if self.scorer is not None else {}

    async def run(self, task: Any, agents: Any) -> None:
        """Ask every scored step, score them in the background, record the verdicts."""
        assert self.scorer is not None, "the env must be served (env.serving()) before running episodes"
        cfg: SciCodeConfig = self.taskset.config  # type: ignore[assignment]
        problem = self.taskset.problems()[task.data.problem_id]  # type: ignore[attr-defined]
        codes: list[str | None] = [
            given_step_code(s, mode=cfg.given_step_code) if s.given else None for s in problem.steps
        ]
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
            isolation = getattr(self.scorer.executor, "isolation", self.scorer.executor.name)
            chat.trace.info["scicode"] = {
                "problem_id": problem.problem_id,
                "split": problem.split,
                "steps": records,
                "isolation": isolation,
            }
            infra = [r for r in records if FailureKind(r["kind"]).is_infrastructure]
            if infra:
                raise vf.SandboxError(
                    f"{len(infra)} step(s) could not be judged ({infra[0]['kind']}: {infra[0]['detail'][:300]})"
                )
