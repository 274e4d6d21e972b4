"""Rebuild a sympy value from its encoded tree without evaluating anything.

The sandbox sends a sympy object as nested `(class name, args)` nodes in its true argument order
(`scicode.codec`). Here only sympy classes (subclasses of `sympy.Basic`, looked up by name on the
`sympy` module or its singleton registry) are instantiated, from literals, under
`sympy.evaluate(False)` so that a hostile tree cannot make the trusted process compute anything
large. Because the arguments arrive in canonical order, the rebuilt object equals the original.
"""

from __future__ import annotations

from typing import Any

from scicode.codec import DecodeError

MAX_NODES = 20_000
MAX_PRECISION = 4096


def build_sympy(node: Any) -> Any:
    """The sympy object a node describes.

    Raises:
        DecodeError: the node is malformed or names something other than a sympy class.
    """
    import sympy

    counter = [0]
    with sympy.evaluate(False):
        try:
            return _build(node, sympy, counter)
        except DecodeError:
            raise
        except Exception as e:
            raise DecodeError(f"invalid sympy value: {type(e).__name__}: {e}") from e


def _build(node: Any, sympy: Any, counter: list[int]) -> Any:
    counter[0] += 1
    if counter[0] > MAX_NODES:
        raise DecodeError("sympy value too large")
    if not isinstance(node, list) or not node or not isinstance(node[0], str):
        raise DecodeError("malformed sympy node")
    tag, args = node[0], node[1:]
    if tag == "Symbol":
        name, assumptions = args
        if not isinstance(name, str) or not isinstance(assumptions, dict):
            raise DecodeError("malformed sympy Symbol")
        if not all(isinstance(k, str) and isinstance(v, bool) for k, v in assumptions.items()):
            raise DecodeError("malformed sympy assumptions")
        return sympy.Symbol(name, **assumptions)
    if tag == "Integer":
        return sympy.Integer(int(_str(args[0])))
    if tag == "Rational":
        return sympy.Rational(int(_str(args[0])), int(_str(args[1])))
    if tag == "Float":
        precision = args[1]
        if not isinstance(precision, int) or not 0 < precision <= MAX_PRECISION:
            raise DecodeError("sympy Float precision out of range")
        return sympy.Float(_str(args[0]), precision=precision)
    if tag == "S":
        return _singleton(_str(args[0]), sympy)
    if tag == "call":
        cls = _sympy_class(_str(args[0]), sympy)
        if not isinstance(args[1], list):
            raise DecodeError("malformed sympy arguments")
        return cls(*(_build(a, sympy, counter) for a in args[1]), evaluate=False)
    raise DecodeError(f"unknown sympy node {tag!r}")


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise DecodeError("malformed sympy literal")
    return value


def _sympy_class(name: str, sympy: Any) -> Any:
    cls = getattr(sympy, name, None)
    if name.startswith("_") or not (isinstance(cls, type) and issubclass(cls, sympy.Basic)):
        raise DecodeError(f"sympy name {name!r} is not allowed")
    return cls


def _singleton(name: str, sympy: Any) -> Any:
    if name.startswith("_"):
        raise DecodeError(f"sympy name {name!r} is not allowed")
    try:
        value = getattr(sympy.S, name)
    except AttributeError:
        value = None
    if not isinstance(value, sympy.Basic):
        raise DecodeError(f"sympy singleton {name!r} is not allowed")
    return value
