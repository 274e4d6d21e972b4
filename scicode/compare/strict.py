"""Trusted-side comparisons that close a hole the official ones leave open.

`np.allclose(x, target)` broadcasts its arguments, and an empty `x` broadcasts against any
target to zero elements, all of which are "close": `np.allclose([], 3.7)` is True. So an answer
that returns `[]` passes most SciCode asserts under the official harness. No honest solution
returns an empty value for a non-empty target, so the trusted replay uses these strict versions
(unless `strict_comparisons` is off): an empty value never matches a non-empty one. They are used
only on the trusted side, by swapping them into the replay's namespace; the sandbox and the
official-compatible `scicode.compare.cmp` are untouched.
"""

from __future__ import annotations

import functools
import types
from typing import Any

import numpy


def _size(value: Any) -> int:
    try:
        return int(numpy.size(value))
    except (ValueError, TypeError):
        return -1  # ragged or odd: leave it to numpy


def _empty_vs_full(a: Any, b: Any) -> bool:
    sa, sb = _size(a), _size(b)
    return (sa == 0 and sb > 0) or (sb == 0 and sa > 0)


def allclose(a: Any, b: Any, *args: Any, **kwargs: Any) -> bool:
    """`numpy.allclose`, except that an empty value is never close to a non-empty one."""
    return False if _empty_vs_full(a, b) else numpy.allclose(a, b, *args, **kwargs)


def isclose(a: Any, b: Any, *args: Any, **kwargs: Any) -> Any:
    """`numpy.isclose`, except that an empty value is never close to a non-empty one."""
    if _empty_vs_full(a, b):
        return numpy.zeros(numpy.shape(a if _size(a) > 0 else b), dtype=bool)
    return numpy.isclose(a, b, *args, **kwargs)


class StrictNumpy(types.ModuleType):
    """numpy, with the strict `allclose` and `isclose`."""

    allclose = staticmethod(allclose)
    isclose = staticmethod(isclose)

    def __getattr__(self, name: str) -> Any:
        return getattr(numpy, name)


STRICT_NUMPY = StrictNumpy("numpy")


@functools.cache
def strict_cmp() -> dict[str, Any]:
    """The functions of `scicode.compare.cmp`, bound to the strict numpy."""
    from scicode.compare import cmp

    namespace: dict[str, Any] = {"__name__": "scicode.compare.strict_cmp"}
    with open(cmp.__file__, encoding="utf-8") as f:
        exec(compile(f.read(), cmp.__file__, "exec"), namespace)  # noqa: S102 - our own module's source
    namespace["np"] = STRICT_NUMPY
    return namespace


def make_strict(namespace: dict[str, Any]) -> dict[str, Any]:
    """A copy of a replay namespace with numpy and the cmp helpers replaced by strict versions."""
    from scicode.compare import cmp

    helpers = strict_cmp()
    out = dict(namespace)
    for name, value in namespace.items():
        if value is numpy:
            out[name] = STRICT_NUMPY
        elif value is numpy.allclose:
            out[name] = allclose
        elif value is numpy.isclose:
            out[name] = isclose
        elif getattr(value, "__module__", None) == cmp.__name__ and callable(value):
            out[name] = helpers.get(getattr(value, "__name__", ""), value)
    return out
