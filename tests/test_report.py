"""Paper metrics from saved results: denominators, micro vs macro, pass@k."""

from __future__ import annotations

import json
import math

import pytest

from scicode.report import RolloutRecord, by_split, format_summary, load_run, pass_at_k, summarize


def steps(*passed: bool) -> tuple[dict, ...]:
    return tuple(
        {"step_id": f"s{i}", "passed": p, "kind": "passed" if p else "wrong_answer"} for i, p in enumerate(passed)
    )


def test_micro_is_over_steps_and_macro_over_problems() -> None:
    records = [RolloutRecord("1", "test", steps(True)), RolloutRecord("2", "test", steps(False, False, False, True))]
    s = summarize(records)
    assert (s.problems, s.problems_solved, s.steps, s.steps_passed) == (2, 1.0, 5, 2.0)
    assert s.micro == pytest.approx(2 / 5) and s.macro == pytest.approx((1 + 0.25) / 2)
    assert s.resolve_rate == 0.5 and s.kinds == {"passed": 2, "wrong_answer": 3}


def test_pass_at_k_estimator() -> None:
    assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
    assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
    assert pass_at_k(4, 1, 2) == pytest.approx(1 - math.comb(3, 2) / math.comb(4, 2))


def test_several_rollouts_give_pass_at_k_and_split_tables() -> None:
    records = [RolloutRecord("1", "validation", steps(i == 0, True)) for i in range(4)]
    records += [RolloutRecord("2", "test", steps(False)) for _ in range(4)]
    tables = by_split(records)
    assert set(tables) == {"validation", "test", "all"}
    v = tables["validation"]
    assert v.pass_at_k["main@1"] == pytest.approx(0.25) and v.pass_at_k["main@4"] == 1.0
    assert v.pass_at_k["subproblem@1"] == pytest.approx((0.25 + 1.0) / 2)
    assert tables["all"].steps == 3 and tables["test"].steps_passed == 0
    text = format_summary(tables)
    assert "validation" in text and "main@4=100.0%" in text


def test_vf_eval_results_with_and_without_step_records(tmp_path) -> None:
    rows = [
        {"info": {"problem_id": "1", "split": "validation"}, "metrics": {"steps_passed": 1.0, "steps_total": 1.0}},
        {"info": {"problem_id": "10", "split": "validation"}, "metrics": {"steps_passed": 7.0, "steps_total": 11.0}},
        {
            "info": {"problem_id": "3", "split": "validation"},
            "scicode": {"problem_id": "3", "split": "validation", "steps": list(steps(False))},
        },
    ]
    path = tmp_path / "results.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    s = summarize(load_run(tmp_path))
    assert (s.problems, s.steps, s.steps_passed, s.problems_solved) == (3, 13, 8.0, 1.0)
