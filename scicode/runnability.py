"""Is every step solvable? Run each step's program with stub answers, no targets needed.

A stub answer is the step's function header with an empty body. With stubs for every step, the
program must get past its imports (the problem's dependencies and the tests' own imports, such as
`scicode.compare.cmp`) and every name its tests use must exist. Failures of the stubs' values
(`None` has no attribute ...) are expected and fine; an `ImportError`, a `NameError` or a
`SyntaxError` means no answer could ever pass the step, for reasons outside the model's control.
The Prime environment this package replaces leaves 45 of 338 steps in that state.
"""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from scicode.codec import FrameReader
from scicode.dataset import Problem, Step, given_step_code
from scicode.execution.base import Executor
from scicode.scorer import program_for

UNRUNNABLE = ("ImportError", "ModuleNotFoundError", "NameError")


@dataclass(frozen=True)
class Unrunnable:
    """A step no answer could pass."""

    step_id: str
    reason: str


def stub_answer(step: Step) -> str:
    """The step's header with an empty body (`pass`), indented to fit the header's last line."""
    for indent in (4, 8, 12):
        candidate = f"{step.function_header.rstrip()}\n{' ' * indent}pass\n"
        try:
            ast.parse(candidate)
        except SyntaxError:
            continue
        return candidate
    raise ValueError(f"cannot build a stub for step {step.step_id}")


def stub_codes(problem: Problem, upto: int, *, given_code: str = "full") -> list[str]:
    """Stubs for steps 0..upto (given steps keep their reference code)."""
    return [given_step_code(s, mode=given_code) if s.given else stub_answer(s) for s in problem.steps[: upto + 1]]


async def check_runnable(
    problems: Sequence[Problem], executor: Executor, *, timeout: float = 60, given_code: str = "full"
) -> list[Unrunnable]:
    """Every scored step that cannot be passed whatever the answer."""

    async def one(problem: Problem, index: int) -> Unrunnable | None:
        step = problem.steps[index]
        codes = stub_codes(problem, index, given_code=given_code)
        result = await executor.run(program_for(problem, index, codes), timeout=timeout)
        frames = FrameReader(result.probe, max_bytes=1 << 30).frames()
        ending = next(
            (h for h, _ in reversed(frames) if h.get("ev") in ("syntax_error", "exception", "exit", "done")), {}
        )
        if ending.get("ev") == "syntax_error":
            return Unrunnable(step.step_id, f"SyntaxError: {ending.get('message')}")
        if ending.get("ev") == "exception" and ending.get("type") in UNRUNNABLE:
            return Unrunnable(step.step_id, f"{ending['type']}: {ending.get('message')}")
        return None

    jobs = [one(p, i) for p in problems for i, s in enumerate(p.steps) if not s.given]
    return [r for r in await asyncio.gather(*jobs) if r is not None]
