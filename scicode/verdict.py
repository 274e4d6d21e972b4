"""The trusted side: judge a step from its probe records and the real targets.

`judge` runs no model code and no sandbox I/O. It decodes the values the program recorded
(data only, see `scicode.codec`), replays each site of the test plan with them and the step's
targets, and returns a `StepVerdict`. It fails closed: a missing or malformed record, a value that
could not be encoded, a program that ended before its tests did, all fail the step.

Kinds follow what the official harness would have hit first: a failing assert recorded before a
crash or a hang is `wrong_answer`, because the official run stops at that assert.
"""

from __future__ import annotations

import ast
import contextlib
import enum
import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from scicode.codec import DecodeError, FrameReader, decode_value
from scicode.execution.base import ExecResult, StepProgram
from scicode.testplan import LEAVES, Site, TestPlan

#: Bump when a change can move a score; README's changelog says how.
VERDICT_VERSION = "1"


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
    sites: list[tuple[dict[str, Any], list[bytes]]]
    ending: dict[str, Any] | None
    stream: list[tuple[dict[str, Any], list[bytes]]]


def _read_events(result: ExecResult, max_bytes: int) -> _Events:
    frames = FrameReader(result.probe, max_bytes=max_bytes).frames()
    ending = next(
        (h for h, _ in reversed(frames) if h.get("ev") in ("syntax_error", "exception", "exit", "done")), None
    )
    return _Events(sites=[f for f in frames if f[0].get("ev") == "site"], ending=ending, stream=frames)


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
    """

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
    failure = _Replay(plan, targets, strict=strict).run(events.stream)
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
    missing = _missing_sites(plan, events)
    if missing:
        return verdict(FailureKind.RUNTIME_ERROR, f"test records are missing ({missing}); the probe was tampered with")
    return verdict(FailureKind.PASSED)


def _missing_sites(plan: TestPlan, events: _Events) -> str:
    seen = [h.get("site") for h, _ in events.sites]
    expected = [s.site_id for s in plan.sites if s.scope is None]
    top = [s for s in seen if isinstance(s, int) and 0 <= s < len(plan.sites) and plan.sites[s].scope is None]
    if top != expected:
        absent = sorted(set(expected) - set(top))
        return f"sites {absent[:5]} of {len(expected)}" if absent else "sites out of order or repeated"
    return ""


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


@functools.lru_cache(maxsize=4096)
def _bound_names(statement: str) -> tuple[str, ...]:
    tree = ast.parse(statement).body[0]
    targets = tree.targets if isinstance(tree, ast.Assign) else [getattr(tree, "target", None)]
    return tuple(n.id for t in targets if t is not None for n in ast.walk(t) if isinstance(n, ast.Name))


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


class _Replay:
    """Replays recorded sites on the trusted side; returns the first failure's description."""

    def __init__(self, plan: TestPlan, targets: Callable[[], Sequence[Any]], *, strict: bool = True) -> None:
        self.plan = plan
        self._targets_fn = targets
        self._targets: Sequence[Any] | None = None
        self.base = _prelude_namespace(plan.prelude, strict)
        self.test_ns: dict[str, Any] = {}
        self.scope_ns: dict[int, dict[str, Any]] = {}

    def target(self, k: int) -> Any:
        if self._targets is None:
            self._targets = self._targets_fn()
        return self._targets[k]

    def run(self, stream: list[tuple[dict[str, Any], list[bytes]]]) -> str | None:
        for header, buffers in stream:
            event = header.get("ev")
            if event == "test":
                self.test_ns = dict(self.base)
                self.current_test = header.get("k")
            elif event == "enter":
                scope = header.get("scope")
                if isinstance(scope, int) and 0 <= scope < len(self.plan.scopes):
                    self.scope_ns[scope] = dict(self.base)
            elif event == "site":
                failure = self.site(header, buffers)
                if failure is not None:
                    return failure
        return None

    def collect_slots(self, stream: list[tuple[dict[str, Any], list[bytes]]]) -> dict[int, dict[int | None, Any]]:
        """Derive mode: evaluate what each assert compares with `target` (nothing is judged)."""
        found: dict[int, dict[int | None, Any]] = {}
        for header, buffers in stream:
            event = header.get("ev")
            if event == "test":
                self.test_ns, self.current_test = dict(self.base), header.get("k")
            elif event == "enter":
                self.scope_ns[header["scope"]] = dict(self.base)
            elif event == "site":
                site = self.plan.site(header["site"])
                ns = self.namespace(site, need_target=False)
                if ns is None or site.kind == "target":
                    continue
                ns[LEAVES] = [self.value(n, buffers) for n in header["leaves"]]
                for name, node in zip(site.fallbacks, header["fallbacks"], strict=False):
                    ns.setdefault(name, self.value(node, buffers))
                if site.kind == "replay":
                    self.bind_site(site, ns)
                for key, source in site.slots:
                    found.setdefault(site.test_index, {}).setdefault(key, eval(_compiled(source, "eval"), ns))  # noqa: S307
        return found

    def namespace(self, site: Site, *, need_target: bool = True) -> dict[str, Any] | None:
        if site.scope is None:
            if not self.test_ns or getattr(self, "current_test", None) != site.test_index:
                return None
            if need_target and self.plan.uses_target[site.test_index] and "target" not in self.test_ns:
                self.test_ns["target"] = self.target(site.test_index)
            return self.test_ns
        index = self.plan.scopes.index(site.scope)
        return self.scope_ns.get(index)

    def site(self, header: dict[str, Any], buffers: list[bytes]) -> str | None:
        site_id = header.get("site")
        if not isinstance(site_id, int) or not 0 <= site_id < len(self.plan.sites):
            return f"the program recorded an unknown test site {site_id!r}"
        site = self.plan.site(site_id)
        ns = self.namespace(site)
        if ns is None:
            return f"test {site.test_index + 1}: a record arrived out of order; the probe was tampered with"
        try:
            leaves = [self.value(n, buffers) for n in header.get("leaves", [])]
            fallbacks = header.get("fallbacks", [])
        except DecodeError as e:
            if site.kind == "replay":  # later sites use the sandbox's values instead
                for name in _bound_names(site.trusted):
                    ns.pop(name, None)
                return None
            return f"test {site.test_index + 1}: {e}\n    {site.text}"
        if len(leaves) != len(site.leaves) or len(fallbacks) != len(site.fallbacks):
            return f"test {site.test_index + 1}: malformed record for `{site.text}`"
        for name, node in zip(site.fallbacks, fallbacks, strict=False):
            if name not in ns:
                with contextlib.suppress(DecodeError):
                    ns[name] = self.value(node, buffers)
        ns[LEAVES] = leaves
        return self.assert_site(site, ns) if site.kind == "assert" else self.bind_site(site, ns)

    @staticmethod
    def value(node: Any, buffers: list[bytes]) -> Any:
        if isinstance(node, dict) and "v" in node:
            return decode_value(node["v"], buffers)
        reason = node.get("unencodable") if isinstance(node, dict) else None
        raise DecodeError(reason or "missing value")

    def assert_site(self, site: Site, ns: dict[str, Any]) -> str | None:
        try:
            ok = bool(eval(_compiled(site.trusted, "eval"), ns))  # noqa: S307 - dataset code on decoded data
        except Exception as e:  # noqa: BLE001 - the official run would raise here too
            return f"test {site.test_index + 1}: {type(e).__name__}: {e}\n    {site.text}"
        return None if ok else f"test {site.test_index + 1}: assertion failed\n    {site.text}"

    def bind_site(self, site: Site, ns: dict[str, Any]) -> str | None:
        try:
            exec(_compiled(site.trusted, "exec"), ns)  # noqa: S102 - dataset code on decoded data
        except Exception as e:  # noqa: BLE001
            for name in _bound_names(site.trusted):
                ns.pop(name, None)  # later sites fall back to the sandbox's value, if any
            if site.kind == "target":
                return f"test {site.test_index + 1}: {type(e).__name__}: {e}\n    {site.text}"
        return None
