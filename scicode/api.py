"""Which verifiers API is installed: the classic one (0.3.x: `MultiTurnEnv`) or v1 (0.4+)."""

from __future__ import annotations

import functools
from importlib import metadata


@functools.cache
def is_v1() -> bool:
    """True when the installed verifiers only offers the v1 API (`verifiers.v1`, 0.4 and later)."""
    try:
        version = metadata.version("verifiers")
    except metadata.PackageNotFoundError:  # e.g. inside a sandbox, which imports only scicode's runtime
        return False
    from packaging.version import Version

    return Version(version).release[:2] >= (0, 4)
