"""`SciCodeEnv`: one rollout is one main problem, one turn is one scored sub-step.

Turn loop (classic verifiers `MultiTurnEnv`):
* The first prompt asks for the problem's first scored step (given steps before it, like 62.1,
  appear as previous steps with their reference code).
* Each reply is parsed the moment it arrives (`add_trajectory_step`), its step is scored in the
  background while the model writes the next one, and the next prompt (a fresh single user
  message with every previous step's description and code) is sent.
* Given steps (13.6, 62.1, 76.3) are never asked: their reference code is injected.
* After the last scored step the rollout stops; cleanup waits for the background verdicts and
  writes them to `state["scicode"]`, which the rubric reads.

A sandbox failure that persists after retries marks the step `sandbox_error` and the rollout's
`state["error"]` (a `vf.SandboxError`), so vf-eval retries the rollout and trainers can mask it;
it is never scored silently as the model's failure.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import verifiers as vf
from datasets import Dataset

from scicode import components, config
from scicode.dataset import Problem
from scicode.parser import SciCodeParser, extract_code, message_role, message_text
from scicode.prompts import step_prompt
from scicode.rubric import SciCodeRubric
from scicode.scorer import StepScorer, infrastructure_failure, rollout_codes, step_records
from scicode.verdict import StepVerdict

logger = logging.getLogger(__name__)
STATE_KEY = "scicode"


def _next_scored(problem: Problem, start: int) -> int | None:
    return next((i for i in range(start, len(problem.steps)) if not problem.steps[i].given), None)


class SciCodeEnv(vf.MultiTurnEnv):
    """SciCode as a multi-turn environment (see module docstring)."""

    def __init__(
        self,
        *,
        problems: Sequence[Problem],
        scorer: StepScorer,
        with_background: bool,
        given_code: str,
        system_prompt: str | None,
        **kwargs: Any,
    ) -> None:
        self.problems = {p.problem_id: p for p in problems}
        self.scorer = scorer
        self.with_background = with_background
        self.given_code = given_code
        self.scicode_system_prompt = system_prompt or None
        self._inflight: dict[str, list[asyncio.Task[StepVerdict]]] = {}
        parser = SciCodeParser()
        dataset = Dataset.from_list([self._row(p) for p in problems])
        super().__init__(
            dataset=dataset,
            eval_dataset=dataset,
            parser=parser,
            rubric=SciCodeRubric(parser=parser),
            max_turns=-1,
            **kwargs,
        )

    # -- prompts -------------------------------------------------------------------------------

    def _messages(self, text: str) -> list[Any]:
        system = [vf.SystemMessage(content=self.scicode_system_prompt)] if self.scicode_system_prompt else []
        return [*system, vf.UserMessage(content=text)]

    def _prompt(self, problem: Problem, index: int, codes: Sequence[str | None]) -> list[Any]:
        prior = [c or "" for c in codes[:index]]
        return self._messages(step_prompt(problem, index, prior, with_background=self.with_background))

    def _row(self, problem: Problem) -> dict[str, Any]:
        first = _next_scored(problem, 0)
        assert first is not None, f"problem {problem.problem_id} has no scored step"
        messages = self._prompt(problem, first, rollout_codes(problem, self.given_code))
        return {
            "prompt": [m.model_dump(exclude_none=True) for m in messages],
            "answer": "",
            "info": {"problem_id": problem.problem_id, "split": problem.split},
        }

    # -- turn loop -----------------------------------------------------------------------------

    async def setup_state(self, state: vf.State) -> vf.State:
        """Start a rollout at the problem's first scored step."""
        problem = self.problems[str(state["info"]["problem_id"])]
        state[STATE_KEY] = {
            "problem_id": problem.problem_id,
            "split": problem.split,
            "cursor": _next_scored(problem, 0),
            "codes": rollout_codes(problem, self.given_code),
            "replies": {},
        }
        self._inflight[state["trajectory_id"]] = []
        return state

    def _problem(self, state: vf.State) -> Problem:
        return self.problems[state[STATE_KEY]["problem_id"]]

    async def add_trajectory_step(self, state: vf.State, trajectory_step: vf.TrajectoryStep) -> None:
        """Parse the reply for the current step, start scoring it, advance to the next step."""
        await super().add_trajectory_step(state, trajectory_step)
        sc = state[STATE_KEY]
        problem, index = self._problem(state), sc["cursor"]
        if index is None:
            return
        reply = _text(trajectory_step["completion"])
        sc["codes"][index] = extract_code(reply)
        codes = [c or "" for c in sc["codes"][: index + 1]]
        task = asyncio.create_task(self.scorer.score(problem, index, codes, session=state["trajectory_id"]))
        self._inflight.setdefault(state["trajectory_id"], []).append(task)
        sc["cursor"] = _next_scored(problem, index + 1)

    async def env_response(self, messages: vf.Messages, state: vf.State, **kwargs: Any) -> vf.Messages:
        """The next step's prompt: one fresh user message."""
        sc = state[STATE_KEY]
        return self._prompt(self._problem(state), sc["cursor"], sc["codes"])

    async def get_prompt_messages(self, state: vf.State) -> vf.Messages:
        """The dataset prompt on the first turn, then one fresh message per step (no history)."""
        if not state["trajectory"]:
            return state["prompt"]
        return await self.env_response([], state)

    @vf.stop
    async def all_steps_answered(self, state: vf.State) -> bool:
        """Stop once every scored step has a reply."""
        sc = state.get(STATE_KEY)
        return sc is not None and sc["cursor"] is None

    async def render_completion(self, state: vf.State) -> None:
        """The whole exchange: each turn's reply, preceded by the prompt of every turn after the first."""
        completion: list[Any] = []
        for i, step in enumerate(state["trajectory"]):
            if i > 0:
                completion += [m for m in step["prompt"] if message_role(m) == "user"]
            completion += list(step["completion"])
        state["completion"] = completion

    # -- verdicts --------------------------------------------------------------------------------

    @vf.cleanup(priority=50)
    async def collect_verdicts(self, state: vf.State) -> None:
        """Wait for this rollout's step verdicts and record them in the state."""
        tasks = self._inflight.pop(state.get("trajectory_id", ""), [])
        sc = state.get(STATE_KEY)
        if sc is None:
            for t in tasks:
                t.cancel()
            return
        start = time.monotonic()
        try:
            verdicts = {v.step_id: v for v in await asyncio.gather(*tasks)}
        finally:
            await self.scorer.executor.release(state["trajectory_id"])
        problem = self._problem(state)
        records = step_records(problem, verdicts, sc["codes"])
        sc["steps"] = records
        sc["wait_seconds"] = time.monotonic() - start
        # In `info`, which vf-eval always saves: every run's results.jsonl carries per-step records.
        state["info"]["scicode_steps"] = records
        sc["isolation"] = self.scorer.isolation
        failure = infrastructure_failure(records)
        if failure is not None and state.get("error") is None:
            state["error"] = vf.SandboxError(failure)

    @vf.teardown
    async def close_executor(self) -> None:
        """Stop sandbox workers when the environment is torn down."""
        await self.scorer.aclose()


def _text(messages: Any) -> str:
    """The text of a completion's assistant messages (or of a plain-text completion)."""
    items = messages if isinstance(messages, list) else [messages]
    return "\n".join(
        m if isinstance(m, str) else message_text(m)
        for m in items
        if isinstance(m, str) or message_role(m) == "assistant"
    )


def load_environment(
    *,
    split: str = config.default("split"),
    problems: Sequence[str] | None = None,
    with_background: bool = config.default("with_background"),
    system_prompt: str = config.default("system_prompt"),
    dataset_source: str = config.default("dataset_source"),
    h5py_file: str = config.default("h5py_file"),
    given_step_code: str = config.default("given_step_code"),
    strict_comparisons: bool = config.default("strict_comparisons"),
    sandbox: str = config.default("sandbox"),
    timeout_per_test: float = config.default("timeout_per_test"),
    memory_limit_mb: int = config.default("memory_limit_mb"),
    max_output_mb: int = config.default("max_output_mb"),
    max_concurrent_steps: int = config.default("max_concurrent_steps"),
    max_processes: int = config.default("max_processes"),
    max_disk_mb: int = config.default("max_disk_mb"),
    isolation: str = config.default("isolation"),
    worker_mode: str = config.default("worker_mode"),
    sandbox_python: str = config.default("sandbox_python"),
    infra_retries: int = config.default("infra_retries"),
    sandbox_docker_image: str = config.default("sandbox_docker_image"),
    sandbox_name: str = config.default("sandbox_name"),
    sandbox_cpu_cores: float = config.default("sandbox_cpu_cores"),
    sandbox_memory_gb: float = config.default("sandbox_memory_gb"),
    sandbox_disk_gb: float = config.default("sandbox_disk_gb"),
    sandbox_labels: Sequence[str] = (),
    **kwargs: Any,
) -> SciCodeEnv:
    """Build the SciCode environment. Every argument is documented in the README's env-args table.

    Raises:
        ConfigError: an argument has a wrong value.
        TargetsError: the chosen split needs the official targets file and it is not available.
    """
    args = {name: value for name, value in locals().items() if name != "kwargs"}  # the env args, by name
    selection = components.select(args)
    scorer = components.build_scorer(args, selection)
    return SciCodeEnv(
        problems=selection.problems,
        scorer=scorer,
        with_background=bool(with_background),
        given_code=given_step_code,
        system_prompt=system_prompt,
        **kwargs,
    )
