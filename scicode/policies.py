"""Reference policies: stand-ins for a model, as verifiers clients, for self-tests and baselines.

* `gold`: answers each step with its ground-truth code in a ```python block (like inspect's
  `mode=gold`). Validation steps only: the test split has no gold code.
* `dummy`: answers every step with an empty code block, so every step is `no_code`.

They speak the verifiers `Client` interface, so the environment runs exactly as it does with a
real model: same prompts, same parser, same turn loop.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import Any

from verifiers.legacy.clients.client import Client
from verifiers.legacy.types import Response, ResponseMessage, Usage

from scicode.dataset import Problem
from scicode.errors import ConfigError

POLICIES = ("gold", "dummy")
_NEXT_STEP_MARKER = "NEXT STEP - PROBLEM"
_DEPENDENCIES_MARKER = "DEPENDENCIES:"


class ReferencePolicy(Client):
    """A verifiers client whose replies come from a function of the prompt."""

    def __init__(self, name: str) -> None:
        super().__init__(None)
        self.name = name
        self.calls = 0

    def reply(self, prompt_text: str) -> str:
        """The reply to one prompt."""
        raise NotImplementedError

    def setup_client(self, config: Any) -> None:
        """No client to set up."""
        return None

    async def to_native_tool(self, tool: Any) -> Any:
        """Tools are not used."""
        return tool

    async def to_native_prompt(self, messages: Any) -> tuple[str, dict]:
        """The last user message is the whole prompt."""
        texts = [_content(m) for m in messages if _role(m) == "user"]
        return (texts[-1] if texts else ""), {}

    async def get_native_response(
        self, prompt: str, model: str, sampling_args: Any, tools: Any = None, **kwargs: Any
    ) -> str:
        """The policy's reply to the prompt."""
        self.calls += 1
        return self.reply(prompt)

    async def raise_from_native_response(self, response: str) -> None:
        """A reference reply is always valid."""
        return None

    async def from_native_response(self, response: str) -> Response:
        """The reply as a verifiers Response."""
        return Response(
            id=f"{self.name}-{uuid.uuid4().hex[:12]}",
            created=int(time.time()),
            model=self.name,
            usage=Usage(prompt_tokens=0, reasoning_tokens=0, completion_tokens=0, total_tokens=0),
            message=ResponseMessage(content=response, finish_reason="stop", is_truncated=False),
        )

    async def close(self) -> None:
        """Nothing to close."""
        return None


class GoldPolicy(ReferencePolicy):
    """Answers with the ground-truth code of the step the prompt asks for."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("gold")
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

    def __init__(self) -> None:
        super().__init__("dummy")

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


def _role(message: Any) -> str | None:
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


def _content(message: Any) -> str:
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if isinstance(content, list):
        return "".join(p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content)
    return content or ""
