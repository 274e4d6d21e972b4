"""Verdicts of real validation steps, run in the local sandbox, for honest and broken answers."""

from __future__ import annotations

import pytest

from scicode.verdict import FailureKind

GOOD = """
def get_alpha(recvec, alpha_scaling=5):
    return alpha_scaling * np.max(np.linalg.norm(recvec, axis=1))
"""


async def score(scorer, problem, index, code):
    codes = problem.gold_codes(index)
    codes[index] = code
    return await scorer.score(problem, index, codes)


async def test_correct_answer_passes(scorer, validation) -> None:
    v = await score(scorer, validation["10"], 0, GOOD)
    assert v.passed and v.kind is FailureKind.PASSED and v.detail == ""


async def test_unfenced_pure_code_extracted_as_a_whole_passes(scorer, validation) -> None:
    from scicode.parser import extract_code

    v = await score(scorer, validation["10"], 0, extract_code(GOOD.strip()))
    assert v.passed


async def test_wrong_answer(scorer, validation) -> None:
    v = await score(
        scorer,
        validation["10"],
        0,
        GOOD.replace("return alpha", "return -alpha").replace("return alpha_scaling", "return -alpha_scaling"),
    )
    assert v.kind is FailureKind.WRONG_ANSWER
    assert "test 1: assertion failed" in v.detail and "get_alpha" in v.detail


async def test_crash(scorer, validation) -> None:
    v = await score(scorer, validation["10"], 0, "def get_alpha(recvec, alpha_scaling=5):\n    return 1 / 0\n")
    assert v.kind is FailureKind.RUNTIME_ERROR
    assert "ZeroDivisionError" in v.detail and "the code of step 10.1" in v.detail


async def test_hang_is_a_timeout(executor, validation) -> None:
    from scicode.scorer import ScoringOptions, StepScorer
    from scicode.target_sources import resolve_targets

    targets, _ = resolve_targets("auto", [validation["10"]])
    quick = StepScorer(executor, targets, ScoringOptions(timeout=3, infra_retries=0))
    v = await score(
        quick, validation["10"], 0, "def get_alpha(recvec, alpha_scaling=5):\n    while True:\n        pass\n"
    )
    assert v.kind is FailureKind.TIMEOUT and 2.5 < v.seconds < 10


async def test_no_code(scorer, validation) -> None:
    v = await score(scorer, validation["10"], 0, "\n   \n")
    assert v.kind is FailureKind.NO_CODE and v.seconds == 0


async def test_syntax_error_names_the_step(scorer, validation) -> None:
    v = await score(scorer, validation["10"], 0, "I think the answer is alpha.")
    assert v.kind is FailureKind.SYNTAX_ERROR and "the code of step 10.1" in v.detail


async def test_missing_function(scorer, validation) -> None:
    v = await score(scorer, validation["10"], 0, "def other():\n    pass\n")
    assert v.kind is FailureKind.RUNTIME_ERROR and "NameError" in v.detail


async def test_broken_earlier_step_fails_the_later_one(scorer, validation) -> None:
    p = validation["10"]
    codes = p.gold_codes(1)
    codes[0] = "def get_alpha(:\n"
    v = await scorer.score(p, 1, codes)
    assert v.kind is FailureKind.SYNTAX_ERROR and "step 10.1" in v.detail


async def test_failing_assert_before_a_crash_is_a_wrong_answer(scorer, validation) -> None:
    # Test 1 gets a wrong value, test 2 crashes: the official run stops at test 1's assert.
    code = (
        "calls = []\n"
        "def get_alpha(recvec, alpha_scaling=5):\n"
        "    calls.append(1)\n"
        "    if len(calls) > 1:\n"
        "        raise RuntimeError('boom')\n"
        "    return 0.0\n"
    )
    v = await score(scorer, validation["10"], 0, code)
    assert v.kind is FailureKind.WRONG_ANSWER and "test 1" in v.detail


@pytest.mark.parametrize("exit_call", ["import os\nos._exit(0)", "import sys\nsys.exit(0)", "raise SystemExit"])
async def test_exiting_early_is_not_a_pass(scorer, validation, exit_call) -> None:
    # The official harness calls exit status 0 a pass; here the tests must have run.
    code = (
        "__import__('builtins').exec("
        + repr(exit_call.replace("import os\n", "import os;").replace("import sys\n", "import sys;"))
        + ")\n"
        + GOOD
    )
    v = await score(scorer, validation["10"], 0, code)
    assert not v.passed and v.kind is FailureKind.RUNTIME_ERROR
