"""Wrong answers made from gold code, to check verdicts on honest-but-wrong code.

Each mutation rewrites the `return` statements of the step's own function (not nested ones), or
breaks the function in another way. The helpers they call are ordinary model code.
"""

from __future__ import annotations

import ast
import re

HELPERS = """
def _mut_map(x, f):
    if isinstance(x, tuple):
        return tuple(_mut_map(v, f) for v in x)
    if isinstance(x, list):
        return [_mut_map(v, f) for v in x]
    if isinstance(x, (bool, np.bool_)) or x is None or isinstance(x, (str, dict)):
        return x
    try:
        return f(x)
    except Exception:
        return x
"""

RETURN_WRAPPERS = {
    "sign_flip": "_mut_map({}, lambda v: -v)",
    "off_by_one": "_mut_map({}, lambda v: v + 1)",
    "wrong_shape": "_mut_map({}, lambda v: np.append(np.ravel(v), 0.0))",
    "wrong_dtype": "_mut_map({}, lambda v: np.asarray(v).real.astype(np.int64) if np.ndim(v) else str(v))",
    "returns_none": "None",
}
VARIANTS = ("gold", *RETURN_WRAPPERS, "raises", "missing_function")


def function_name(header: str) -> str:
    match = re.search(r"\bdef\s+(\w+)\s*\(", header) or re.search(r"\bclass\s+(\w+)", header)
    assert match, header
    return match.group(1)


class _Returns(ast.NodeTransformer):
    def __init__(self, wrapper: str) -> None:
        self.wrapper = wrapper

    def visit_FunctionDef(self, node):
        return node

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Lambda(self, node):
        return node

    def visit_Return(self, node):
        value = ast.unparse(node.value) if node.value is not None else "None"
        node.value = ast.parse(self.wrapper.format(f"({value})"), mode="eval").body
        return node


def mutate(code: str, header: str, variant: str) -> str:
    """The gold `code` turned into the `variant` answer."""
    if variant == "gold":
        return code
    name = function_name(header)
    tree = ast.parse(code)
    target = next(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and n.name == name)
    if variant == "missing_function":
        target.name = name + "_renamed"
    elif variant == "raises":
        target.body.insert(0, ast.parse("raise RuntimeError('broken on purpose')").body[0])
    else:
        fn = target if isinstance(target, ast.FunctionDef) else None
        if fn is None:
            return code
        fn.body = [_Returns(RETURN_WRAPPERS[variant]).visit(stmt) for stmt in fn.body]
    return HELPERS + "\n" + ast.unparse(ast.fix_missing_locations(tree))
