"""SciCode (arXiv 2407.13168) as a verifiers environment.

`load_environment(**env_args)` is the entry point (`vf-eval scicode`). This module stays light:
inside a sandbox only `scicode.compare.cmp`, `scicode.codec` and `scicode.probe` are imported, so
the verifiers stack is loaded on first use of `load_environment`, not on `import scicode`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "load_environment"]


def __getattr__(name: str) -> Any:
    if name == "load_environment":
        from scicode.env import load_environment

        return load_environment
    raise AttributeError(f"module 'scicode' has no attribute {name!r}")
