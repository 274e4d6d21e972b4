"""The trusted side: judge a step from its probe records and the real targets.

`judge` runs no model code and no sandbox I/O. It decodes the values the program recorded
(data only, see `scicode.codec`), replays each site of the test plan with them and the step's
targets, and returns a `StepVerdict`. It fails closed: a missing or malformed record, a value that
could not be encoded, a program that ended before its tests did, all fail the step.

Kinds follow what the official harness would have hit first: a failing assert recorded before a
crash or a hang is `wrong_answer`, because the official run stops at that assert.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import logging
import sys
import types
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from scicode.codec import DecodeBudget, DecodeError, FrameReader, decode_value
from scicode.errors import TargetsError
from scicode.execution.base import ExecResult, StepProgram
from scicode.testplan import LEAVES, FlowItem, Site, TestPlan

#: Bump when a change can move a score; README's changelog says how.
VERDICT_VERSION = "2"
#: Longest failure detail kept (an honest one is a traceback tail of ~10 kB at most); a crafted
#: record can make an exception message as large as the values it holds.
MAX_DETAIL = 16_000

logger = logging.getLogger(__name__)


class FailureKind(enum.StrEnum):
    """Why a step did not pass. The last three are infrastructure, never the model's fault."""

    PASSED = "passed"
    NO_CODE = "no_code"
    SYNTAX_ERROR = "syntax_error"
    RUNTIME_ERROR = "runtime_error"
    TIMEOUT = "timeout"
    MEMORY = "memory"
    OUTPUT_LIMIT = "output_limit"
    WRONG_ANSWER = "wrong_answer"
    SANDBOX_ERROR = "sandbox_error"
    TARGETS_ERROR = "targets_error"

    @property
    def is_infrastructure(self) -> bool:
        """True for failures that are not the model's."""
        return self in (FailureKind.SANDBOX_ERROR, FailureKind.TARGETS_ERROR)


FAILURE_KINDS = tuple(k for k in FailureKind if k is not FailureKind.PASSED)


@dataclass(frozen=True)
class StepVerdict:
    """The judged outcome of one step."""

    step_id: str
    passed: bool
    kind: FailureKind
    detail: str
    """The failing assert, the traceback tail, or what went wrong; empty on a pass."""
    seconds: float
    """Wall time of the program run (0 when nothing ran)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {**asdict(self), "kind": str(self.kind)}


def no_run_verdict(step_id: str, kind: FailureKind, detail: str) -> StepVerdict:
    """A verdict for a step whose program never ran (no code, sandbox down, targets missing)."""
    return StepVerdict(step_id=step_id, passed=False, kind=kind, detail=detail, seconds=0.0)


@dataclass(frozen=True)
class _Events:
    ending: dict[str, Any] | None
    stream: list[tuple[dict[str, Any], list[bytes]]]


def _read_events(result: ExecResult, max_bytes: int) -> _Events:
    frames = FrameReader(result.probe, max_bytes=max_bytes).frames()
    ending = next((h for h, _ in reversed(frames) if _event(h) in _ENDINGS), None)
    return _Events(ending=ending, stream=frames)


def _event(header: dict[str, Any]) -> str:
    """A record's `ev` field as text: it may be any decoded value (a list is not even hashable)."""
    event = header.get("ev")
    return event if isinstance(event, str) else repr(event)


def judge(
    plan: TestPlan,
    program: StepProgram,
    result: ExecResult,
    targets: Callable[[], Sequence[Any]],
    *,
    max_probe_bytes: int,
    strict: bool = True,
) -> StepVerdict:
    """The verdict of one step program run.

    With `strict` (the default), an empty value never matches a non-empty target (see
    `scicode.compare.strict`); without it, comparisons are exactly the official ones.

    `targets` is called only when a recorded site needs them, and returns one value per test case
    (as the official decoder gives them). It may raise TargetsError, which propagates.

    Total and bounded: the probe bytes are the program's to write, so whatever they hold gives a
    verdict, never an exception. Decoding stays within one `DecodeBudget` per stream (sizes, parts,
    CPU time; see `scicode.codec`), so replaying the asserts on what it yields is bounded too;
    anything a crafted record still makes raise fails the step as the model's `runtime_error`.
    """
    budget = DecodeBudget.for_probe(max_probe_bytes)
    try:
        v = _judge(plan, program, result, targets, max_probe_bytes=max_probe_bytes, strict=strict, budget=budget)
    except TargetsError:
        raise
    except Exception as e:  # records crafted to break the judge fail the step (logged, in case it is a bug)
        logger.warning("step %s: its probe records broke the judge; failing the step", plan.step_id, exc_info=True)
        detail = f"the probe records cannot be judged ({_exception_text(e)}); were they written by the program?"
        return StepVerdict(plan.step_id, False, FailureKind.RUNTIME_ERROR, detail, result.seconds)
    if len(v.detail) > MAX_DETAIL:
        half = MAX_DETAIL // 2
        v = dataclasses.replace(
            v, detail=f"{v.detail[:half]}\n[… {len(v.detail) - MAX_DETAIL} characters …]\n{v.detail[-half:]}"
        )
    return v


def _exception_text(e: BaseException) -> str:
    try:
        message = str(e)
    except Exception:  # noqa: BLE001 - a message that cannot even be formatted
        message = ""
    return f"{type(e).__name__}: {message[:300]}" if message else type(e).__name__


def _judge(
    plan: TestPlan,
    program: StepProgram,
    result: ExecResult,
    targets: Callable[[], Sequence[Any]],
    *,
    max_probe_bytes: int,
    strict: bool,
    budget: DecodeBudget,
) -> StepVerdict:
    def verdict(kind: FailureKind, detail: str = "") -> StepVerdict:
        return StepVerdict(plan.step_id, kind is FailureKind.PASSED, kind, detail, result.seconds)

    if result.output_exceeded:
        return verdict(
            FailureKind.OUTPUT_LIMIT, "the program wrote more than the output limit (a file reached max_output_mb)"
        )
    try:
        events = _read_events(result, max_probe_bytes)
    except DecodeError as e:
        return verdict(
            FailureKind.RUNTIME_ERROR, f"the probe output is corrupted ({e}); was it written to by the program?"
        )
    ending = events.ending or {}
    if ending.get("ev") == "syntax_error":
        return verdict(FailureKind.SYNTAX_ERROR, _syntax_detail(ending, program))
    replay = _Replay(plan, targets, strict=strict)
    replay.budget = budget
    failure = replay.run(events.stream)
    if failure is not None:
        return verdict(FailureKind.WRONG_ANSWER, failure)
    return _ending_verdict(plan, program, result, events, verdict)


def _ending_verdict(
    plan: TestPlan, program: StepProgram, result: ExecResult, events: _Events, verdict: Callable[..., StepVerdict]
) -> StepVerdict:
    ending = events.ending or {}
    if result.timed_out:
        return verdict(FailureKind.TIMEOUT, f"the step did not finish within {result.seconds:.0f} s")
    if result.killed_for:
        return verdict(
            FailureKind.RUNTIME_ERROR, f"the program was killed: it exceeded the limit on {result.killed_for}"
        )
    if ending.get("ev") == "exception":
        kind = (
            FailureKind.MEMORY
            if ending.get("type") in ("MemoryError", "_ArrayMemoryError")
            else FailureKind.RUNTIME_ERROR
        )
        where = program.section_of(ending.get("line"))
        head = f"{ending.get('type')}: {ending.get('message')}" + (f" (in {where})" if where else "")
        return verdict(kind, f"{head}\n{ending.get('traceback', '')}".strip())
    if ending.get("ev") == "exit":
        return verdict(
            FailureKind.RUNTIME_ERROR, f"the program called exit({ending.get('code')}) before its tests finished"
        )
    if ending.get("ev") != "done":
        how = f"was killed by signal {result.signal}" if result.signal else f"exited with status {result.returncode}"
        kind = (
            FailureKind.MEMORY if result.signal == 9 and "MemoryError" in result.stderr else FailureKind.RUNTIME_ERROR
        )
        return verdict(kind, f"the program {how} before its tests finished\n{result.stderr[-2000:]}".strip())
    if result.returncode != 0:
        return verdict(FailureKind.RUNTIME_ERROR, f"the program exited with status {result.returncode} after its tests")
    incomplete = _missing_sites(plan, events)
    if incomplete:
        return verdict(
            FailureKind.RUNTIME_ERROR, f"the test records are incomplete: {incomplete}; was the probe tampered with?"
        )
    return verdict(FailureKind.PASSED)


def _missing_sites(plan: TestPlan, events: _Events) -> str:
    """Why the run's records are not those of a complete run of the plan; empty when they are.

    Every site must be recorded where the plan puts it (`TestPlan.flows`), inside each call of a
    test-defined function as at top level: nothing skipped, reordered or repeated, no test missing.
    """
    flow = _Flow(plan)
    for header, _ in events.stream:
        flow.feed(header)
    return flow.finish()


def _syntax_detail(ending: dict[str, Any], program: StepProgram) -> str:
    where = program.section_of(ending.get("line"))
    loc = f" in {where}" if where else ""
    text = (ending.get("text") or "").rstrip()
    return f"{ending.get('type')}: {ending.get('message')}{loc}" + (f"\n    {text}" if text else "")


def derive_targets(plan: TestPlan, result: ExecResult, *, max_probe_bytes: int) -> list[Any]:
    """Targets implied by a reference run: for each test, the values its asserts compare with `target`.

    Used to build validation targets from the gold code. A tuple target (`target[i]`, or
    `a, b = target`) is assembled in index order; a test that never uses `target` gets `()`.

    Raises:
        ValueError: the run did not complete, or a test's target cannot be read off its asserts.
    """
    events = _read_events(result, max_probe_bytes)
    ending = (events.ending or {}).get("ev")
    if result.timed_out or ending != "done":
        detail = (events.ending or {}).get("traceback") or (events.ending or {}).get("message") or result.stderr[-1000:]
        raise ValueError(f"the reference run of step {plan.step_id} did not complete ({ending}): {detail}")
    pieces = _Replay(plan, lambda: [], strict=False).collect_slots(events.stream)
    targets: list[Any] = []
    for k, used in enumerate(plan.uses_target):
        found = pieces.get(k, {})
        if not used:
            targets.append(())
        elif None in found:
            targets.append(found[None])
        elif found and sorted(k for k in found if k is not None) == list(range(len(found))):
            targets.append(tuple(found[i] for i in range(len(found))))
        else:
            raise ValueError(f"step {plan.step_id} test {k + 1}: cannot read the target off its asserts")
    return targets


# ---------------------------------------------------------------------------------------------
# Replay
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=4096)
def _compiled(source: str, mode: str) -> Any:
    return compile(source, "<scicode test>", mode)


@functools.lru_cache(maxsize=512)
def _prelude_namespace(prelude: str, strict: bool) -> dict[str, Any]:
    namespace: dict[str, Any] = {"__name__": "scicode_trusted_replay"}
    exec(_compiled(prelude, "exec"), namespace)  # noqa: S102 - dataset code: imports and test helpers
    if strict:
        from scicode.compare.strict import make_strict

        strict_ns = make_strict(namespace)
        namespace.clear()
        namespace.update(strict_ns)
    return namespace


_ENDINGS = frozenset({"syntax_error", "exception", "exit", "done"})


@dataclass
class _Frame:
    """A test case's top level, or one call of a test-defined function, as the records go."""

    items: tuple[FlowItem, ...]
    test: int
    scope: int | None
    ns: dict[str, Any]
    pos: int = 0


class _Flow:
    """Follows a run's records through the plan's flows; `error` says where they stop following it.

    A complete run is, for each test case in order, its `test` record and its flow: each top-level
    site's record, and for each call of a test-defined function its `enter` record and its body's
    flow. A function whose calls cannot be counted statically ("free") may be entered at any point
    after it becomes free, each call complete and in order, and at least once in the run.
    """

    def __init__(self, plan: TestPlan, base: dict[str, Any] | None = None) -> None:
        self.plan = plan
        self.base = base or {}
        self.frames: list[_Frame] = []
        self.next_test = 0
        self.free: set[int] = set()
        self.calls: dict[int, int] = {}
        self.seen = 0
        self.ended = False
        self.error = ""

    def feed(self, header: dict[str, Any]) -> _Frame | None:
        """Advance past one record; returns the frame a `test`, `enter` or `site` record belongs to."""
        if self.error:
            return None
        self.seen += 1
        event = _event(header)
        if self.ended:
            return self.fail(f"a {str(event)[:20]!r} record follows the end of the run")
        if event == "start":
            return None if self.seen == 1 else self.fail("a second start record")
        if event in _ENDINGS:
            self.ended = True
            return None
        if event == "test":
            return self.test(header.get("k"))
        if event == "enter":
            return self.enter(header.get("scope"))
        if event == "site":
            return self.site(header.get("site"))
        return self.fail(f"an unknown record {str(event)[:20]!r}")

    def finish(self) -> str:
        """Empty when the records fed so far are those of a complete run; else what is wrong."""
        if self.error:
            return self.error
        self.settle()
        if self.next_test < len(self.plan.tests) or len(self.frames) != 1 or self._pending(self.frames[0]):
            return f"the records stop where {self.expected()} was due"
        never = sorted(i for i in self.free if not self.calls.get(i))
        if never:
            return f"test function {self.plan.scopes[never[0]]}() was never called"
        return ""

    def fail(self, why: str) -> _Frame | None:
        self.error = why
        return None

    def test(self, k: Any) -> _Frame | None:
        if not _is_index(k, len(self.plan.tests)) or k != self.next_test:
            return self.fail(f"a record of test {_show(k)} where {self.expected()} was due")
        if self.frames:
            self.settle()
            if len(self.frames) != 1 or self._pending(self.frames[0]):
                return self.fail(f"test {k + 1} starts where {self.expected()} was due")
        frame = _Frame(self.plan.flows[k], k, None, dict(self.base))
        self.frames = [frame]
        self.next_test += 1
        self.settle()
        return frame

    def enter(self, scope: Any) -> _Frame | None:
        if not _is_index(scope, len(self.plan.scopes)):
            return self.fail(f"a call of an unknown test function {repr(scope)[:20]} where {self.expected()} was due")
        if not self.frames:
            return self.fail(f"a call of test function {self.plan.scopes[scope]}() before any test")
        top = self.frames[-1]
        if self._pending(top) and top.items[top.pos] == ("call", scope):
            top.pos += 1
        elif scope not in self.free:
            name = self.plan.scopes[scope]
            return self.fail(f"a call of test function {name}() where {self.expected()} was due")
        self.calls[scope] = self.calls.get(scope, 0) + 1
        frame = _Frame(self.plan.bodies[scope], top.test, scope, dict(self.base))
        self.frames.append(frame)
        self.settle()
        return frame

    def site(self, site_id: Any) -> _Frame | None:
        top = self.frames[-1] if self.frames else None
        valid = _is_index(site_id, len(self.plan.sites))
        if not valid or top is None or not self._pending(top) or top.items[top.pos] != ("site", site_id):
            return self.fail(f"the record of {self.describe(site_id)} where {self.expected()} was due")
        top.pos += 1
        self.settle()
        return top

    def settle(self) -> None:
        """Take in the free functions the flow reaches, and close calls whose records are all in."""
        while self.frames:
            top = self.frames[-1]
            while self._pending(top) and top.items[top.pos][0] == "free":
                self.free.add(top.items[top.pos][1])
                top.pos += 1
            if top.scope is None or self._pending(top):
                return
            self.frames.pop()

    @staticmethod
    def _pending(frame: _Frame) -> bool:
        return frame.pos < len(frame.items)

    def describe(self, site_id: Any) -> str:
        if not _is_index(site_id, len(self.plan.sites)):
            return f"an unknown site {repr(site_id)[:20]}"
        site = self.plan.site(site_id)
        text = site.text if len(site.text) <= 80 else site.text[:77] + "..."
        return f"test {site.test_index + 1}'s `{text}`"

    def expected(self) -> str:
        top = self.frames[-1] if self.frames else None
        if top is not None and self._pending(top):
            kind, index = top.items[top.pos]
            if kind == "site":
                return f"the record of {self.describe(index)}"
            return f"a call of test function {self.plan.scopes[index]}()"
        if self.next_test < len(self.plan.tests):
            return f"test {self.next_test + 1}"
        return "the end of the run"


def _is_index(value: Any, size: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < size


def _show(value: Any) -> str:
    """A test number as the messages count them (from 1), or the malformed value."""
    return str(value + 1) if _is_index(value, 1 << 30) else repr(value)[:20]


class _Replay:
    """Replays recorded sites on the trusted side; returns the first failure's description."""

    def __init__(self, plan: TestPlan, targets: Callable[[], Sequence[Any]], *, strict: bool = True) -> None:
        self.plan = plan
        self._targets_fn = targets
        self._targets: Sequence[Any] | None = None
        self.base = _prelude_namespace(plan.prelude, strict)

    def target(self, k: int) -> Any:
        if self._targets is None:
            self._targets = self._targets_fn()
        return self._targets[k]

    def run(self, stream: list[tuple[dict[str, Any], list[bytes]]]) -> str | None:
        """The first failing site in program order, or None.

        Replaying stops where the records stop following the plan (`_missing_sites` reports it).
        """
        flow = _Flow(self.plan, self.base)
        for header, buffers in stream:
            frame = flow.feed(header)
            if flow.error:
                return None
            if frame is not None and header.get("ev") == "site":
                failure = self.site(frame, header, buffers)
                if failure is not None:
                    return failure
        return None

    def collect_slots(self, stream: list[tuple[dict[str, Any], list[bytes]]]) -> dict[int, dict[int | None, Any]]:
        """Derive mode: evaluate what each assert compares with `target` (nothing is judged).

        Raises:
            ValueError: the records do not follow the plan, or a replay fails.
        """
        found: dict[int, dict[int | None, Any]] = {}
        flow = _Flow(self.plan, self.base)
        for header, buffers in stream:
            frame = flow.feed(header)
            if flow.error:
                raise ValueError(f"the records do not follow the test plan: {flow.error}")
            if frame is None or header.get("ev") != "site":
                continue
            site = self.plan.site(header["site"])
            if site.kind == "target":
                continue
            ns = self.namespace(frame, site, need_target=False)
            failure = self.prepare(site, ns, header, buffers)
            if failure is None and site.kind == "replay":
                failure = self.bind_site(site, ns)
            if failure is not None:
                raise ValueError(failure)
            for key, source in site.slots:
                found.setdefault(site.test_index, {}).setdefault(key, eval(_compiled(source, "eval"), ns))  # noqa: S307
        return found

    def namespace(self, frame: _Frame, site: Site, *, need_target: bool = True) -> dict[str, Any]:
        ns = frame.ns
        if site.scope is None and need_target and self.plan.uses_target[site.test_index] and "target" not in ns:
            ns["target"] = self.target(site.test_index)
        return ns

    def site(self, frame: _Frame, header: dict[str, Any], buffers: list[bytes]) -> str | None:
        """Replay one site (the flow has checked it is the one due here)."""
        site = self.plan.site(header["site"])
        ns = self.namespace(frame, site)
        failure = self.prepare(site, ns, header, buffers)
        if failure is not None:
            return failure
        return self.assert_site(site, ns) if site.kind == "assert" else self.bind_site(site, ns)

    def prepare(self, site: Site, ns: dict[str, Any], header: dict[str, Any], buffers: list[bytes]) -> str | None:
        """Put the site's leaves, and the in-place changes of its exposed values, into `ns`.

        Fails closed: a value that cannot be decoded fails the site; no sandbox value stands in
        for one the trusted side computes.
        """
        where = f"test {site.test_index + 1}"
        leaves, exposed = header.get("leaves"), header.get("exposed")
        if (
            not isinstance(leaves, list)
            or not isinstance(exposed, list)
            or len(leaves) != len(site.leaves)
            or len(exposed) != len(site.exposed)
        ):
            return f"{where}: malformed record for `{site.text}`"
        try:
            ns[LEAVES] = [self.value(node, buffers) for node in leaves]
        except DecodeError as e:
            return f"{where}: {e}\n    {site.text}"
        for name, node in zip(site.exposed, exposed, strict=True):
            failure = self.take_changes(ns, name, node, buffers)
            if failure is not None:
                return f"{where}: {failure}\n    {site.text}"
        return None

    def take_changes(self, ns: dict[str, Any], name: str, node: Any, buffers: list[bytes]) -> str | None:
        """Apply to the trusted value of `name` what the sandbox did to it in place.

        The test handed that object to sandbox code, which may have changed it in place (then the
        official run sees the change). An immutable value cannot have changed, so the recorded one
        is not even read; any other must come back as the same kind of object, changed in place.
        """
        if name not in ns:
            return f"`{name}` was never computed here"
        current = ns[name]
        if _immutable(current):
            return None
        try:
            recorded = self.value(node, buffers)
        except DecodeError as e:
            return f"`{name}`, which the test handed to the code under test, cannot be read back: {e}"
        changed = _changed_in_place(current, recorded)
        if changed is _REFUSED:
            return f"`{name}`, which the test handed to the code under test, was replaced, not changed in place"
        ns[name] = changed
        return None

    budget: DecodeBudget | None = None
    """Shared by every value of the stream (`judge` sets it); None: a fresh budget per value."""

    def value(self, node: Any, buffers: list[bytes]) -> Any:
        """A recorded value, decoded within the stream's budget.

        Raises:
            DecodeError: the value was not encodable in the sandbox, or its record is malformed.
        """
        if isinstance(node, dict) and "v" in node:
            return decode_value(node["v"], buffers, self.budget)
        reason = node.get("unencodable") if isinstance(node, dict) else None
        raise DecodeError(reason[:500] if isinstance(reason, str) and reason else "missing value")

    def assert_site(self, site: Site, ns: dict[str, Any]) -> str | None:
        try:
            ok = bool(eval(_compiled(site.trusted, "eval"), ns))  # noqa: S307 - dataset code on decoded data
        except Exception as e:  # noqa: BLE001 - the official run would raise here too
            return f"test {site.test_index + 1}: {type(e).__name__}: {e}\n    {site.text}"
        return None if ok else f"test {site.test_index + 1}: assertion failed\n    {site.text}"

    def bind_site(self, site: Site, ns: dict[str, Any]) -> str | None:
        try:
            exec(_compiled(site.trusted, "exec"), ns)  # noqa: S102 - dataset code on decoded data
        except Exception as e:  # noqa: BLE001 - the official run would raise here too
            return f"test {site.test_index + 1}: {type(e).__name__}: {e}\n    {site.text}"
        return None


_REFUSED = object()


def _immutable(value: Any) -> bool:
    """True for values no code can change in place (data the test holds by value)."""
    if value is None or value is Ellipsis or isinstance(value, (bool, int, float, complex, str, bytes, range, slice)):
        return True
    if isinstance(value, (np.generic, type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, np.ufunc)):
        return True
    if isinstance(value, (tuple, frozenset)):
        return all(_immutable(v) for v in value)
    sympy = sys.modules.get("sympy")
    return sympy is not None and isinstance(value, sympy.Basic)


def _changed_in_place(current: Any, recorded: Any) -> Any:
    """`current`, changed in place to agree with `recorded`; `_REFUSED` when it cannot be.

    No in-place change gives another type, or an array of another shape or dtype.
    """
    if _immutable(current):
        return current
    if isinstance(current, np.ndarray):
        if not isinstance(recorded, np.ndarray) or (recorded.shape, recorded.dtype) != (current.shape, current.dtype):
            return _REFUSED
        if current.flags.writeable:
            np.copyto(current, recorded)
        elif not _same_array(current, recorded):
            return _REFUSED
        return current
    if isinstance(current, tuple):
        if type(recorded) is not tuple or len(recorded) != len(current):
            return _REFUSED
        parts = [_changed_in_place(c, r) for c, r in zip(current, recorded, strict=True)]
        return current if all(p is c for p, c in zip(parts, current, strict=True)) else _REFUSED
    if isinstance(current, list) and type(recorded) is list:
        current[:] = [_element(c, r) for c, r in zip(current, recorded, strict=False)] + recorded[len(current) :]
        return current
    if isinstance(current, dict) and type(recorded) is dict:
        merged = {k: _element(current[k], v) if k in current else v for k, v in recorded.items()}
        current.clear()
        current.update(merged)
        return current
    if isinstance(current, set) and type(recorded) is set:
        current.clear()
        current.update(recorded)
        return current
    if isinstance(current, (list, dict, set)):
        return _REFUSED
    return recorded if type(recorded) is type(current) else _REFUSED


def _element(current: Any, recorded: Any) -> Any:
    """An element of a changed container: the same object changed in place, else the new one."""
    if _immutable(current):
        return recorded
    changed = _changed_in_place(current, recorded)
    return recorded if changed is _REFUSED else changed


def _same_array(a: np.ndarray, b: np.ndarray) -> bool:
    if a.dtype.kind == "O":
        try:
            return bool(np.array_equal(a, b))
        except Exception:  # noqa: BLE001 - elements that cannot be compared
            return False
    return a.tobytes() == b.tobytes()
