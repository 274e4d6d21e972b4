"""The judge is total and bounded: any probe bytes give a StepVerdict, quickly, and never a false pass.

The probe stream is written in the sandbox, so a policy's code controls every byte of it. These
tests take the real records of gold runs of real validation steps (and of runs whose values were
made wrong) and feed the judge (a) arbitrary bytes and structured mutations of those records, and
(b) concrete crafted records that once broke it. The judge must return a verdict that is the
model's failure (never an exception, never an infrastructure kind), within a few seconds, and
never a pass unless the recorded values are the right ones.
"""

from __future__ import annotations

import contextlib
import json
import math
import struct
import time
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scicode import testplan
from scicode.codec import MAGIC, DecodeError, FrameReader, Value, decode_value, encode_frame
from scicode.errors import TargetsError
from scicode.execution.base import ExecResult, StepProgram
from scicode.scorer import plan_for, program_for
from scicode.verdict import FailureKind, StepVerdict, judge

MAX_PROBE = 64 << 20
#: CPU seconds one judgement of a (small) crafted stream may take.
BOUND = 5.0
#: Steps whose gold records are fuzzed: scalars, tuples of arrays, cmp_tuple_or_list with replayed
#: values, `== target` on a product, test-defined functions with replayed state.
STEPS = ("10.1", "10.3", "10.7", "29.3", "70.6", "78.2")

Frames = list[tuple[dict[str, Any], list[bytes]]]


# ---------------------------------------------------------------------------------------------
# Records of real runs
# ---------------------------------------------------------------------------------------------


class Run:
    """A step's plan, program, targets and the frames of one run of it."""

    def __init__(self, plan: testplan.TestPlan, program: StepProgram, targets: list[Any], frames: Frames) -> None:
        self.plan, self.program, self.targets, self.frames = plan, program, targets, frames

    def judge(self, probe: bytes, **changes: Any) -> StepVerdict:
        return judge(self.plan, self.program, result(probe, **changes), lambda: self.targets, max_probe_bytes=MAX_PROBE)


def result(probe: bytes, **changes: Any) -> ExecResult:
    fields: dict[str, Any] = dict(
        returncode=0,
        signal=None,
        stdout="",
        stderr="",
        probe=probe,
        seconds=0.5,
        timed_out=False,
        output_exceeded=False,
        isolation="test",
    )
    return ExecResult(**{**fields, **changes})


class _Token(str):
    pass


def dumps(tree: Any) -> str:
    """JSON of a tree of any depth (json.dumps recurses)."""
    out: list[str] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, _Token):
            out.append(node)
        elif isinstance(node, (list, dict)):
            opening, closing = ("[", "]") if isinstance(node, list) else ("{", "}")
            items: list[Any] = []
            for i, item in enumerate(node.items() if isinstance(node, dict) else node):
                items.append(_Token("," if i else ""))
                if isinstance(node, dict):
                    items += [_Token(json.dumps(str(item[0])) + ":"), item[1]]
                else:
                    items.append(item)
            out.append(opening)
            stack += [_Token(closing), *reversed(items)]
        else:
            out.append(json.dumps(node))
    return "".join(out)


def raw_frame(header: Any, buffers: list[bytes]) -> bytes:
    """A frame holding any JSON header (not only what `encode_frame` would write)."""
    body = header if isinstance(header, bytes) else dumps(header).encode()
    parts = [MAGIC, struct.pack("<I", len(body)), body, struct.pack("<I", len(buffers))]
    for b in buffers:
        parts += [struct.pack("<Q", len(b)), b]
    return b"".join(parts)


def stream(frames: Frames) -> bytes:
    return b"".join(raw_frame(h, b) for h, b in frames)


def decoded(header: Any, buffers: list[bytes]) -> Any:
    """The header with every recorded value decoded and wrapped again in `Value`."""
    if isinstance(header, dict):
        if set(header) == {"v"}:
            return Value(decode_value(header["v"], buffers))
        return {k: decoded(v, buffers) for k, v in header.items()}
    if isinstance(header, list):
        return [decoded(v, buffers) for v in header]
    return header


def perturb(v: Any) -> Any:
    """A clearly different value of the same shape."""
    if isinstance(v, (bool, np.bool_)):
        return not v
    if isinstance(v, np.ndarray):
        if v.dtype.kind == "b":
            return ~v
        if v.dtype.kind in "iu":
            return v + 7
        if v.dtype.kind in "fc":
            return v * 1.5 + 1
        return v
    if isinstance(v, np.generic):
        return perturb(np.asarray(v))[()]
    if isinstance(v, (int, float, complex)):
        return v * 1.5 + 7
    if isinstance(v, (list, tuple)):
        return type(v)(perturb(x) for x in v) if v else [1.0]
    if isinstance(v, dict):
        return {k: perturb(x) for k, x in v.items()}
    if isinstance(v, str):
        return v + "x"
    return 1.0 if v is None else v


def wrong(frames: Frames) -> Frames:
    """The records with every site's leaves made wrong (what a wrong answer would record)."""
    out: Frames = []
    for header, buffers in frames:
        if header.get("ev") == "site":
            header = decoded(header, buffers)
            header["leaves"] = [Value(perturb(x.value)) for x in header["leaves"]]
            header, buffers = FrameReader(encode_frame(header), max_bytes=MAX_PROBE).frames()[0]
        out.append((header, buffers))
    return out


@pytest.fixture(scope="module")
async def runs(executor, scorer, validation) -> dict[str, Run]:
    out = {}
    for step_id in STEPS:
        problem = validation[step_id.split(".")[0]]
        index = [s.step_id for s in problem.steps].index(step_id)
        step = problem.steps[index]
        await scorer.ensure_targets(problem, step)
        program = program_for(problem, index, problem.gold_codes(index))
        res = await executor.run(program, timeout=120)
        frames = FrameReader(res.probe, max_bytes=MAX_PROBE).frames()
        out[step_id] = Run(plan_for(problem, step), program, scorer.targets.load(step), frames)
    return out


def test_the_records_are_judged_as_expected(runs) -> None:
    for run in runs.values():
        assert run.judge(stream(run.frames)).passed, run.plan.step_id
        v = run.judge(stream(wrong(run.frames)))
        assert v.kind is FailureKind.WRONG_ANSWER, (run.plan.step_id, v)


# ---------------------------------------------------------------------------------------------
# What every verdict must be
# ---------------------------------------------------------------------------------------------


def judged(run: Run, probe: bytes) -> StepVerdict:
    start = time.thread_time()
    v = run.judge(probe)
    elapsed = time.thread_time() - start
    assert isinstance(v, StepVerdict)
    assert not v.kind.is_infrastructure, v
    assert v.passed is (v.kind is FailureKind.PASSED)
    assert elapsed < BOUND, (elapsed, v)
    assert len(v.detail) <= 20_000
    return v


def close(a: Any, b: Any) -> bool:
    """Loosely the same value (a mutation may land within the asserts' tolerance)."""
    try:
        if isinstance(a, dict) or isinstance(b, dict):
            return type(a) is type(b) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
            if all(isinstance(x, (int, float, complex, np.generic)) for x in (*a, *b)):
                return bool(np.allclose(a, b, rtol=1e-3, atol=1e-6, equal_nan=True))
            return all(close(x, y) for x, y in zip(a, b, strict=True))
        if np.shape(a) != np.shape(b):
            return False
        return bool(np.allclose(a, b, rtol=1e-3, atol=1e-6, equal_nan=True))
    except Exception:
        try:
            return bool(a == b)
        except Exception:
            return False


def leaves(probe: bytes) -> list[list[Any]]:
    out = []
    for header, buffers in FrameReader(probe, max_bytes=MAX_PROBE).frames():
        if header.get("ev") == "site":
            out.append([decode_value(n["v"], buffers) for n in header["leaves"]])
    return out


def values_right(run: Run, probe: bytes) -> bool:
    """The sites' recorded values are (within tolerance) those of the gold run."""
    try:
        got = leaves(probe)
    except (DecodeError, KeyError, TypeError):
        return False
    want = leaves(stream(run.frames))
    return len(got) == len(want) and all(
        len(g) == len(w) and all(close(x, y) for x, y in zip(g, w, strict=True)) for g, w in zip(got, want, strict=True)
    )


# ---------------------------------------------------------------------------------------------
# Mutations
# ---------------------------------------------------------------------------------------------

TAGS = [
    "none", "bool", "int", "float", "complex", "str", "bytes", "list", "tuple", "set", "frozenset", "dict", "odict",
    "counter", "defaultdict", "deque", "range", "slice", "fraction", "decimal", "npscalar", "nd", "ndobj", "matrix",
    "memoryview", "array", "floats", "ints", "sparse", "sympy", "ev", "site", "leaves", "exposed", "v", "done",
]  # fmt: skip

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(TAGS)
)
json_values = st.recursive(
    json_scalars, lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=16
)


def _nested(depth: int, inner: Any, wrap: str) -> Any:
    for _ in range(depth):
        inner = [wrap, [inner]] if wrap else [inner]
    return inner


def _sparse(fmt: str, shape: list[int], extra: Any) -> list[Any]:
    parts = [["nd", "<f8", [1], 0], ["nd", "<i8", [1], 1], ["nd", "<i8", [1], 2]]
    return ["sparse", fmt, "matrix", shape, parts, extra]


big = st.sampled_from([0, 1, 2**31, 10**9, 2**62, 2**63 - 1, 2**64 + 3, 10**30, -1])
hostile_nodes = st.one_of(
    st.builds(_nested, st.integers(60, 4000), st.just(["none"]), st.sampled_from(["list", "tuple", "", "set"])),
    st.builds(lambda d: ["sympy", _nested(d, ["Symbol", "x", {}], "")], st.integers(60, 3000)),
    st.builds(
        lambda dt, shape, i: ["nd", dt, shape, i],
        st.sampled_from(["<f8", "<U0", "|S0", "|O", "<c16", "<M8[s]", "(3,)f8", "V8", "zz"]),
        st.lists(big, max_size=4),
        st.integers(-2, 4),
    ),
    st.builds(lambda shape, n: ["ndobj", shape, [["none"]] * n], st.lists(big, max_size=3), st.integers(0, 3)),
    st.builds(
        lambda a, b, c: ["range", a, b, c],
        st.sampled_from(["0x0", "-0x5", 0]),
        st.sampled_from([hex(10**9), hex(10**30), 10**18, "0x10"]),
        st.sampled_from(["0x1", "0x0", 1, "-0x1"]),
    ),
    st.builds(
        _sparse,
        st.sampled_from(["lil", "csr", "csc", "coo", "dia", "dok", "bsr", "xyz"]),
        st.lists(big, min_size=2, max_size=2),
        st.sampled_from([None, [1, 1], [2**15, 2**15], [0, 1]]),
    ),
    st.builds(
        lambda e: ["sympy", ["call", "Pow", [["Integer", "0xa"], ["Integer", hex(e)]]]],
        st.sampled_from([10**6, 10**9, 2**40]),
    ),
    st.builds(lambda n: ["set", [["int", hex(k * (2**61 - 1))] for k in range(1, n)]], st.integers(20, 3000)),
    st.builds(lambda b: ["int", hex(1 << b)], st.sampled_from([64, 65_535, 65_537, 10**6])),
    st.builds(lambda i: ["bytes", i], st.sampled_from([-1, 0, 3, 10**9, True, 1.0, "0"])),
    st.builds(lambda n: ["list", [["nd", "<f8", [n], 0]] * 64], st.sampled_from([1, 4096])),
    st.builds(lambda t: [t], st.sampled_from(TAGS)),
    st.builds(lambda t, v: [t, v], st.sampled_from(TAGS), json_values),
)
hostile_json = st.one_of(json_values, hostile_nodes, st.builds(lambda n: {"v": n}, hostile_nodes))


def _paths(tree: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if len(path) > 12:
        return out
    if isinstance(tree, dict):
        for k, v in tree.items():
            out += _paths(v, (*path, k))
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            out += _paths(v, (*path, i))
    return out


def _replace(tree: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, head: _replace(tree[head], rest, new)}
    return [*tree[:head], _replace(tree[head], rest, new), *tree[head + 1 :]]


@st.composite
def mutated(draw: Any, frames: Frames) -> bytes:
    """The records, changed by a few structured mutations."""
    frames = [(h, list(b)) for h, b in frames]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["subtree", "subtree", "subtree", "drop", "duplicate", "swap", "buffer", "header"]))
        i = draw(st.integers(0, len(frames) - 1))
        header, buffers = frames[i]
        if op == "subtree":
            path = draw(st.sampled_from(_paths(header)[1:] or [("x",)]))
            header = _replace(header, path, draw(hostile_json)) if path != ("x",) else {**header, "x": 1}
        elif op == "drop":
            del frames[i]
            if not frames:
                return b""
            continue
        elif op == "duplicate":
            frames.insert(i, frames[i])
            continue
        elif op == "swap":
            j = draw(st.integers(0, len(frames) - 1))
            frames[i], frames[j] = frames[j], frames[i]
            continue
        elif op == "buffer":
            data = draw(st.binary(max_size=64) | st.builds(bytes, st.sampled_from([0, 7, 8, 4096])))
            buffers = [*buffers, data] if not buffers or draw(st.booleans()) else [data, *buffers[1:]]
        else:
            header = draw(st.dictionaries(st.sampled_from(["ev", "site", "k", "scope", "leaves", "exposed", "type", "line", "text", "code", "message", "traceback"]), hostile_json, max_size=5))  # fmt: skip
        frames[i] = (header, buffers)
    return stream(frames)


@st.composite
def byte_mutated(draw: Any, data: bytes) -> bytes:
    """The records' bytes, with a few flipped, inserted, deleted or cut."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, max(0, len(out) - 1)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if op == "flip" and out:
            out[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            out[i:i] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del out[i : i + draw(st.integers(1, 16))]
        else:
            del out[i:]
    return bytes(out)


FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@FUZZ
@given(data=st.data(), step=st.sampled_from(STEPS), honest=st.booleans())
def test_mutated_records_never_pass_with_wrong_values(runs, data, step, honest) -> None:
    run = runs[step]
    frames = run.frames if honest else wrong(run.frames)
    probe = data.draw(mutated(frames) | byte_mutated(stream(frames)))
    v = judged(run, probe)
    if v.passed:
        assert honest and values_right(run, probe), v


@FUZZ
@given(data=st.data(), step=st.sampled_from(STEPS))
def test_crafted_values_at_sites_never_pass(runs, data, step) -> None:
    """Every site's leaves replaced by crafted values (hostile nodes, or plain JSON-made values)."""
    run = runs[step]
    frames = []
    for header, buffers in run.frames:
        if header.get("ev") == "site" and data.draw(st.booleans()):
            header = {**header, "leaves": [data.draw(hostile_json) for _ in header["leaves"]]}
        frames.append((header, buffers))
    probe = stream(frames)
    v = judged(run, probe)
    if v.passed:
        assert values_right(run, probe), v


@settings(max_examples=150, deadline=None, derandomize=True)
@given(st.binary(max_size=512) | st.builds(lambda b: MAGIC + b, st.binary(max_size=256)))
def test_arbitrary_bytes_only_ever_raise_decode_error(data) -> None:
    try:
        frames = FrameReader(data, max_bytes=1 << 20).frames()
    except DecodeError:
        return
    for header, buffers in frames:
        for node in header.values():
            with contextlib.suppress(DecodeError):
                decode_value(node, buffers)


SAMPLES = [
    np.arange(6.0).reshape(2, 3),
    [1.0, (2, "a"), {"k": np.int32(3)}],
    {"a": [1.5] * 10, 2: frozenset({1, 2})},
    np.array([1, None, "x"], dtype=object),
]


@settings(max_examples=150, deadline=None, derandomize=True)
@given(sample=st.sampled_from(SAMPLES), data=st.data())
def test_mutated_value_trees_only_ever_raise_decode_error(sample, data) -> None:
    ((header, buffers),) = FrameReader(encode_frame({"x": Value(sample)}), max_bytes=1 << 20).frames()
    tree = header["x"]["v"]
    path = data.draw(st.sampled_from(_paths(tree)))
    tree = _replace(tree, path, data.draw(hostile_json))
    if data.draw(st.booleans()):
        buffers = [*buffers, data.draw(st.binary(max_size=64))]
    start = time.thread_time()
    with contextlib.suppress(DecodeError):
        decode_value(tree, buffers)
    assert time.thread_time() - start < BOUND


# ---------------------------------------------------------------------------------------------
# Concrete records that once broke the judge
# ---------------------------------------------------------------------------------------------


def with_leaf(run: Run, node: Any, buffers: list[bytes] | None = None) -> bytes:
    """The gold records of `run` with the first site's first leaf replaced by a crafted node."""
    frames = list(run.frames)
    i = next(i for i, (h, _) in enumerate(frames) if h.get("ev") == "site")
    header, old = frames[i]
    frames[i] = ({**header, "leaves": [{"v": node}, *header["leaves"][1:]]}, buffers if buffers is not None else old)
    return stream(frames)


def with_header(run: Run, header: Any) -> bytes:
    """The gold records of `run` with its first site's header replaced."""
    frames = list(run.frames)
    i = next(i for i, (h, _) in enumerate(frames) if h.get("ev") == "site")
    frames[i] = (header, frames[i][1])
    return stream(frames)


def _ending(frames: Frames, **fields: Any) -> bytes:
    return stream([*frames[:-1], ({"ev": "exception", **fields}, [])])


ONE, ZERO = np.ones(1).tobytes(), np.zeros(1, np.int64).tobytes()
DEEP_SITE = (
    b'{"ev":"site","site":0,"leaves":[{"v":'
    + b'["list",[' * 100_000
    + b'["none"]'
    + b"]]" * 100_000
    + b'}],"exposed":[]}'
)
CRAFTED = {
    "range of 10**9 (8 GB under np.allclose)": lambda r: with_leaf(r, ["range", "0x0", hex(10**9), "0x1"]),
    "lil of a huge shape (9 s to decode)": lambda r: with_leaf(r, _sparse("lil", [10**9, 10**9], None), [ONE, ZERO, ZERO]),
    "deep value (RecursionError)": lambda r: stream(r.frames[:3]) + raw_frame(DEEP_SITE, []),
    "deep header (RecursionError)": lambda r: stream(r.frames[:1]) + raw_frame(b"[" * 50_000 + b"]" * 50_000, []),
    "deep traceback field": lambda r: _ending(r.frames, type="X", traceback=_nested(900, 0, ""), line=3),
    "leaves not a list (TypeError)": lambda r: with_header(r, {"ev": "site", "site": 0, "leaves": 5, "exposed": 5}),
    "leaves a string": lambda r: with_header(r, {"ev": "site", "site": 0, "leaves": "v", "exposed": []}),
    "site id a list": lambda r: with_header(r, {"ev": "site", "site": [0], "leaves": [], "exposed": []}),
    "site id a bool": lambda r: with_header(r, {"ev": "site", "site": True, "leaves": [], "exposed": []}),
    "ending with odd fields (TypeError)": lambda r: _ending(r.frames, type={}, message=[1], line="x", traceback=5),
    "syntax error with odd fields": lambda r: stream([({"ev": "syntax_error", "line": [], "text": 5}, [])]),
    "unencodable reason not a string": lambda r: with_header(r, {**r.frames[2][0], "leaves": [{"unencodable": [[1]]}]}),
    "one buffer decoded 200 times (MemoryError)": lambda r: with_leaf(r, ["list", [["nd", "<f8", [1 << 20], 0]] * 200], [bytes(8 << 20)]),
    "object array of 10**18 items": lambda r: with_leaf(r, ["ndobj", [10**9, 10**9], []]),
    "headers expanding to GBs": lambda r: stream(r.frames[:1]) + raw_frame(b'{"ev":"test","k":0,"x":[' + b"{}," * 2_500_000 + b"{}]}", []),
    "sympy 10**(10**9)": lambda r: with_leaf(r, ["sympy", ["call", "Pow", [["Integer", "0xa"], ["Integer", hex(10**9)]]]]),
    "colliding set keys": lambda r: with_leaf(r, ["set", [["int", hex(k * (2**61 - 1))] for k in range(1, 5000)]]),
    "int of 10**6 bits": lambda r: with_leaf(r, ["int", hex(1 << 1_000_000)]),
    "event a list (unhashable)": lambda r: with_header(r, {"ev": [1], "site": 0, "leaves": [], "exposed": []}),
    "array with an overflowing shape": lambda r: with_leaf(r, ["nd", "<f8", [3, 12297829382473034411], 0], [ONE]),
}  # fmt: skip


@pytest.mark.parametrize("craft", CRAFTED.values(), ids=CRAFTED.keys())
def test_crafted_records_fail_closed_quickly(runs, craft) -> None:
    run = runs["10.1"]
    v = judged(run, craft(run))
    assert v.kind in (FailureKind.RUNTIME_ERROR, FailureKind.WRONG_ANSWER), v
    assert v.detail


def test_an_unhashable_event_is_an_unknown_record_not_a_crash(runs) -> None:
    # Caught only by the judge's last-resort wrapper before: the flow check hashed the decoded `ev`.
    run = runs["10.1"]
    v = judged(run, with_header(run, {"ev": {"a": 1}, "site": 0, "leaves": [], "exposed": []}))
    assert v.kind == FailureKind.RUNTIME_ERROR and "unknown record" in v.detail, v


def test_a_targets_error_still_propagates(runs) -> None:
    run = runs["10.1"]

    def broken() -> list[Any]:
        raise TargetsError("the targets file is corrupt")

    with pytest.raises(TargetsError):
        judge(run.plan, run.program, result(stream(run.frames)), broken, max_probe_bytes=MAX_PROBE)


def test_huge_details_are_cut(runs) -> None:
    run = runs["10.1"]
    v = run.judge(_ending(run.frames, type="ValueError", message="m" * 10, traceback="t" * 100_000), returncode=1)
    assert v.kind is FailureKind.RUNTIME_ERROR and len(v.detail) <= 17_000 and math.isfinite(v.seconds)
