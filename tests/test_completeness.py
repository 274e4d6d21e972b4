"""Every site is accounted for, and the expected values a test computes never come from the sandbox.

Attack programs on real validation steps, run through the real parser and local sandbox (as in
`tests/test_exploits.py`): 78.1 and 78.2 keep all their asserts inside functions the tests define
and call; 10.1 and 6.1 assert at top level. The program may tamper with the probe (stop
recording, skip, reorder or repeat records, forge the end of its run), make a trusted replay fail
so that a value computed in the sandbox would be used instead, read a test's expected value from
its caller's frame, rebind the test's variables, or patch numpy in the sandbox. Each gets a model
failure; the gold answer of the same step passes.
"""

from __future__ import annotations

import textwrap

import pytest

from scicode.parser import extract_code
from scicode.scorer import plan_for
from scicode.verdict import FailureKind

MODEL_FAILURES = (FailureKind.RUNTIME_ERROR, FailureKind.WRONG_ANSWER)


def _step(validation, step_id: str):
    problem = validation[step_id.split(".")[0]]
    return problem, [s.step_id for s in problem.steps].index(step_id)


def gold(validation, step_id: str) -> str:
    problem, index = _step(validation, step_id)
    return problem.steps[index].gold_code


def site_ids(validation, step_id: str, kind: str | None = None) -> list[int]:
    problem, index = _step(validation, step_id)
    plan = plan_for(problem, problem.steps[index])
    return [s.site_id for s in plan.sites if kind is None or s.kind == kind]


async def judge(scorer, validation, reply: str, step_id: str):
    problem, index = _step(validation, step_id)
    codes = problem.gold_codes(index)
    codes[index] = extract_code(f"```python\n{reply}\n```")
    return await scorer.score(problem, index, codes)


def wrong(step_id: str) -> str:
    """An answer that fails the step when judged honestly."""
    returns = {
        "78.1": "np.zeros(2)",
        "78.2": "np.zeros((n + 1, 2)) + np.nan",
        "10.1": "0.0",
        "6.1": "(np.zeros_like(image_array, dtype=float), np.zeros_like(image_array, dtype=float))",
    }[step_id]
    header = {
        "78.1": "pendulum_derivs(state, t, g, L, beta, A, alpha)",
        "78.2": "runge_kutta_4th_order(f, state, t0, dt, n, g, L, beta, A, alpha)",
        "10.1": "get_alpha(recvec, alpha_scaling=5)",
        "6.1": "apply_low_pass_filter(image_array, frequency_threshold)",
    }[step_id]
    return f"def {header}:\n    return {returns}\n"


# ---------------------------------------------------------------------------------------------
# Tampering with the probe records
# ---------------------------------------------------------------------------------------------


def tamper(body: str) -> str:
    """Module-level code wrapping the probe's recorder; `body` decides what reaches the real one."""
    return (
        "_probe = __scicode_probe__\n"
        "_real_record = _probe.record\n"
        "_state = {'held': []}\n"
        "def _record(site, leaves, extra):\n" + textwrap.indent(body, "    ") + "\n"
        "_probe.record = _record\n"
    )


def forge_end() -> str:
    return "__scicode_probe__.emit({'ev': 'done'})\n__import__('os')._exit(0)\n"


TAMPERINGS = {
    "recording disabled": lambda ids: (
        "__scicode_probe__.record = lambda site, leaves, extra: leaves\n__scicode_probe__.enter = lambda scope: None\n"
    ),
    "asserts not recorded": lambda ids: tamper(
        f"if site in {ids['assert']}:\n    return leaves\nreturn _real_record(site, leaves, extra)"
    ),
    "one site skipped": lambda ids: tamper(
        f"if site == {ids['all'][-1]}:\n    return leaves\nreturn _real_record(site, leaves, extra)"
    ),
    "sites reordered": lambda ids: tamper(
        f"if site == {ids['all'][0]} and not _state['held']:\n"
        "    _state['held'].append((site, leaves, extra))\n"
        "    return leaves\n"
        "out = _real_record(site, leaves, extra)\n"
        "while _state['held']:\n"
        "    _real_record(*_state['held'].pop())\n"
        "return out"
    ),
    "a site repeated": lambda ids: tamper(
        f"if site == {ids['all'][0]}:\n    _real_record(site, leaves, extra)\nreturn _real_record(site, leaves, extra)"
    ),
    "forged end after the first test": lambda ids: (
        "_real_test = __scicode_probe__.test\n"
        "def _test(k):\n"
        "    if k == 1:\n" + textwrap.indent(forge_end(), "        ") + "    _real_test(k)\n"
        "__scicode_probe__.test = _test\n"
    ),
    "forged end before the last site": lambda ids: tamper(
        f"if site == {ids['all'][-1]}:\n"
        + textwrap.indent(forge_end(), "    ")
        + "return _real_record(site, leaves, extra)"
    ),
    "enter suppressed": lambda ids: "__scicode_probe__.enter = lambda scope: None\n",
    "extra enter": lambda ids: (
        "_real_enter = __scicode_probe__.enter\n"
        "def _enter(scope):\n"
        "    _real_enter(scope)\n"
        "    _real_enter(scope)\n"
        "__scicode_probe__.enter = _enter\n"
    ),
}
NEEDS_FUNCTIONS = {"enter suppressed", "extra enter"}


@pytest.mark.parametrize("step_id", ["78.1", "78.2", "10.1"])
@pytest.mark.parametrize("how", TAMPERINGS)
@pytest.mark.parametrize("answer", ["gold", "wrong"])
async def test_tampered_records_fail_closed(scorer, validation, step_id, how, answer) -> None:
    if how in NEEDS_FUNCTIONS and step_id == "10.1":
        pytest.skip("10.1 has no test-defined functions")
    ids = {"all": site_ids(validation, step_id), "assert": site_ids(validation, step_id, "assert")}
    code = gold(validation, step_id) if answer == "gold" else wrong(step_id)
    v = await judge(scorer, validation, TAMPERINGS[how](ids) + code, step_id)
    assert not v.passed and v.kind in MODEL_FAILURES, v
    if answer == "gold":  # right values: only the records themselves can fail it
        assert v.kind is FailureKind.RUNTIME_ERROR and "test records are incomplete" in v.detail, v


async def test_forged_done_with_no_records_at_all(scorer, validation) -> None:
    code = (
        "def pendulum_derivs(state, t, g, L, beta, A, alpha):\n"
        "    __scicode_probe__.emit({'ev': 'done'})\n"
        "    __import__('os')._exit(0)\n"
    )
    v = await judge(scorer, validation, code, "78.1")
    assert v.kind is FailureKind.RUNTIME_ERROR and "incomplete" in v.detail, v


@pytest.mark.parametrize("step_id", ["78.1", "78.2", "10.1", "6.1"])
async def test_the_gold_answer_passes(scorer, validation, step_id) -> None:
    v = await judge(scorer, validation, gold(validation, step_id), step_id)
    assert v.passed, v


# ---------------------------------------------------------------------------------------------
# Expected values: computed on the trusted side only
# ---------------------------------------------------------------------------------------------

#: 6.1 test 4 replays `MaskAreaDiff = T1.sum() - T2.sum()` from the model's masks. The answer is
#: the gold filter, vectorised, with masks whose `.sum()` makes the trusted replay fail (a value
#: that cannot be recorded, or one that raises on the trusted side) while the sandbox computes
#: whatever difference it likes. A trusted replay that fails must fail the step, not fall back.
FILTER = """
def _filter(image_array, frequency_threshold):
    input_f_image = fftshift(fft2(image_array))
    m, n = image_array.shape
    i, j = np.meshgrid(np.arange(m), np.arange(n), indexing="ij")
    T = (np.sqrt((i - m / 2) ** 2 + (j - n / 2) ** 2) < frequency_threshold).astype(float)
    return T, np.real(ifft2(ifftshift(T * input_f_image)))
"""
BROKEN_REPLAYS = {
    "unrecordable leaf": "class _Sum:\n    def __sub__(self, other):\n        return 1e9\n",
    "leaf that raises when replayed": "class _Sum(str):\n    def __sub__(self, other):\n        return 1e9\n",
}


@pytest.mark.parametrize("make_sum", BROKEN_REPLAYS.values(), ids=BROKEN_REPLAYS.keys())
async def test_a_failing_trusted_replay_fails_the_step(scorer, validation, make_sum) -> None:
    code = (
        FILTER + make_sum + "class _Mask(np.ndarray):\n"
        "    def sum(self, *a, **k):\n"
        "        return _Sum()\n"
        "def apply_low_pass_filter(image_array, frequency_threshold):\n"
        "    T, image = _filter(image_array, frequency_threshold)\n"
        "    return T.view(_Mask), image\n"
    )
    v = await judge(scorer, validation, code, "6.1")
    assert not v.passed and v.kind in MODEL_FAILURES, v
    honest = (
        FILTER
        + "def apply_low_pass_filter(image_array, frequency_threshold):\n    return _filter(image_array, frequency_threshold)\n"
    )
    assert (await judge(scorer, validation, honest, "6.1")).passed


#: Answers that bend a value the test computes itself (name: step, answer, where it must fail).
FRAME_ATTACKS = {
    # 6.1 test 4 hands `frequency_threshold1` and `2` to the model, then its assert reads them
    # again: rebinding them in the test's globals cannot make a wrong mask area pass.
    "rebinding the test's thresholds in module globals": (
        "6.1",
        FILTER + "def apply_low_pass_filter(image_array, frequency_threshold):\n"
        "    g = __import__('sys')._getframe(1).f_globals\n"
        "    T, image = _filter(image_array, frequency_threshold)\n"
        "    if 'image_array1' in g:\n"
        "        T = np.zeros_like(T)\n"
        "        if 'frequency_threshold2' in g:\n"
        "            g['frequency_threshold1'], g['frequency_threshold2'] = 5.0, 0.0\n"
        "        else:\n"
        "            T.flat[:100] = 1.0\n"
        "    return T, image\n",
        "test 4",
    ),
    # 78.1 computes `expected_output` from constants before it calls the model.
    "reading the expected value from the caller's frame": (
        "78.1",
        "def pendulum_derivs(state, t, g, L, beta, A, alpha):\n"
        "    caller = __import__('sys')._getframe(1)\n"
        "    return caller.f_locals.get('expected_output', np.zeros(2))\n",
        "",
    ),
    "reading any expected value from any frame": (
        "78.1",
        "def pendulum_derivs(state, t, g, L, beta, A, alpha):\n"
        "    f = __import__('sys')._getframe(1)\n"
        "    while f is not None:\n"
        "        for name, value in list(f.f_locals.items()) + list(f.f_globals.items()):\n"
        "            if 'expected' in name and getattr(value, 'shape', None) == (2,):\n"
        "                return value\n"
        "        f = f.f_back\n"
        "    return np.zeros(2)\n",
        "",
    ),
    # Without gravity, and with `np.sin` zeroed in the sandbox, 78.1's own expected values agree.
    "patching numpy to bend an expected value": (
        "78.1",
        "np.sin = lambda x: 0.0 * x\n"
        "def pendulum_derivs(state, t, g, L, beta, A, alpha):\n"
        "    theta, omega = state\n"
        "    return np.array([omega, -beta * omega + A * np.cos(alpha * t)])\n",
        "",
    ),
    # 78.2 test 1 hands g (and n, L, dt) to the model, then computes its expected angle from them:
    # rebinding g in the caller's frame would turn that angle into -0.1.
    "rebinding the caller's locals": (
        "78.2",
        "def runge_kutta_4th_order(f, state, t0, dt, n, g, L, beta, A, alpha):\n"
        "    ctypes = __import__('ctypes')\n"
        "    caller = __import__('sys')._getframe(1)\n"
        "    caller.f_locals['g'] = (np.pi / 10) ** 2\n"
        "    ctypes.pythonapi.PyFrame_LocalsToFast(ctypes.py_object(caller), ctypes.c_int(0))\n"
        "    return np.tile(np.array([-0.1, 0.0]), (n + 1, 1))\n",
        "test 1",
    ),
}


@pytest.mark.parametrize("attack", FRAME_ATTACKS.values(), ids=FRAME_ATTACKS.keys())
async def test_no_answer_bends_a_value_the_test_computes(scorer, validation, attack) -> None:
    step_id, code, where = attack
    v = await judge(scorer, validation, code, step_id)
    assert v.kind is FailureKind.WRONG_ANSWER and where in v.detail, v


async def test_mutating_an_argument_in_place_is_seen_as_officially(scorer, validation) -> None:
    """78.2 test 2 asserts `final_state[0] < state[0]` after handing `state` to the model: a model
    that changes `state` in place passes it officially, and here too (the one faithful exception)."""
    code = gold(validation, "78.2").replace("def runge_kutta_4th_order(", "def _rk4(", 1) + (
        "\ndef runge_kutta_4th_order(f, state, t0, dt, n, g, L, beta, A, alpha):\n"
        "    if beta and not A:\n"
        "        state[0] = 0.2\n"
        "        return np.full((n + 1, 2), 0.15)\n"
        "    return _rk4(f, state, t0, dt, n, g, L, beta, A, alpha)\n"
    )
    assert (await judge(scorer, validation, code, "78.2")).passed


# ---------------------------------------------------------------------------------------------
# The completeness rule and the in-place rule, on synthetic records
# ---------------------------------------------------------------------------------------------

CHECK = "def check(x):\n    y = f(x)\n    assert y == 1\n"


def _incomplete(tests: list[str], *events: tuple) -> str:
    from scicode.testplan import plan_step
    from scicode.verdict import _Flow

    flow = _Flow(plan_step("x.1", "import numpy as np", tests))
    for ev, *value in [("start",), *events, ("done",)]:
        key = {"test": "k", "enter": "scope", "site": "site"}.get(ev)
        flow.feed({"ev": ev, **({key: value[0]} if key else {})})
    return flow.finish()


@pytest.mark.parametrize(
    ("tests", "events", "complete"),
    [
        ([CHECK + "check(1)\ncheck(2)"], [("test", 0), ("enter", 0), ("site", 0), ("enter", 0), ("site", 0)], True),
        ([CHECK + "check(1)\ncheck(2)"], [("test", 0), ("enter", 0), ("site", 0)], False),  # one call missing
        ([CHECK + "check(1)\ncheck(2)"], [("test", 0), ("enter", 0), ("enter", 0), ("site", 0)], False),
        ([CHECK + "check(1)"], [("test", 0), ("enter", 0)], False),  # the call ended early
        ([CHECK + "check(1)"], [("test", 0), ("site", 0)], False),  # no enter
        ([CHECK + "check(1)"], [("test", 0), ("enter", 0), ("site", True)], False),  # malformed id
        ([CHECK + "for i in range(3):\n    check(i)"], [("test", 0)], False),  # never called
        ([CHECK + "for i in range(3):\n    check(i)"], [("test", 0)] + [("enter", 0), ("site", 0)] * 3, True),
        ([CHECK + "for i in range(3):\n    check(i)"], [("test", 0), ("enter", 0), ("enter", 0), ("site", 0)], False),
        ([CHECK + "assert f(0) == 0"], [("test", 0), ("site", 1)], True),  # defined, never called
        ([CHECK + "assert f(0) == 0"], [("test", 0), ("enter", 0), ("site", 0), ("site", 1)], False),
        ([CHECK, "check(3)"], [("test", 0), ("test", 1), ("enter", 0), ("site", 0)], True),
        ([CHECK, "check(3)"], [("test", 0), ("enter", 0), ("site", 0), ("test", 1)], False),
        ([CHECK, "check(3)"], [("test", 1), ("enter", 0), ("site", 0)], False),  # test 1 missing
        ([CHECK + "check(1)"], [("test", 0), ("enter", 0), ("site", 0), ("done",), ("site", 0)], False),
    ],
)
def test_the_completeness_rule(tests, events, complete) -> None:
    assert (_incomplete(tests, *events) == "") is complete


def test_only_in_place_changes_of_handed_values_are_taken() -> None:
    import numpy as np

    from scicode.verdict import _REFUSED, _changed_in_place

    a = np.zeros(2)
    assert _changed_in_place(a, np.array([1.0, 2.0])) is a and a.tolist() == [1.0, 2.0]
    assert _changed_in_place(a, np.zeros(3)) is _REFUSED  # another shape: a new object
    assert _changed_in_place(a, np.zeros(2, dtype=int)) is _REFUSED
    assert _changed_in_place(a, [0.0, 0.0]) is _REFUSED
    assert _changed_in_place(2.5, 7.0) == 2.5  # an immutable value cannot have changed
    pair = (a, 1.0)
    assert _changed_in_place(pair, (np.ones(2), 9.0)) is pair and a.tolist() == [1.0, 1.0]
    items = [a, 1.0]
    assert _changed_in_place(items, [np.full(2, 3.0), 2.0, 4.0]) is items
    assert items[0] is a and a.tolist() == [3.0, 3.0] and items[1:] == [2.0, 4.0]
