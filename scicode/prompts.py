"""Turn prompts, built exactly as the official harness builds them (`eval/scripts/gencode.py`).

Each turn is one fresh user message: the official template filled with the previous steps
(description, plus background when `with_background`, then the code that answered it, steps
separated by a `------` line) and the next step (description [+ background], then the function
header and return line). With background the official `multistep_template.txt` is used; without,
`background_comment_template.txt`, which asks the model to write the background itself. (The
swapped-looking pairing is the official one; the Prime environment inverted it.)
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from scicode.dataset import Problem, Step

TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
TEMPLATES = {True: "multistep_template.txt", False: "background_comment_template.txt"}


@functools.cache
def template(*, with_background: bool) -> str:
    """The official template text for this setting, verbatim."""
    return (TEMPLATE_DIR / TEMPLATES[with_background]).read_text(encoding="utf-8")


def describe_step(step: Step, *, with_background: bool) -> str:
    """A step's description, followed by its background when asked for (official rule)."""
    if with_background:
        return step.description + "\n" + step.background
    return step.description


def next_step_text(step: Step, *, with_background: bool) -> str:
    """The block that asks for `step`: description, then header and return line."""
    code_stub = f"{step.function_header}\n\n{step.return_line}"
    return "\n\n".join([describe_step(step, with_background=with_background), code_stub])


def previous_steps_text(steps: Sequence[Step], codes: Sequence[str], *, with_background: bool) -> str:
    """The block of earlier steps: description and code of each, joined by `------` lines."""
    lines: list[str] = []
    for step, code in zip(steps, codes, strict=True):
        lines += [describe_step(step, with_background=with_background), code, "------"]
    return "\n\n".join(lines[:-1])


def step_prompt(problem: Problem, index: int, codes: Sequence[str], *, with_background: bool) -> str:
    """The user message asking for step `index` (0-based) given the code of the steps before it."""
    if len(codes) != index:
        raise ValueError(f"step {index} needs the code of {index} earlier steps, got {len(codes)}")
    return template(with_background=with_background).format(
        problem_steps_str=previous_steps_text(problem.steps[:index], codes, with_background=with_background),
        next_step_str=next_step_text(problem.steps[index], with_background=with_background),
        dependencies=problem.dependencies,
    )
