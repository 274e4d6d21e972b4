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
    assert replay.trusted == "expected_theta = state[0] * np.cos(np.sqrt(g / L) * n * dt)"  # trusted numpy
    # `state` went to the model, which may change it in place: its sandbox object is recorded too.
    assert replay.leaves == () and "state" in replay.exposed
    # Only sites read expected_theta: the sandbox never computes it.
    assert "expected_theta" not in plan.tests[0]
    assert f"{PROBE}.record({replay.site_id}, ()" in plan.tests[0]


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


# ---------------------------------------------------------------------------------------------
# Which replays the sandbox runs, and the flow of records
# ---------------------------------------------------------------------------------------------


def _records(stmt: ast.stmt) -> list[int]:
    return [
        n.args[0].value
        for n in ast.walk(stmt)
        if isinstance(n, ast.Call)
        and isinstance(n.func, ast.Attribute)
        and n.func.attr == "record"
        and isinstance(n.args[0], ast.Constant)
    ]


def _bound(site) -> set[str]:
    stmt = ast.parse(site.trusted).body[0]
    targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _unrun_replays(plan, body: list[ast.stmt]) -> list[tuple[int, set[str]]]:
    """(position, names) of the replays in `body` whose assignment the sandbox does not run."""
    out = []
    for i, stmt in enumerate(body):
        if not (isinstance(stmt, ast.Expr) and _records(stmt)) or plan.site(_records(stmt)[0]).kind != "replay":
            continue
        names = _bound(plan.site(_records(stmt)[0]))
        after = body[i + 1] if i + 1 < len(body) else ast.Pass()
        if not names <= {n.id for n in ast.walk(after) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}:
            out.append((i, names))
    return out


def _loads(node: ast.AST) -> set[str]:
    names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    if isinstance(node, (ast.FunctionDef, ast.Lambda)):  # its own parameters and locals are not reads
        names -= {a.arg for a in ast.walk(node.args) if isinstance(a, ast.arg)}
        names -= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


def test_no_sandbox_code_reads_a_replay_the_sandbox_does_not_run(all_problems) -> None:
    """Independent check of the liveness rule, on every official test case."""
    unrun = 0
    for p in all_problems:
        for s in p.steps:
            plan = plan_step(s.step_id, p.dependencies, s.test_cases)
            top = [stmt for test in plan.tests for stmt in ast.parse(test).body]
            functions = [n for stmt in top for n in ast.walk(stmt) if isinstance(n, (ast.FunctionDef, ast.Lambda))]
            for i, names in _unrun_replays(plan, top):
                unrun += 1
                for fn in functions:
                    assert not _loads(fn) & names, f"{s.step_id}: a function reads {names}"
                for stmt in top[i + 1 :]:
                    assert not _loads(stmt) & names, f"{s.step_id}: {ast.unparse(stmt)[:80]} reads {names}"
                    if isinstance(stmt, ast.Assign):
                        names = names - {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name)}
            for fn in (f for f in functions if isinstance(f, ast.FunctionDef)):
                for _, names in _unrun_replays(plan, fn.body):
                    unrun += 1
                    assert not _loads(fn) & names, f"{s.step_id}: {fn.name} reads {names}"
    assert unrun == 85


def test_expected_values_that_only_sites_read_never_reach_the_sandbox(validation) -> None:
    p = validation["78"]
    plan = plan_step("78.1", p.dependencies, p.steps[0].test_cases)
    # computed from constants before the model is called, then compared with its result
    assert all("expected_output" not in test for test in plan.tests)
    assert any(s.trusted.startswith("expected_output = np.array(") for s in plan.sites)
    assert all("g = 9.81" in test and "L = 1.0" in test for test in plan.tests)  # handed to the model
    p = validation["10"]
    step = p.step("10.11")
    plan = plan_step("10.11", p.dependencies, step.test_cases)
    assert all("ref" not in test for test in plan.tests)


def test_values_handed_to_the_model_are_recorded_where_sites_read_them(validation) -> None:
    p = validation["6"]
    plan = plan_step("6.1", p.dependencies, p.step("6.1").test_cases)
    check = plan.sites[-1]
    # the thresholds are the test's own (trusted) values, not leaves; their sandbox objects are
    # recorded because the test passed them to the model (the trusted side ignores them: ints)
    assert check.leaves == ()
    assert check.exposed == ("frequency_threshold1", "frequency_threshold2")
    assert "frequency_threshold1 ** 2" in check.trusted


def test_flows_of_the_official_tests_are_exact(all_problems) -> None:
    """Every function the official tests define that holds sites is called exactly once, as a
    statement of its own: the flow is exact (no "free" calls) and expands to every site in order."""
    with_functions = set()
    for p in all_problems:
        for s in p.steps:
            plan = plan_step(s.step_id, p.dependencies, s.test_cases)
            items = [i for flow in (*plan.flows, *plan.bodies) for i in flow]
            assert not [i for i in items if i[0] == "free"], s.step_id
            assert sorted(i for kind, i in items if kind == "call") == list(range(len(plan.scopes)))
            expanded = []
            for flow in plan.flows:
                for kind, i in flow:
                    expanded += [i] if kind == "site" else [j for _, j in plan.bodies[i]]
            assert expanded == list(range(len(plan.sites))), s.step_id
            if plan.scopes:
                with_functions.add(s.step_id)
    assert with_functions == {"78.1", "78.2"}


FN = "def check(x):\n    y = f(x)\n    assert y == 1\n"


@pytest.mark.parametrize(
    ("tests", "flows", "bodies"),
    [
        ([FN + "check(1)\ncheck(2)"], ((("call", 0), ("call", 0)),), ((("site", 0),),)),
        ([FN, "check(3)"], ((), (("call", 0),)), ((("site", 0),),)),
        ([FN + "for i in range(3):\n    check(i)"], ((("free", 0),),), ((("site", 0),),)),
        ([FN + "r = check(1)\ncheck(check)"], ((("free", 0), ("free", 0)),), ((("site", 0),),)),
        ([FN + "r = check(1)\nassert r is None"], ((("call", 0), ("site", 1)),), ((("site", 0),),)),
        ([FN + "z = [check(i) for i in range(2)]"], ((("free", 0),),), ((("site", 0),),)),
        ([FN + "def run():\n    check(1)\nrun()"], ((("free", 0),),), ((("site", 0),),)),
        ([FN + "assert f(0) == 0"], ((("site", 1),),), ((("site", 0),),)),  # never called: no records
        ([FN + "check(1)\nassert f(0) == 0\ncheck(2)"], ((("call", 0), ("site", 1), ("call", 0)),), ((("site", 0),),)),
        ([FN + "check(1)", FN + "check(2)"], ((("call", 0),), (("call", 1),)), ((("site", 0),), (("site", 1),))),
    ],
)
def test_flows_count_calls_where_they_can(tests, flows, bodies) -> None:
    plan = plan_step("x.1", "import numpy as np", tests)
    assert (plan.flows, plan.bodies) == (flows, bodies)
