"""Rebuild a sympy value from its `srepr` text without evaluating untrusted code.

`sympy.sympify` and `parse_expr` call `eval`; this parser walks the text's syntax tree and allows
only calls of sympy classes (subclasses of `sympy.Basic`) with literal arguments, under
`sympy.evaluate(False)` so that nothing is computed while rebuilding. Anything else is refused.
"""

from __future__ import annotations

import ast
from typing import Any

from scicode.codec import DecodeError

MAX_TEXT = 200_000
MAX_NODES = 20_000


def parse_srepr(text: str) -> Any:
    """The sympy object that `text` (an `srepr`) describes.

    Raises:
        DecodeError: the text is not a plain srepr of allowed sympy classes and literals.
    """
    import sympy

    if len(text) > MAX_TEXT:
        raise DecodeError("sympy value too large")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise DecodeError(f"unreadable sympy value: {e}") from e
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise DecodeError("sympy value too large")
    with sympy.evaluate(False):
        try:
            return _build(tree.body, sympy)
        except DecodeError:
            raise
        except Exception as e:  # noqa: BLE001 - a constructor refusing its arguments is a bad value
            raise DecodeError(f"invalid sympy value: {type(e).__name__}: {e}") from e


def _build(node: ast.AST, sympy: Any) -> Any:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float, str, bool, type(None)):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -_build(node.operand, sympy)
    if isinstance(node, (ast.Tuple, ast.List)):
        items = [_build(e, sympy) for e in node.elts]
        return tuple(items) if isinstance(node, ast.Tuple) else items
    if isinstance(node, ast.Name):
        return _sympy_attr(node.id, sympy, want_class=False)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        cls = _sympy_attr(node.func.id, sympy, want_class=True)
        args = [_build(a, sympy) for a in node.args]
        kwargs = {k.arg: _build(k.value, sympy) for k in node.keywords if k.arg}
        if len(kwargs) != len(node.keywords):
            raise DecodeError("sympy value uses ** arguments")
        if "precision" in kwargs and not (isinstance(kwargs["precision"], int) and 0 < kwargs["precision"] <= 4096):
            raise DecodeError("sympy Float precision out of range")
        return cls(*args, **kwargs)
    raise DecodeError(f"sympy value contains a {type(node).__name__}")


def _sympy_attr(name: str, sympy: Any, *, want_class: bool) -> Any:
    obj = getattr(sympy, name, None)
    if name.startswith("_") or obj is None:
        raise DecodeError(f"unknown sympy name {name!r}")
    if want_class and isinstance(obj, type) and issubclass(obj, sympy.Basic):
        return obj
    if not want_class and isinstance(obj, sympy.Basic):
        return obj  # singletons such as pi, I, oo
    raise DecodeError(f"sympy name {name!r} is not allowed here")
