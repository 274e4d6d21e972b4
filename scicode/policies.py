"""Reference policies: stand-ins for a model, for self-tests and baselines.

* `gold`: answers each step with its ground-truth code in a ```python block (like inspect's
  `mode=gold`). Validation steps only: the test split has no gold code.
* `dummy`: answers every step with an empty code block, so every step is `no_code`.

A policy is a function of the prompt. `scicode.policy_server` serves one as an OpenAI-compatible
endpoint, so the environment runs exactly as it does with a real model, through the real client,
under either verifiers API.
"""

from __future__ import annotations

from collections.abc import Sequence

from scicode.dataset import Problem
from scicode.errors import ConfigError

POLICIES = ("gold", "dummy")
_NEXT_STEP_MARKER = "NEXT STEP - PROBLEM"
_DEPENDENCIES_MARKER = "DEPENDENCIES:"


class ReferencePolicy:
    """Replies computed from the prompt alone."""

    name = "reference"

    def reply(self, prompt_text: str) -> str:
        """The reply to one prompt (the last user message)."""
        raise NotImplementedError


class GoldPolicy(ReferencePolicy):
    """Answers with the ground-truth code of the step the prompt asks for."""

    name = "gold"

    def __init__(self, problems: Sequence[Problem]) -> None:
        self._answers: list[tuple[str, str]] = []
        for problem in problems:
            for step in problem.scored_steps:
                if step.gold_code is None:
                    raise ConfigError(
                        f"the gold policy needs ground-truth code, which step {step.step_id} ({problem.split} split) "
                        "does not have; use split='validation'."
                    )
                self._answers.append((f"{step.function_header}\n\n{step.return_line}", step.gold_code))

    def reply(self, prompt_text: str) -> str:
        """The gold code of the step the prompt asks for."""
        asked = prompt_text.split(_NEXT_STEP_MARKER, 1)[-1].split(_DEPENDENCIES_MARKER, 1)[0]
        for stub, code in self._answers:
            if stub in asked:
                return f"```python\n{code}\n```"
        return "I do not recognise this step."


class DummyPolicy(ReferencePolicy):
    """Answers every step with an empty code block."""

    name = "dummy"

    def reply(self, prompt_text: str) -> str:
        """An empty code block."""
        return "I cannot solve this step.\n```python\n```"


def make_policy(name: str, problems: Sequence[Problem]) -> ReferencePolicy:
    """A reference policy by name.

    Raises:
        ConfigError: unknown name, or `gold` asked for steps without ground truth.
    """
    if name == "gold":
        return GoldPolicy(problems)
    if name == "dummy":
        return DummyPolicy()
    raise ConfigError(f"unknown policy {name!r}; choose one of {', '.join(POLICIES)}")
