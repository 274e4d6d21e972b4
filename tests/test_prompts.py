"""Prompt assembly against the official templates and rules (eval/scripts/gencode.py)."""

from __future__ import annotations

import hashlib

from scicode.dataset import given_step_code
from scicode.prompts import step_prompt, template

MULTISTEP_SHA = "2c6946acf50f69d37647b83c04e77e6bdc5f3ff04e87d4aa6f79d0f27b5dcbc2"
COMMENT_SHA = "9b407bdd44937f13cf090b5ae35436b7dc60a0fb8494caec6995c9c83cdadb03"


def test_templates_are_verbatim_and_not_inverted() -> None:
    with_bg, without = template(with_background=True), template(with_background=False)
    assert hashlib.sha256(with_bg.encode()).hexdigest() == MULTISTEP_SHA
    assert hashlib.sha256(without.encode()).hexdigest() == COMMENT_SHA
    # With background the model is given it; without, it is asked to write it.
    assert "along with background knowledge" in with_bg
    assert "starting with 'Background: '" in without


def test_first_step_prompt(validation) -> None:
    p = validation["10"]
    s = p.steps[0]
    prompt = step_prompt(p, 0, [], with_background=False)
    expected = template(with_background=False).format(
        problem_steps_str="",
        next_step_str=f"{s.description}\n\n{s.function_header}\n\n{s.return_line}",
        dependencies=p.dependencies,
    )
    assert prompt == expected


def test_later_step_carries_previous_descriptions_and_code(validation) -> None:
    p = validation["10"]
    s0, s1, s2 = p.steps[:3]
    prompt = step_prompt(p, 2, ["CODE_ONE", "CODE_TWO"], with_background=True)
    previous = "\n\n".join(
        [
            s0.description + "\n" + s0.background,
            "CODE_ONE",
            "------",
            s1.description + "\n" + s1.background,
            "CODE_TWO",
        ]
    )
    current = f"{s2.description}\n{s2.background}\n\n{s2.function_header}\n\n{s2.return_line}"
    assert prompt == template(with_background=True).format(
        problem_steps_str=previous, next_step_str=current, dependencies=p.dependencies
    )


def test_given_step_code_appears_in_later_prompts(all_problems) -> None:
    p = next(p for p in all_problems if p.problem_id == "13")
    codes = ["c1", "c2", "c3", "c4", "c5", given_step_code(p.steps[5]), "c7"]
    prompt = step_prompt(p, 7, codes, with_background=False)
    assert "class Maxwell:" in prompt and "c7" in prompt
    assert p.steps[7].function_header in prompt
