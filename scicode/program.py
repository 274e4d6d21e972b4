"""Build the program that runs one step's tests, laid out as the official harness lays it out.

Official layout (`eval/scripts/gencode.py` + `test_generated_code.py`): the problem's
dependencies, the code of every earlier step (the model's extracted code, or the given steps'
reference code), this step's code, then for each test case `target = targets[i]` and the test.
Here the targets part is replaced by the probe: each test case starts with a `test(i)` marker and
its sites record values instead of asserting (see `scicode.testplan`). Everything runs at module
level of one process, in order, as in the official run.
"""

from __future__ import annotations

from collections.abc import Sequence

from scicode.execution.base import StepProgram
from scicode.testplan import PROBE, TestPlan


def build_step_program(
    *,
    step_id: str,
    dependencies: str,
    prior: Sequence[tuple[str, str]],
    code: str,
    plan: TestPlan,
) -> StepProgram:
    """The probe program for `step_id`.

    Args:
        step_id: the step being judged.
        dependencies: the problem's `required_dependencies` text.
        prior: (step id, code) of every earlier step, in order.
        code: this step's code.
        plan: the step's test plan.
    """
    builder = _Builder()
    builder.add("dependencies", dependencies)
    builder.add_many([(f"the code of step {sid}", c) for sid, c in prior], separator="\n")
    builder.raw("\n")
    builder.add(f"the code of step {step_id}", code)
    builder.raw("\n\n")
    for k, test in enumerate(plan.tests):
        builder.add(f"test {k + 1} of step {step_id}", f"{PROBE}.test({k})\n\n{test}\n")
    return StepProgram(step_id=step_id, source=builder.text(), sections=tuple(builder.sections))


class _Builder:
    """Concatenates text while remembering which lines each part occupies."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.sections: list[tuple[str, int, int]] = []
        self.line = 1

    def raw(self, text: str) -> None:
        self.parts.append(text)
        self.line += text.count("\n")

    def add(self, label: str, text: str) -> None:
        first = self.line
        self.raw(text + "\n")
        self.sections.append((label, first, max(first, self.line - 1)))

    def add_many(self, items: Sequence[tuple[str, str]], *, separator: str) -> None:
        for label, text in items:
            self.add(label, text)
        if not items:
            self.raw(separator)

    def text(self) -> str:
        return "".join(self.parts)
