"""Verdicts agree with the official harness on honest answers, and differ only on exploits.

For a set of validation steps, each answer (gold, and deliberately wrong variants: sign flips,
off-by-one, wrong shape, wrong dtype, None, an exception, a missing function) is judged twice:
by the official harness (code, targets and asserts in one file; exit status 0 is a pass), and by
this package. The targets are the ones this package derives, written in the official layout and
read by an independent port of the official decoder.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fakes import official_harness
from tests.fakes.mutants import VARIANTS, mutate

STEPS = [
    "1.1",
    "3.1",
    "4.1",
    "10.1",
    "10.3",
    "10.6",
    "10.7",
    "19.1",
    "29.2",
    "29.3",
    "38.3",
    "44.2",
    "49.1",
    "70.6",
    "70.8",
    "78.1",
    "78.2",
]


@pytest.fixture(scope="module")
async def official_root(scorer, validation, tmp_path_factory):
    steps = []
    for sid in STEPS:
        p = validation[sid.split(".")[0]]
        step = p.step(sid)
        await scorer.targets.ensure(p, step, scorer.run_program, scorer.options.max_probe_bytes)
        steps.append(scorer.targets.derived.path(sid))
    return official_harness.make_root(tmp_path_factory.mktemp("official"), steps)


async def _both(scorer, validation, root, sid: str, code_for_step) -> tuple[bool, bool]:
    p = validation[sid.split(".")[0]]
    i = [s.step_id for s in p.steps].index(sid)
    codes = p.gold_codes(i)
    codes[i] = code_for_step(codes[i], p.steps[i].function_header)
    source = official_harness.program(sid, p.dependencies, codes[:i], codes[i], p.steps[i].test_cases)
    name = f"{sid}-{abs(hash(codes[i]))}"
    ours, official = await asyncio.gather(
        scorer.score(p, i, codes),
        asyncio.get_running_loop().run_in_executor(_POOL, official_harness.run, root, name, source),
    )
    return ours.passed, official


_POOL = ThreadPoolExecutor(max_workers=2)


async def test_honest_answers_get_the_official_verdict(scorer, validation, official_root) -> None:
    cases = [(sid, v) for sid in STEPS for v in VARIANTS]
    results = await asyncio.gather(
        *(
            _both(scorer, validation, official_root, sid, lambda code, header, v=v: mutate(code, header, v))
            for sid, v in cases
        )
    )
    disagreements = [(sid, v, ours, official) for (sid, v), (ours, official) in zip(cases, results) if ours != official]
    assert disagreements == [], f"verdicts differ from the official harness: {disagreements}"
    outcomes = {v: sum(ours for (sid, vv), (ours, _) in zip(cases, results) if vv == v) for v in VARIANTS}
    print("passes per variant:", outcomes)
    assert outcomes["gold"] == len(STEPS)  # every gold answer passes both
    assert outcomes["raises"] == outcomes["missing_function"] == 0
    assert sum(outcomes.values()) < len(cases) // 2  # the variants are really wrong, mostly


@pytest.mark.parametrize("exploit", ["import os\nos._exit(0)", "import sys\nsys.exit(0)"])
async def test_exploits_are_where_the_verdicts_differ(scorer, validation, official_root, exploit) -> None:
    exploit = exploit.replace("\n", "; ")
    ours, official = await _both(
        scorer,
        validation,
        official_root,
        "10.1",
        lambda code, header: f"__import__('builtins').exec({exploit!r})\n{code}",
    )
    assert official is True and ours is False
