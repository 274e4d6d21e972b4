r"""Code extraction from a reply: the official rule (`scicode.gen.models.extract_python_script`).

Rule, in order:
1. If the reply contains a ``` fence: when it contains "```python", the code is the text after
   the first "```python" up to the next ``` (or the end of the reply); otherwise it is the text
   between the first ``` and the next one.
2. With no fence at all, the whole reply is the code.
3. Every line matching `^\s*(import .*|from .*\s+import\s+.*)` is deleted (indented imports
   inside functions too): the problem's dependencies are provided, and re-imports are not allowed.

Nothing is validated here: a reply of prose with no fence becomes "code" that fails to compile
(`syntax_error`), exactly as it fails officially, and an unfenced reply of pure code passes as it
does officially. A reply that leaves nothing but whitespace is `no_code`. The extracted code is
also what later steps see as this step's code, in their prompts and their programs, so a step that
fails to parse still shapes the steps after it, as in the official harness.
"""

from __future__ import annotations

import re

_IMPORT_LINE = re.compile(r"^\s*(import .*|from .*\s+import\s+.*)", flags=re.MULTILINE)


def extract_code(reply: str | None) -> str:
    """The code of a reply, by the official rule (may be empty)."""
    text = reply or ""
    if "```" in text:
        text = text.split("```python", 1)[1].split("```", 1)[0] if "```python" in text else text.split("```", 2)[1]
    return _IMPORT_LINE.sub("", text)


def has_code(code: str) -> bool:
    """False when extraction left nothing but whitespace (kind `no_code`)."""
    return bool(code.strip())


try:  # The classic verifiers API (0.3.x); under verifiers 0.4 the v1 taskset calls extract_code.
    import verifiers as vf

    _ParserBase = vf.Parser
except (ImportError, AttributeError):  # pragma: no cover - exercised under verifiers 0.4
    _ParserBase = object  # type: ignore[assignment,misc]


class SciCodeParser(_ParserBase):  # type: ignore[misc,valid-type]
    """verifiers Parser applying the official extraction rule to a reply's text."""

    def parse(self, text: str) -> str:  # noqa: D102 - see module docstring
        return extract_code(text)

    def parse_answer(self, completion) -> str | None:  # type: ignore[no-untyped-def]
        """The code of the last assistant message of a completion."""
        messages = [m for m in completion if message_role(m) == "assistant"] if isinstance(completion, list) else []
        if not messages:
            return extract_code(completion) if isinstance(completion, str) else None
        return extract_code(message_text(messages[-1]))


def message_role(message) -> str | None:  # type: ignore[no-untyped-def]
    """The role of a chat message (a dict or a message object)."""
    return message.get("role") if isinstance(message, dict) else getattr(message, "role", None)


def message_text(message) -> str:  # type: ignore[no-untyped-def]
    """The text of a chat message (a dict or a message object), its content parts joined."""
    content = message.get("content") if isinstance(message, dict) else getattr(message, "content", None)
    if isinstance(content, list):  # content parts
        return "".join(p.get("text", "") if isinstance(p, dict) else getattr(p, "text", "") for p in content)
    return content or ""
