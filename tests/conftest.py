"""Shared fixtures: real problems, one local executor and one scorer for the whole session.

Derived validation targets go to a session-private cache (SCICODE_CACHE_DIR), so tests neither
read nor pollute the user's cache; they are derived once, on first use, and reused.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

_CACHE = Path(
    os.environ.get("SCICODE_TEST_CACHE") or Path(__file__).resolve().parent.parent / ".pytest_cache" / "scicode"
)
os.environ["SCICODE_CACHE_DIR"] = str(_CACHE)

from scicode.dataset import Problem, load_problems  # noqa: E402
from scicode.execution import ExecutorOptions, make_executor  # noqa: E402
from scicode.scorer import ScoringOptions, StepScorer  # noqa: E402
from scicode.target_sources import resolve_targets  # noqa: E402


@pytest.fixture(scope="session")
def validation() -> dict[str, Problem]:
    """The 15 validation problems by id."""
    return {p.problem_id: p for p in load_problems(split="validation", source="bundled")}


@pytest.fixture(scope="session")
def all_problems() -> list[Problem]:
    """All 80 problems."""
    return load_problems(split="all", source="bundled")


@pytest.fixture(scope="session")
async def executor():
    """One local executor (strongest isolation available) shared by the session."""
    ex = make_executor("local", ExecutorOptions(concurrency=os.cpu_count() or 2, extra={"isolation": "auto"}))
    yield ex
    await ex.aclose()


@pytest.fixture(scope="session")
def scorer(executor, validation) -> StepScorer:
    """A scorer judging validation steps against targets derived from the gold code."""
    targets, _ = resolve_targets("auto", list(validation.values()))
    return StepScorer(executor, targets, ScoringOptions(timeout=120, infra_retries=1))


@pytest.fixture(scope="session")
async def derived_targets(scorer, validation) -> None:
    """Every validation step's targets derived (locally) up front.

    Derivation runs gold code through the configured backend on first use; tests that count what
    a backend is asked to do request this so derivation is not counted.
    """
    steps = [(p, s) for p in validation.values() for s in p.scored_steps]
    await asyncio.gather(*(scorer.ensure_targets(p, s) for p, s in steps))
