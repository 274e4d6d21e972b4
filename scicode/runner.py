"""Run the environment with a reference policy, under whichever verifiers API is installed.

The policy is served as a local OpenAI-compatible endpoint (`scicode.policy_server`), and the
environment is driven exactly as vf-eval drives it: the classic `env.evaluate`, or v1's
`env.serving()` and `run_episode`. The CLI, the self-check and the tests use this.
"""

from __future__ import annotations

import asyncio
import inspect
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from scicode.api import is_v1
from scicode.policies import ReferencePolicy
from scicode.policy_server import API_KEY_VAR, PolicyServer


@dataclass
class Outcome:
    """One rollout: its problem, reward, step records, and any infrastructure error."""

    problem_id: str
    split: str
    reward: float
    steps: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    isolation: str = ""


@dataclass
class RunResult:
    """All rollouts of a run, and what ran them."""

    outcomes: list[Outcome]
    executor: dict[str, object]
    prompts: list[str]
    """Every prompt the policy was shown (the last user message of each request)."""


Setup = Callable[[Any], Awaitable[None] | None]
"""Called (or awaited) with the environment's scorer once it exists, before any rollout:
tests swap in executors or options, benchmarks warm the sandbox up and start their clocks."""


async def run_policy(
    policy: ReferencePolicy,
    env_args: dict[str, Any],
    *,
    rollouts: int = 1,
    max_concurrent: int = -1,
    setup: Setup | None = None,
) -> RunResult:
    """Evaluate `policy` on the environment built from `env_args`."""
    os.environ.setdefault(API_KEY_VAR, "local")
    with PolicyServer.for_policy(policy) as server:
        run = _run_v1 if is_v1() else _run_classic
        outcomes, executor = await run(_Job(server, policy, env_args, rollouts, max_concurrent, setup))
    return RunResult(outcomes, executor, server.user_prompts())


@dataclass
class _Job:
    server: PolicyServer
    policy: ReferencePolicy
    env_args: dict[str, Any]
    rollouts: int
    max_concurrent: int
    setup: Setup | None


async def _run_classic(job: _Job) -> tuple[list[Outcome], dict[str, object]]:
    from verifiers.legacy.types import ClientConfig

    from scicode.env import load_environment

    env = load_environment(**job.env_args)
    await _call(job.setup, env.scorer)
    client = ClientConfig(api_base_url=job.server.url, api_key_var=API_KEY_VAR, max_retries=0)
    try:
        out = await env.evaluate(
            client=client,
            model=job.policy.name,
            rollouts_per_example=job.rollouts,
            max_concurrent=job.max_concurrent,
            state_columns=["scicode"],
        )
        described = env.scorer.executor.describe()
    finally:
        await env.scorer.aclose()
    outcomes = []
    for o in out["outputs"]:
        sc = o.get("scicode") or {}
        info = o.get("info") or {}
        outcomes.append(
            Outcome(
                problem_id=str(sc.get("problem_id") or info.get("problem_id")),
                split=str(sc.get("split") or info.get("split")),
                reward=float(o.get("reward") or 0.0),
                steps=list(sc.get("steps") or []),
                error=None if o.get("error") is None else str(o["error"]),
                isolation=str(sc.get("isolation", "")),
            )
        )
    return outcomes, described


async def _run_v1(job: _Job) -> tuple[list[Outcome], dict[str, object]]:
    import verifiers.v1 as vf

    env = vf.load_environment(vf.resolve_env_config({"taskset": {"id": "scicode", **_v1_args(job.env_args)}}))
    ctx = vf.ModelContext(
        model=job.policy.name,
        client=vf.EvalClientConfig(base_url=job.server.url, api_key_var=API_KEY_VAR),
        sampling=vf.SamplingConfig(),
    )
    limit = asyncio.Semaphore(job.max_concurrent if job.max_concurrent > 0 else 1 << 30)

    async def one(task: Any) -> Any:
        async with limit:
            return await env.run_episode(task, ctx)

    async with env.serving():
        await _call(job.setup, env.scorer)
        tasks = [t for t in env.taskset for _ in range(job.rollouts)]
        episodes = await asyncio.gather(*(one(t) for t in tasks))
        described = env.describe_executor()
    outcomes = []
    for episode in episodes:
        for trace in episode.traces:
            sc = trace.info.get("scicode") or {}
            data = trace.task.data
            outcomes.append(
                Outcome(
                    problem_id=str(getattr(data, "problem_id", sc.get("problem_id"))),
                    split=str(getattr(data, "split", "")),
                    reward=float(trace.reward or 0.0),
                    steps=list(sc.get("steps") or []),
                    error="; ".join(str(e) for e in trace.errors) or None,
                    isolation=str(sc.get("isolation", "")),
                )
            )
    return outcomes, described


async def _call(setup: Setup | None, scorer: Any) -> None:
    result = setup(scorer) if setup is not None else None
    if inspect.isawaitable(result):
        await result


def _v1_args(env_args: dict[str, Any]) -> dict[str, Any]:
    """Env args as v1 taskset config values (the same names)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in env_args.items()}


def records(outcomes: Sequence[Outcome]) -> list[Any]:
    """Outcomes as report records."""
    from scicode.report import RolloutRecord

    return [RolloutRecord(o.problem_id, o.split, tuple(o.steps)) for o in outcomes]
