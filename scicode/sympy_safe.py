"""Rebuild a sympy value from its encoded tree without evaluating anything.

The sandbox sends a sympy object as nested `(class name, args)` nodes in its true argument order
(`scicode.codec`). Here only sympy classes (subclasses of `sympy.Basic`, looked up by name on the
`sympy` module or its singleton registry) are instantiated, from literals, under
`sympy.evaluate(False)` so that a hostile tree cannot make the trusted process compute anything
large. Because the arguments arrive in canonical order, the rebuilt object equals the original.

Unevaluated is not inert, though: arithmetic on the trusted side (`np.allclose` subtracts) makes
sympy evaluate what it finds, so `Pow(10, 10**9, evaluate=False) - 3` computes 10**(10**9). Such
numeric sub-expressions never occur in a value sympy built itself (it evaluates them on the spot),
so a tree holding one was crafted and is refused: an integer or rational power of a number is
canonical only as a root (`2**(1/2)`); a power of a numeric product or power is never canonical;
a sum or product holds at most one number, and at most one root per base and per exponent.
Sizes count against the stream's `DecodeBudget` (nodes, literal integers) and depth is capped.
"""

from __future__ import annotations

from typing import Any

from scicode.codec import MAX_DEPTH, DecodeBudget, DecodeError, parse_int

#: Nodes of one sympy value (the stream's budget caps all of them together too).
MAX_NODES = 20_000
#: Binary precision of a sympy Float (~1,233 digits).
MAX_PRECISION = 4096
#: Characters of a Float literal or a Symbol name.
MAX_LITERAL = 2_000
#: Numerator and denominator of a number raised to a power, when the base is numeric.
MAX_EXPONENT = 1 << 20


def build_sympy(node: Any, budget: DecodeBudget | None = None) -> Any:
    """The sympy object a node describes.

    Raises:
        DecodeError: the node is malformed, too large, not canonical, or names something other
            than a sympy class.
    """
    import sympy

    builder = _Builder(sympy, budget if budget is not None else DecodeBudget())
    with sympy.evaluate(False):
        try:
            return builder.build(node, 0)
        except DecodeError:
            raise
        except Exception as e:  # sympy raises anything on malformed arguments
            raise DecodeError(f"invalid sympy value: {type(e).__name__}: {str(e)[:200]}") from e


class _Builder:
    def __init__(self, sympy: Any, budget: DecodeBudget) -> None:
        self.sympy = sympy
        self.budget = budget
        self.nodes = 0

    def build(self, node: Any, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise DecodeError("sympy value too large")
        if depth > MAX_DEPTH:
            raise DecodeError("sympy value nested too deeply")
        self.budget.charge_sympy()
        if type(node) is not list or not node or type(node[0]) is not str:
            raise DecodeError("malformed sympy node")
        sympy = self.sympy
        tag, args = node[0], node[1:]
        if tag == "Symbol":
            name, assumptions = args
            if type(name) is not str or len(name) > MAX_LITERAL or type(assumptions) is not dict:
                raise DecodeError("malformed sympy Symbol")
            if not all(type(k) is str and type(v) is bool for k, v in assumptions.items()):
                raise DecodeError("malformed sympy assumptions")
            return sympy.Symbol(name, **assumptions)
        if tag == "Integer":
            return sympy.Integer(parse_int(args[0], self.budget))
        if tag == "Rational":
            return sympy.Rational(parse_int(args[0], self.budget), parse_int(args[1], self.budget))
        if tag == "Float":
            precision = args[1]
            if type(precision) is not int or not 0 < precision <= MAX_PRECISION:
                raise DecodeError("sympy Float precision out of range")
            text = _str(args[0])
            if len(text) > MAX_LITERAL:
                raise DecodeError("sympy Float literal too long")
            return sympy.Float(text, precision=precision)
        if tag == "S":
            return _singleton(_str(args[0]), sympy)
        if tag == "call":
            cls = _sympy_class(_str(args[0]), sympy)
            if type(args[1]) is not list:
                raise DecodeError("malformed sympy arguments")
            built = [self.build(a, depth + 1) for a in args[1]]
            self.check_canonical(cls, built)
            return cls(*built, evaluate=False)
        raise DecodeError(f"unknown sympy node {tag[:20]!r}")

    def check_canonical(self, cls: Any, args: list[Any]) -> None:
        """Refuse numeric sub-expressions sympy would have evaluated (see the module docstring)."""
        sympy = self.sympy
        if cls is sympy.Pow and len(args) == 2:
            base, exp = args
            if base.free_symbols or not exp.is_Number:
                return
            if base.is_Number:
                root = exp.is_Rational and not exp.is_Integer and 0 < exp.p < exp.q <= MAX_EXPONENT
                if not (base.is_Rational and root):
                    raise DecodeError("sympy value holds an unevaluated power of a number")
            elif isinstance(base, (sympy.Pow, sympy.Mul)):
                raise DecodeError("sympy value holds an unevaluated power of a numeric power or product")
            elif not (exp.is_Rational and abs(exp.p) <= MAX_EXPONENT and exp.q <= MAX_EXPONENT):
                raise DecodeError("sympy value holds a numeric power with a huge exponent")
        elif cls in (sympy.Add, sympy.Mul):
            if sum(1 for a in args if a.is_Number) > 1:
                raise DecodeError("sympy value holds an unevaluated sum or product of numbers")
            if cls is sympy.Mul:
                roots = [a for a in args if isinstance(a, sympy.Pow) and a.base.is_Number]
                if len({r.base for r in roots}) < len(roots) or len({r.exp for r in roots}) < len(roots):
                    raise DecodeError("sympy value holds an unevaluated product of roots")


def _str(value: Any) -> str:
    if type(value) is not str:
        raise DecodeError("malformed sympy literal")
    return value


def _sympy_class(name: str, sympy: Any) -> Any:
    cls = getattr(sympy, name, None)
    if name.startswith("_") or not (isinstance(cls, type) and issubclass(cls, sympy.Basic)):
        raise DecodeError(f"sympy name {name[:40]!r} is not allowed")
    return cls


def _singleton(name: str, sympy: Any) -> Any:
    if name.startswith("_"):
        raise DecodeError(f"sympy name {name[:40]!r} is not allowed")
    try:
        value = getattr(sympy.S, name)
    except AttributeError:
        value = None
    if not isinstance(value, sympy.Basic):
        raise DecodeError(f"sympy singleton {name[:40]!r} is not allowed")
    return value
