"""The one-shot driver for remote sandboxes: run one step program, print one JSON line.

    SCICODE_ROOT=/scicode python -m scicode.runtime.remote '{"dir": "tasks/t1", "timeout": ..., ...}'

It runs the program exactly as a local worker does in `fresh` mode (a new interpreter, its own
session, no capabilities, limits, every descendant killed after it), then prints the same reply a
worker sends: exit status, timing, the probe bytes (base64) and output tails. The remote backend
calls it with one command per step, so a step costs one upload and one command.
"""

from __future__ import annotations

import json
import os
import sys

from scicode.runtime.worker import PR_SET_CHILD_SUBREAPER, Runner, _prctl, run_in_dir

MARKER = "SCICODE-RESULT "


def main() -> None:
    """Run the program in the given directory and print the reply after a marker."""
    req = json.loads(sys.argv[1])
    # Paths are relative to the runtime's root, so the same command works wherever it is mounted.
    root = os.environ.get("SCICODE_ROOT", os.getcwd())
    task_dir = os.path.join(root, req.pop("dir"))
    req["env"] = dict(req.get("env", {}), PYTHONPATH=os.environ.get("PYTHONPATH", ""))
    if not os.path.isfile(os.path.join(task_dir, "program.py")):
        sys.exit(f"no program.py in {task_dir}")  # no reply: the backend reports a sandbox failure
    with open(os.path.join(task_dir, "program.py"), encoding="utf-8", errors="surrogateescape") as f:
        req["source"] = f.read()
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    # The remote sandbox is the program's disposable unit; per-program namespaces there would hide
    # the uploaded runtime (a plain directory, not a mount) along with /tmp: issue 10's work.
    isolate = False
    runner = Runner("fresh", scratch=task_dir, isolate=isolate, disk_bytes=int(req.get("disk_bytes", 1 << 30)))
    # The uploaded directory holds the task's outputs, removed after the run like a local one.
    reply = run_in_dir(runner, dict(req, id=0), task_dir)
    reply["isolated"] = isolate
    sys.stdout.write(MARKER + json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
