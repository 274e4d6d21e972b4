"""Split a step's test cases into sandbox code and a trusted replay plan.

The official harness runs `model code + targets + asserts` in one process and calls exit code 0 a
pass, so model code can fake a pass (`os._exit(0)`, patching `np.allclose`, reading `target`). Here
the targets never enter the sandbox and model code never decides pass or fail:

* Every `assert` and every statement that touches `target` becomes a *site*. In the sandbox the
  site is replaced by a call that records the values of its *leaves*: the parts only the sandbox
  can compute (calls of the model's functions, attributes of the model's objects, variables the
  test computed from them). The rest of the statement (comparisons, `np.allclose`,
  `cmp_tuple_or_list`, arithmetic, `target`) is replayed by the trusted process on those recorded
  values and the real targets, with its own numpy.
* Assignments whose value a later site needs and that only combine constants, trusted pure
  functions and other such values are replayed on the trusted side as well, so a test's own
  expected values (78.1, 78.2) cannot be bent by patching numpy inside the sandbox. Variables that
  went through model code are recorded as they were at that point, as the official run saw them.
* Everything else (building inputs, calling the model's code, seeding RNGs) runs in the sandbox
  unchanged and in the original order, in one process per step: test 47.4 depends on RNG state
  left by earlier cases.

`plan_step` is pure: text in, plan out. `tests/test_testplan.py` checks that every one of the
1,082 official test cases is planned.
"""

from __future__ import annotations

import ast
import functools
import importlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from scicode.errors import UnsupportedTestError

PROBE = "__scicode_probe__"
LEAVES = "__scicode_leaves__"
TARGET = "target"

#: Builtins the trusted side may call in a replayed expression.
SAFE_BUILTINS = frozenset(
    "abs all any bool complex dict divmod enumerate filter float frozenset int isinstance len list map max min "
    "pow range reversed round set slice sorted str sum tuple type zip True False None".split()
)
#: Roots whose calls have effects or read hidden state: never replayed, always left to the sandbox.
IMPURE_ROOTS = frozenset("random time os sys pickle subprocess shutil io socket datetime secrets".split())


@dataclass(frozen=True)
class Site:
    """One statement the trusted side evaluates: an `assert` or an assignment it replays."""

    site_id: int
    test_index: int
    scope: str | None
    """None at a test case's top level; else the test-defined function it sits in."""
    kind: str
    """"assert" (judged: must hold), "target" (an assignment from the target, e.g. `a, b = target`)
    or "replay" (an assignment of the test's own values, replayed for later sites)."""
    trusted: str
    """Source evaluated on the trusted side; leaves appear as `__scicode_leaves__[i]`."""
    leaves: tuple[str, ...]
    """Sandbox expressions whose values are recorded at this point."""
    fallbacks: tuple[str, ...]
    """Names the trusted side replays, whose sandbox values are recorded in case a replay fails."""
    text: str
    """The original statement, for failure messages."""
    line: int
    slots: tuple[tuple[int | None, str], ...] = ()
    """For deriving targets from gold code: (target index or None for all of it, trusted source of
    the value compared with it)."""


@dataclass(frozen=True)
class TestPlan:
    """Everything needed to probe a step in the sandbox and judge it on the trusted side."""

    step_id: str
    tests: tuple[str, ...]
    """Sandbox source of each test case, in order."""
    sites: tuple[Site, ...]
    prelude: str
    """Trusted-side setup: the imports and pure helper functions the sites use."""
    scopes: tuple[str, ...]
    """Test-defined functions holding sites; `enter` records name them by index."""
    uses_target: tuple[bool, ...]

    def site(self, site_id: int) -> Site:
        """The site with this id."""
        return self.sites[site_id]


def plan_step(step_id: str, dependencies: str, test_cases: Sequence[str]) -> TestPlan:
    """Plan a step's test cases.

    Raises:
        UnsupportedTestError: a test case has a form the replay cannot split.
    """
    planner = _Planner(step_id, dependencies)
    tests = tuple(planner.plan_test(k, src) for k, src in enumerate(test_cases))
    return TestPlan(
        step_id=step_id,
        tests=tests,
        sites=tuple(planner.sites),
        prelude=planner.prelude(),
        scopes=tuple(planner.scopes),
        uses_target=tuple(TARGET in _names(ast.parse(src)) for src in test_cases),
    )


# ---------------------------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------------------------


def _names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}


def _assigned(targets: Iterable[ast.AST]) -> set[str]:
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


def _bound_by_import(stmt: ast.Import | ast.ImportFrom) -> set[str]:
    out: set[str] = set()
    for alias in stmt.names:
        if alias.name == "*":
            out |= _star_names(getattr(stmt, "module", None) or "")
        else:
            out.add(alias.asname or alias.name.split(".")[0])
    return out


@functools.cache
def _star_names(module: str) -> frozenset[str]:
    try:
        mod = importlib.import_module(module)
    except ImportError:
        return frozenset()
    names = getattr(mod, "__all__", None) or [n for n in dir(mod) if not n.startswith("_")]
    return frozenset(names)


def _dotted_root(node: ast.AST) -> tuple[str, str] | None:
    """(root name, dotted path) of `a.b.c`, or None when not a plain dotted name."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(node.id)
    return node.id, ".".join(reversed(parts))


def _free_names(fn: ast.FunctionDef) -> set[str]:
    args = fn.args
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    params |= {a.arg for a in (args.vararg, args.kwarg) if a is not None}
    stored = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    loaded = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return loaded - params - stored


# ---------------------------------------------------------------------------------------------
# Splitting one expression into trusted structure and sandbox leaves
# ---------------------------------------------------------------------------------------------


@dataclass
class _Split:
    """The result of splitting: the trusted expression and its leaves."""

    leaves: list[ast.expr] = field(default_factory=list)
    names_read: set[str] = field(default_factory=set)
    impure: bool = False

    def leaf(self, node: ast.expr) -> ast.expr:
        index = len(self.leaves)
        if isinstance(node, ast.Name):  # the same variable twice is one value
            index = next(
                (i for i, old in enumerate(self.leaves) if isinstance(old, ast.Name) and old.id == node.id), index
            )
        if index == len(self.leaves):
            self.leaves.append(node)
        return ast.Subscript(ast.Name(LEAVES, ast.Load()), ast.Constant(index), ast.Load())


class _Splitter:
    """Rewrites an expression: trusted parts stay, sandbox-only parts become leaves.

    `known` names hold trusted-side values (replayed or from `target`); `trusted` names are
    modules, builtins and helpers the trusted side has itself; `tainted` names derive from
    `target`, which the sandbox does not have.
    """

    def __init__(self, *, known: set[str], trusted: set[str], tainted: set[str], pure: set[str]) -> None:
        self.known, self.trusted, self.tainted, self.pure = known, trusted, tainted, pure

    def split(self, node: ast.expr) -> tuple[ast.expr, _Split]:
        out = _Split()
        return self._visit(node, out, frozenset()), out

    def _is_sandbox(self, node: ast.expr, local: frozenset[str]) -> bool:
        """True when `node` can only be evaluated in the sandbox (and so becomes one leaf)."""
        if isinstance(node, ast.Name):
            return node.id not in self.known and node.id not in self.trusted and node.id not in local
        if isinstance(node, (ast.Attribute, ast.Subscript)):
            return self._is_sandbox(node.value, local) and not (_names(node) & (self.tainted | local))
        if isinstance(node, ast.Call):
            if self._is_sandbox(node.func, local) or self._impure_call(node, local):
                if _names(node) & self.tainted:
                    raise UnsupportedTestError(f"sandbox code would need the target: {ast.unparse(node)}")
                return True
            return False
        if isinstance(node, (ast.Lambda, ast.NamedExpr, ast.Await, ast.Yield, ast.YieldFrom)):
            if _names(node) & self.tainted:
                raise UnsupportedTestError(f"cannot replay {type(node).__name__}: {ast.unparse(node)}")
            return True
        return False

    def _impure_call(self, node: ast.Call, local: frozenset[str]) -> bool:
        dotted = _dotted_root(node.func)
        if dotted is None:
            return False
        root, path = dotted
        return root in self.trusted and (root in IMPURE_ROOTS or ".random" in path or path.startswith("random"))

    def _visit(self, node: ast.expr, out: _Split, local: frozenset[str]) -> ast.expr:
        if self._is_sandbox(node, local):
            return out.leaf(node)
        if isinstance(node, ast.Name):
            out.names_read.add(node.id)
            return node
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            return self._comprehension(node, out, local)
        if isinstance(node, ast.Call) and not self._pure_callee(node.func, local):
            out.impure = True
        for name, value in ast.iter_fields(node):
            setattr(node, name, self._visit_field(value, out, local))
        return node

    def _visit_field(self, value: object, out: _Split, local: frozenset[str]) -> object:
        if isinstance(value, ast.expr):
            return self._visit(value, out, local)
        if isinstance(value, list):
            return [self._visit_field(v, out, local) for v in value]
        if isinstance(value, ast.keyword):
            value.value = self._visit(value.value, out, local)
            return value
        return value

    def _comprehension(self, node: ast.expr, out: _Split, local: frozenset[str]) -> ast.expr:
        trial_node = _copy(node)
        generators = trial_node.generators  # type: ignore[attr-defined]
        inner = local | {n for g in generators for n in _assigned([g.target])}
        trial = _Split()
        for g in generators:
            g.iter = self._visit(g.iter, trial, local)
            g.ifs = [self._visit(c, trial, inner) for c in g.ifs]
        for attr in ("elt", "key", "value"):
            if hasattr(trial_node, attr):
                setattr(trial_node, attr, self._visit(getattr(trial_node, attr), trial, inner))
        if any(_names(leaf) & inner for leaf in trial.leaves):
            # The sandbox must run the whole comprehension: its leaves depend on loop variables.
            if _names(node) & self.tainted:
                raise UnsupportedTestError(f"comprehension mixes target and model code: {ast.unparse(node)}")
            if isinstance(node, ast.GeneratorExp):
                return out.leaf(ast.Call(ast.Name("list", ast.Load()), [node], []))
            return out.leaf(node)
        offset = len(out.leaves)
        out.leaves += trial.leaves
        out.names_read |= trial.names_read
        out.impure |= trial.impure
        for sub in ast.walk(trial_node):
            if isinstance(sub, ast.Subscript) and isinstance(sub.value, ast.Name) and sub.value.id == LEAVES:
                sub.slice = ast.Constant(sub.slice.value + offset)  # type: ignore[attr-defined]
        return trial_node

    def _pure_callee(self, func: ast.expr, local: frozenset[str]) -> bool:
        dotted = _dotted_root(func)
        if dotted is None:
            return True  # a method of a trusted value, e.g. (x == target).any()
        root, path = dotted
        if root in self.known or root in local:
            return True
        if root in self.pure:
            return True
        return root in self.trusted and root not in IMPURE_ROOTS and ".random" not in path


# ---------------------------------------------------------------------------------------------
# Planning test cases
# ---------------------------------------------------------------------------------------------


@dataclass
class _Scope:
    name: str | None
    shadowed: set[str] = field(default_factory=set)
    tainted: set[str] = field(default_factory=lambda: {TARGET})
    deps: dict[str, set[str]] = field(default_factory=dict)
    unpacked: dict[str, int] = field(default_factory=dict)

    def unshadow(self, names: Iterable[str]) -> None:
        todo = [n for n in names if n in self.shadowed and n not in self.tainted]
        while todo:
            name = todo.pop()
            self.shadowed.discard(name)
            todo += [m for m, d in self.deps.items() if name in d and m in self.shadowed and m not in self.tainted]


class _Planner:
    def __init__(self, step_id: str, dependencies: str) -> None:
        self.step_id = step_id
        self.sites: list[Site] = []
        self.scopes: list[str] = []
        self.imports: dict[str, str] = {}  # bound name -> import statement source
        self.helpers: dict[str, str] = {}  # pure test-defined function -> source
        self.used: set[str] = set()
        self.trusted = set(SAFE_BUILTINS) | {"np", "numpy"}
        self.imports.setdefault("np", "import numpy as np")
        self.imports.setdefault("numpy", "import numpy")
        try:
            deps = ast.parse(dependencies)
        except SyntaxError as e:
            raise UnsupportedTestError(f"step {step_id}: dependencies do not parse: {e}") from e
        for stmt in deps.body:
            if isinstance(stmt, (ast.Import, ast.ImportFrom)):
                self._add_import(stmt, ast.unparse(stmt))

    def _add_import(self, stmt: ast.Import | ast.ImportFrom, source: str) -> None:
        for name in _bound_by_import(stmt):
            self.trusted.add(name)
            self.imports[name] = source

    def prelude(self) -> str:
        lines: list[str] = []
        for name in sorted(self.used & set(self.imports)):
            if self.imports[name] not in lines:
                lines.append(self.imports[name])
        lines += [self.helpers[n] for n in self.helpers]
        return "\n".join(lines)

    # -- test cases --------------------------------------------------------------------------

    def plan_test(self, k: int, src: str) -> str:
        try:
            tree = ast.parse(src)
        except SyntaxError as e:
            raise UnsupportedTestError(f"step {self.step_id} test {k + 1} does not parse: {e}") from e
        self.test_index, self.source, self.in_function = k, src, False
        scope = _Scope(None)
        self.trusted_here = set(self.trusted)
        out = self._plan_body(tree.body, scope, top=True)
        return "\n".join(out)

    def _plan_body(self, body: list[ast.stmt], scope: _Scope, *, top: bool) -> list[str]:
        needed = self._needed(body, scope)
        out: list[str] = []
        for stmt in body:
            out += self._plan_stmt(stmt, scope, needed, top=top)
        return out

    def _needed(self, body: list[ast.stmt], scope: _Scope) -> set[str]:
        """Names the trusted side will read: outside the leaves of a site, and what defines them."""
        tainted = set(scope.tainted)
        for stmt in body:
            if _names(stmt) & tainted and isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
                tainted |= _assigned(_targets(stmt))
        assigned = {n for stmt in body for n in _stored(stmt)}
        splitter = _Splitter(
            known=assigned | tainted, trusted=self.trusted_here, tainted=tainted, pure=set(self.helpers)
        )

        def reads(expr: ast.expr | None) -> set[str]:
            if expr is None:
                return set()
            try:
                return splitter.split(_copy(expr))[1].names_read
            except UnsupportedTestError:
                return _names(expr)

        needed: set[str] = set()
        for stmt in reversed(body):
            if isinstance(stmt, ast.Assert):
                needed |= reads(stmt.test)
            elif isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and (
                _names(stmt) & tainted or _assigned(_targets(stmt)) & needed
            ):
                needed |= reads(stmt.value)
        return needed

    def _segment(self, stmt: ast.stmt) -> str:
        if self.in_function:  # nested source segments keep their indentation; regenerate instead
            return ast.unparse(stmt)
        return ast.get_source_segment(self.source, stmt) or ast.unparse(stmt)

    def _plan_stmt(self, stmt: ast.stmt, scope: _Scope, needed: set[str], *, top: bool) -> list[str]:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self._add_import(stmt, self._segment(stmt))
            self.trusted_here |= _bound_by_import(stmt)
            return [self._segment(stmt)]
        if isinstance(stmt, ast.FunctionDef) and top:
            return self._plan_function(stmt, scope)
        if isinstance(stmt, ast.Assert):
            return [self._site(stmt, stmt.test, scope, kind="assert")]
        is_assignment = isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        if _names(stmt) & scope.tainted:
            if not is_assignment:
                raise UnsupportedTestError(f"step {self.step_id}: cannot replay {ast.unparse(stmt)!r}")
            return [self._tainted_bind(stmt, scope)]
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            raise UnsupportedTestError(f"step {self.step_id}: assert nested in {type(stmt).__name__}")
        if is_assignment and _assigned(_targets(stmt)) & needed:
            replay = self._replay(stmt, scope)
            if replay is not None:
                return replay
        scope.unshadow(_names(stmt))
        self.trusted_here -= _stored(stmt)
        return [self._segment(stmt)]

    # -- sites -------------------------------------------------------------------------------

    def _splitter(self, scope: _Scope) -> _Splitter:
        return _Splitter(
            known=scope.shadowed | scope.tainted,
            trusted=self.trusted_here,
            tainted=scope.tainted,
            pure=set(self.helpers),
        )

    def _new_site(self, stmt: ast.stmt, scope: _Scope, *, kind: str, trusted: str, split: _Split) -> Site:
        fallbacks = tuple(sorted(split.names_read & scope.shadowed - scope.tainted))
        self.used |= split.names_read
        site = Site(
            site_id=len(self.sites),
            test_index=self.test_index,
            scope=scope.name,
            kind=kind,
            trusted=trusted,
            leaves=tuple(ast.unparse(leaf) for leaf in split.leaves),
            fallbacks=fallbacks,
            text=self._segment(stmt),
            line=stmt.lineno,
        )
        self.sites.append(site)
        return site

    def _record(self, site: Site) -> str:
        leaves = "".join(f"({leaf}), " for leaf in site.leaves)
        fallbacks = "".join(f"{name}, " for name in site.fallbacks)
        return f"{PROBE}.record({site.site_id}, ({leaves}), ({fallbacks}))"

    def _site(self, stmt: ast.stmt, expr: ast.expr, scope: _Scope, *, kind: str) -> str:
        rewritten, split = self._splitter(scope).split(_copy(expr))
        site = self._new_site(stmt, scope, kind=kind, trusted=ast.unparse(rewritten), split=split)
        slots = tuple(self._slots(rewritten, scope))
        if slots:
            self.sites[site.site_id] = site = _with_slots(site, slots)
        scope.unshadow({n for leaf in split.leaves for n in _names(leaf)})
        return self._record(site)

    def _slots(self, expr: ast.expr, scope: _Scope) -> Iterable[tuple[int | None, str]]:
        for node in ast.walk(expr):
            if isinstance(node, ast.Call):
                operands = node.args[:2]
            elif isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq):
                operands = [node.left, node.comparators[0]]
            else:
                continue
            if len(operands) != 2:
                continue
            for mine, other in (operands, operands[::-1]):
                key = self._target_key(mine, scope)
                if key is not False and not (_names(other) & scope.tainted):
                    yield key, ast.unparse(other)

    def _target_key(self, node: ast.expr, scope: _Scope) -> int | bool | None:
        if isinstance(node, ast.Name) and node.id == TARGET:
            return None
        if isinstance(node, ast.Name) and node.id in scope.unpacked:
            return scope.unpacked[node.id]
        if (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id == TARGET
            and isinstance(node.slice, ast.Constant)
            and isinstance(node.slice.value, int)
        ):
            return node.slice.value
        return False

    def _tainted_bind(self, stmt: ast.stmt, scope: _Scope) -> str:
        assert isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and _names(stmt.value) == {TARGET}:
            target = stmt.targets[0]
            if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Name):
                scope.unpacked |= {e.id: i for i, e in enumerate(target.elts) if isinstance(e, ast.Name)}
        rewritten, split = self._splitter(scope).split(_copy(stmt.value))  # type: ignore[arg-type]
        site = self._new_site(stmt, scope, kind="target", trusted=_with_value(stmt, rewritten), split=split)
        names = _assigned(_targets(stmt))
        scope.tainted |= names
        scope.shadowed |= names
        return self._record(site)

    def _replay(self, stmt: ast.stmt, scope: _Scope) -> list[str] | None:
        """Replay an assignment's trusted part on the trusted side; None when there is none.

        In the sandbox the leaves are evaluated once, recorded, and the same rewritten statement
        then runs on them, so model code is not run twice.
        """
        targets = _targets(stmt)
        value = getattr(stmt, "value", None)
        if value is None or not all(isinstance(n, (ast.Name, ast.Tuple, ast.List)) for n in targets):
            return None
        if isinstance(value, (ast.Name, ast.Attribute, ast.Subscript)):
            return None  # may alias a sandbox object
        if isinstance(stmt, ast.AugAssign) and not isinstance(stmt.target, ast.Name):
            return None
        rewritten, split = self._splitter(scope).split(_copy(value))
        if split.impure or _is_leaf(rewritten):
            return None
        trusted = _with_value(stmt, rewritten)
        site = self._new_site(stmt, scope, kind="replay", trusted=trusted, split=split)
        names = _assigned(targets)
        scope.shadowed |= names
        for name in names:
            scope.deps[name] = _names(value)
        if not split.leaves:
            return [self._record(site), self._segment(stmt)]
        return [f"{LEAVES} = {self._record(site)}", trusted]

    # -- test-defined functions ----------------------------------------------------------------

    def _plan_function(self, fn: ast.FunctionDef, outer: _Scope) -> list[str]:
        has_sites = any(isinstance(n, ast.Assert) for n in ast.walk(fn)) or TARGET in _names(fn)
        if not has_sites:
            if not fn.decorator_list and _free_names(fn) <= self.trusted_here:
                self.helpers[fn.name] = self._segment(fn)
                self.used |= _free_names(fn)
                self.trusted_here.add(fn.name)
            else:
                self.trusted_here.discard(fn.name)
            outer.unshadow(_names(fn))
            return [self._segment(fn)]
        if TARGET in _names(fn):
            raise UnsupportedTestError(f"step {self.step_id}: test function {fn.name} reads target")
        self.trusted_here.discard(fn.name)
        scope = _Scope(fn.name, tainted=set())
        self.scopes.append(fn.name)
        enter = f"{PROBE}.enter({len(self.scopes) - 1})"
        self.in_function = True
        try:
            body = [enter, *self._plan_body(fn.body, scope, top=False)]
        finally:
            self.in_function = False
        new_fn = _copy(fn)
        new_fn.body = [s for src in body for s in ast.parse(src).body]
        return [ast.unparse(new_fn)]


def _is_leaf(node: ast.expr) -> bool:
    return isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == LEAVES


def _stored(stmt: ast.stmt) -> set[str]:
    """Names a statement binds: assignment targets, loop variables, defined functions and classes."""
    out = {n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    out |= {n.name for n in ast.walk(stmt) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    return out


def _targets(stmt: ast.stmt) -> list[ast.expr]:
    if isinstance(stmt, ast.Assign):
        return list(stmt.targets)
    return [stmt.target]  # type: ignore[attr-defined]


def _with_value(stmt: ast.stmt, value: ast.expr) -> str:
    new = _copy(stmt)
    new.value = value  # type: ignore[attr-defined]
    return ast.unparse(new)


def _with_slots(site: Site, slots: tuple[tuple[int | None, str], ...]) -> Site:
    from dataclasses import replace

    return replace(site, slots=slots)


def _copy(node):  # type: ignore[no-untyped-def]
    import copy

    return copy.deepcopy(node)
