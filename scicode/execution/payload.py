"""The sandbox payload: the few modules a sandbox needs, copied out of the installed package.

Workers import only this copy (it is first on their PYTHONPATH), never the installed package,
so the sandbox can be shown a minimal filesystem without the package's data files (which hold
the validation split's gold code) and remote sandboxes can receive it as a small bundle.
"""

from __future__ import annotations

import shutil
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent
FILES = (
    "__init__.py",
    "api.py",
    "codec.py",
    "runtime/__init__.py",
    "runtime/probe.py",
    "runtime/seccomp.py",
    "runtime/worker.py",
    "runtime/remote.py",
    "compare/__init__.py",
    "compare/cmp.py",
)


def write_payload(directory: Path) -> Path:
    """Copy the payload under `directory` (as `directory/scicode/...`); returns `directory`."""
    for rel in FILES:
        dest = directory / "scicode" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(_PACKAGE / rel, dest)
    return directory


def payload_files() -> dict[str, bytes]:
    """The payload's files, by path under the payload root (`scicode/...`)."""
    return {f"scicode/{rel}": (_PACKAGE / rel).read_bytes() for rel in FILES}
