"""The in-sandbox probe: records the values a step's tests compute, and runs a step program.

A step program is plain Python in which every site of the test plan (see `scicode.testplan`) is a
call `__scicode_probe__.record(site_id, leaves, exposed)`. The recorder encodes those values as
data (`scicode.codec`) and appends one frame per call to the probe file, unbuffered, so that what
was recorded before a crash or a kill survives. The runner compiles and executes the program as
`__main__` and records how it ended (`syntax_error`, `exception`, `exit`, or `done`).

Nothing here decides pass or fail: that happens on the trusted side, from these records.

Usage (fresh interpreter, in the task directory): python -m scicode.runtime.probe
(the probe file descriptor comes in SCICODE_PROBE_FD).
"""

from __future__ import annotations

import builtins
import contextlib
import os
import sys
import traceback
from typing import Any

from scicode.codec import Value, encode_frame

PROGRAM_NAME = "program.py"
MAX_TRACEBACK = 8000


class Probe:
    """Writes probe frames to a file descriptor."""

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._write = os.write

    def emit(self, header: dict[str, Any]) -> None:
        """Append one frame."""
        data = memoryview(encode_frame(header))
        while data:
            written = self._write(self._fd, data)
            data = data[written:]

    def record(self, site_id: int, leaves: tuple, exposed: tuple) -> tuple:
        """Record a site's values; returns the leaves so replayed statements can reuse them.

        `exposed` holds the objects the site reads that the test has handed to sandbox code
        (`Site.exposed`).
        """
        self.emit(
            {
                "ev": "site",
                "site": site_id,
                "leaves": [Value(v) for v in leaves],
                "exposed": [Value(v) for v in exposed],
            }
        )
        return leaves

    def enter(self, scope: int) -> None:
        """Mark the start of a call of a test-defined function holding sites."""
        self.emit({"ev": "enter", "scope": scope})

    def test(self, index: int) -> None:
        """Mark the start of test case `index`."""
        self.emit({"ev": "test", "k": index})


def _traceback_tail(exc: BaseException) -> str:
    lines = traceback.format_exception(type(exc), exc, exc.__traceback__)
    text = "".join(lines)
    return text[-MAX_TRACEBACK:]


def _describe(exc: BaseException) -> dict[str, Any]:
    info: dict[str, Any] = {"type": type(exc).__name__, "message": str(exc)[:2000]}
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == PROGRAM_NAME]
    if frames:
        info["line"] = frames[-1].lineno
    info["traceback"] = _traceback_tail(exc)
    return info


def run_program(path: str, probe_fd: int) -> int:
    """Compile and run a step program as `__main__`; the exit code `python path` would give."""
    probe = Probe(probe_fd)
    probe.emit({"ev": "start"})
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            source = f.read()
        code = compile(source, PROGRAM_NAME, "exec", dont_inherit=True)
    except (SyntaxError, ValueError) as e:  # ValueError: null bytes in the source
        probe.emit(
            {
                "ev": "syntax_error",
                "type": type(e).__name__,
                "message": str(e)[:2000],
                "line": getattr(e, "lineno", None),
                "text": (getattr(e, "text", None) or "")[:500],
            }
        )
        return 1
    except (RecursionError, MemoryError) as e:
        probe.emit(
            {"ev": "syntax_error", "type": type(e).__name__, "message": "the program is too deeply nested to compile"}
        )
        return 1
    namespace = {"__name__": "__main__", "__builtins__": builtins, "__file__": path, "__scicode_probe__": probe}
    try:
        exec(code, namespace)  # noqa: S102 - this is the sandbox; running the program is the point
    except SystemExit as e:
        probe.emit({"ev": "exit", "code": repr(e.code)[:200]})
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException as e:  # noqa: BLE001 - every way the program can fail is recorded
        with contextlib.suppress(BaseException):  # e.g. the probe file hit its size limit
            probe.emit({"ev": "exception", **_describe(e)})
        return 1
    probe.emit({"ev": "done"})
    return 0


def main() -> None:
    """Entry point of the fresh-interpreter mode."""
    fd = int(os.environ.pop("SCICODE_PROBE_FD"))
    status = os.environ.pop("SCICODE_STATUS_FD", None)
    import ctypes

    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE: execve made this process dumpable again
    sys.argv = [PROGRAM_NAME]
    if status is not None:  # the worker's "the program started" signal (see scicode.runtime.worker)
        os.write(int(status), b"S")
        os.close(int(status))
    sys.exit(run_program(PROGRAM_NAME, fd))


if __name__ == "__main__":
    main()
