"""The split of test cases into sandbox code and trusted replay, on every official test case."""

from __future__ import annotations

import ast

import pytest

from scicode.errors import UnsupportedTestError
from scicode.testplan import LEAVES, PROBE, plan_step


def test_every_official_test_case_is_planned(all_problems) -> None:
    planned = 0
    for p in all_problems:
        for s in p.steps:
            plan = plan_step(s.step_id, p.dependencies, s.test_cases)
            assert len(plan.tests) == len(s.test_cases)
            for test in plan.tests:
                tree = ast.parse(test)  # the sandbox code compiles...
                names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
                assert "target" not in names, f"{s.step_id}: the sandbox would need the target"
                assert not any(isinstance(n, ast.Assert) for n in ast.walk(tree)), (
                    f"{s.step_id}: assert left in sandbox"
                )
            for site in plan.sites:
                compile(site.trusted, "x", "eval" if site.kind == "assert" else "exec")
            planned += len(s.test_cases)
    assert planned == 1082


def test_model_call_is_a_leaf_and_the_comparison_is_trusted(validation) -> None:
    p = validation["10"]
    plan = plan_step("10.1", p.dependencies, p.steps[0].test_cases)
    asserts = [s for s in plan.sites if s.kind == "assert"]
    assert asserts[0].trusted == f"np.allclose({LEAVES}[0], target)"
    assert asserts[0].leaves == ("get_alpha(np.linalg.inv(EX1['latvec']).T)",)
    assert asserts[0].slots == ((None, f"{LEAVES}[0]"),)


def test_unpacked_targets_and_model_objects(all_problems) -> None:
    p = next(p for p in all_problems if p.problem_id == "62")
    step = p.step("62.5")
    plan = plan_step(step.step_id, p.dependencies, step.test_cases)
    unpack = next(s for s in plan.sites if s.kind == "target")
    assert unpack.trusted == "a, b, c, d = target"
    check = next(s for s in plan.sites if s.kind == "assert")
    # Attributes of the model's Block are read in the sandbox; are_dicts_close runs trusted.
    assert check.leaves == ("newblock.length", "newblock.basis_size", "newblock.operator_dict", "energy")
    assert "are_dicts_close(" in check.trusted and [k for k, _ in check.slots] == [0, 1, 2, 3]
    assert "are_dicts_close" in plan.prelude


def test_tests_own_expected_values_are_replayed_on_the_trusted_side(validation) -> None:
    p = validation["78"]
    plan = plan_step("78.2", p.dependencies, p.steps[1].test_cases)
    replay = next(s for s in plan.sites if s.text.startswith("expected_theta"))
    assert replay.kind == "replay"
    assert "np.cos(np.sqrt(" in replay.trusted  # computed with trusted numpy...
    assert replay.leaves[0] == "state[0]"  # ...from the state as the test saw it after the model ran
    # The sandbox runs the same rewritten statement on the recorded leaves (model code runs once).
    assert f"{LEAVES} = {PROBE}.record(" in plan.tests[0]


def test_helpers_defined_by_tests_are_trusted_when_pure(validation) -> None:
    p = validation["10"]
    plan = plan_step("10.6", p.dependencies, p.steps[5].test_cases)
    assert "def are_equivalent" in plan.prelude
    assert any(s.trusted.startswith("are_equivalent(") for s in plan.sites if s.kind == "assert")


def test_target_passed_to_model_code_is_refused() -> None:
    with pytest.raises(UnsupportedTestError):
        plan_step("x.1", "import numpy as np", ["assert f(target) == 1"])


def test_shadowing_a_builtin_in_test_code_makes_it_a_leaf() -> None:
    plan = plan_step("x.1", "import numpy as np", ["sum = model_fn(3)\nassert np.allclose(sum, target)"])
    check = plan.sites[-1]
    assert check.leaves == ("sum",)
