"""SciCode (arXiv 2407.13168) as a verifiers environment.

With the classic verifiers API (0.3.x), `load_environment(**env_args)` is the entry point
(`vf-eval scicode -a '{...}'`). With verifiers 0.4 (the v1 API), vf-eval finds the taskset, env
and harness classes of `scicode.v1` through `__all__` (`vf-eval scicode --env.taskset.split ...`).

This module stays light: inside a sandbox only `scicode.compare.cmp`, `scicode.codec` and
`scicode.runtime` are imported, so the verifiers stack loads on first use of an export.
"""

from __future__ import annotations

import importlib
from typing import Any

from scicode.api import is_v1

__version__ = "0.1.0"

_EXPORTS = (
    {"SciCodeTaskset": "scicode.v1", "SciCodeV1Env": "scicode.v1", "SciCodeHarness": "scicode.v1"}
    if is_v1()
    else {"load_environment": "scicode.env"}
)
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'scicode' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
