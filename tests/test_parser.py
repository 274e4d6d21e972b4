"""The official extraction rule, case by case."""

from __future__ import annotations

import pytest

from scicode.parser import SciCodeParser, extract_code, has_code


@pytest.mark.parametrize(
    ("reply", "code"),
    [
        # No fence at all: the whole reply is the code (an unfenced reply of pure code passes officially).
        ("def f(x):\n    return x + 1\n", "def f(x):\n    return x + 1\n"),
        # A python fence: its content.
        ("Here:\n```python\ndef f():\n    return 1\n```\nDone.", "\ndef f():\n    return 1\n"),
        # Several blocks: the first ```python one, even after a plain block.
        ("```\nplain\n```\n```python\nfirst\n```\n```python\nsecond\n```", "\nfirst\n"),
        # No ```python: the first plain block.
        ("text\n```\nx = 1\n```\n```\ny = 2\n```", "\nx = 1\n"),
        # Unclosed fence: everything after it.
        ("```python\nx = 1\ny = 2", "\nx = 1\ny = 2"),
        # ```python3 counts as ```python followed by "3" (the official split does exactly that).
        ("```python3\nx = 1\n```", "3\nx = 1\n"),
    ],
)
def test_fences(reply: str, code: str) -> None:
    assert extract_code(reply) == code


def test_import_lines_are_removed_even_indented() -> None:
    reply = "```python\nimport numpy as np\nfrom scipy import linalg\ndef f():\n    import os\n    return 1\n```"
    assert extract_code(reply) == "\n\ndef f():\n\n    return 1\n"
    # "from ... import" needs whitespace around import; a name like "important" is kept.
    assert "important = 1" in extract_code("important = 1\n")


def test_non_ascii_is_kept() -> None:
    reply = "```python\n# Énergie λ = 2π ν\nλ = 3.0  # 波长\n```"
    assert "λ = 3.0  # 波长" in extract_code(reply)


def test_prose_without_fence_is_code_that_will_not_compile() -> None:
    code = extract_code("I am not able to solve this problem.")
    assert has_code(code)
    with pytest.raises(SyntaxError):
        compile(code, "x", "exec")


@pytest.mark.parametrize("reply", ["", "```python\n```", "```python\nimport numpy as np\n```", "   \n\n", None])
def test_no_code(reply: str | None) -> None:
    assert not has_code(extract_code(reply))


def test_huge_reply() -> None:
    body = "x = 1\n" * 2_000_000  # 12 MB
    code = extract_code("preamble\n```python\n" + body + "```\n" + "tail " * 100_000)
    assert code == "\n" + body


def test_verifiers_parser_reads_last_assistant_message() -> None:
    parser = SciCodeParser()
    completion = [
        {"role": "assistant", "content": "```python\na = 1\n```"},
        {"role": "user", "content": "next"},
        {"role": "assistant", "content": "```python\nb = 2\n```"},
    ]
    assert parser.parse_answer(completion) == "\nb = 2\n"
    assert parser.parse("```python\nc = 3\n```") == "\nc = 3\n"
