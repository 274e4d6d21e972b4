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
  functions, recorded leaves and other such values are *replayed*: the trusted side computes them.
  The sandbox runs such an assignment only when later sandbox code reads what it binds (e.g. the
  test passes it to the model); an expected value that only sites read never exists in the
  program's process, so model code can neither read it (`sys._getframe`) nor bend it (patching
  numpy). A replay has no sandbox fallback: if it fails on the trusted side, the step fails.
* A replayed value that the test then hands to sandbox code stays the trusted side's value; the
  sites that read it later also record the sandbox's object (`Site.exposed`), and the trusted side
  takes from it only what an in-place change could have done (see `scicode.verdict`): model code
  that mutates an argument is seen as in the official run, one that rebinds the test's variables
  is not.
* Everything else (building inputs, calling the model's code, seeding RNGs) runs in the sandbox
  unchanged and in the original order, in one process per step: test 47.4 depends on RNG state
  left by earlier cases.

The plan also says which records a complete run produces, in order (`TestPlan.flows`): the sites
of each test's top level, and where it calls a function it defines that holds sites, that call's
`enter` and the function's sites (`TestPlan.bodies`). `scicode.verdict` fails a run whose records
skip, reorder or repeat any of them.

`plan_step` is pure: text in, plan out. `tests/test_testplan.py` checks that every one of the
1,082 official test cases is planned.
"""

from __future__ import annotations

import ast
import functools
import importlib
import symtable
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

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


FlowItem = tuple[str, int]
"""One step of a complete run: ("site", site id) is that site's record; ("call", scope) is one call
of that test-defined function (its `enter` record, then the events of its body); ("free", scope)
means that function may be called here or at any later point, any number of times, and must be
called at least once before the run ends (used where the number of calls is not known statically)."""


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
    exposed: tuple[str, ...]
    """Names the trusted side holds and `trusted` depends on, whose objects the test has since
    handed to sandbox code: their sandbox values are recorded, and the trusted side applies them
    only as in-place changes of its own objects (never as new values)."""
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
    flows: tuple[tuple[FlowItem, ...], ...]
    """For each test case, the events its top level produces after its `test` record, in order."""
    bodies: tuple[tuple[FlowItem, ...], ...]
    """For each scope, the events one call produces after its `enter` record, in order."""

    def site(self, site_id: int) -> Site:
        """The site with this id."""
        return self.sites[site_id]


def plan_step(step_id: str, dependencies: str, test_cases: Sequence[str]) -> TestPlan:
    """Plan a step's test cases.

    Raises:
        UnsupportedTestError: a test case has a form the replay cannot split.
    """
    planner = _Planner(step_id, dependencies, test_cases)
    units = [planner.plan_test(k, src) for k, src in enumerate(test_cases)]
    tests = planner.render(units)
    flows, bodies = planner.flows()
    return TestPlan(
        step_id=step_id,
        tests=tests,
        sites=tuple(planner.sites),
        prelude=planner.prelude(),
        scopes=tuple(planner.scopes),
        uses_target=tuple(TARGET in _names(ast.parse(src)) for src in test_cases),
        flows=flows,
        bodies=bodies,
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


#: Calls that read a namespace as a whole: a statement that makes one reads every variable.
_NAMESPACE_READERS = frozenset({"locals", "globals", "vars", "eval", "exec", "dir"})


def _loads(node: ast.AST) -> set[str]:
    """Every name `node` may read when it runs, including in functions and lambdas it defines."""
    out = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Store)}
    out |= {n.target.id for n in ast.walk(node) if isinstance(n, ast.AugAssign) and isinstance(n.target, ast.Name)}
    return out


_COMPREHENSIONS = frozenset({"listcomp", "setcomp", "dictcomp"})


def _reads(node: ast.AST) -> tuple[set[str], set[str]]:
    """(names `node` reads from its namespace when it runs, globals read later by code it defines).

    Python's own scoping decides (`symtable`): a function's, lambda's, class's or generator's
    locals and parameters are not reads of the enclosing namespace; comprehensions run at once.
    """
    try:
        table = symtable.symtable(ast.unparse(node), "<test>", "exec")
    except (SyntaxError, ValueError):
        return _loads(node), _loads(node)
    now = {s.get_name() for s in table.get_symbols() if s.is_referenced()}
    later: set[str] = set()
    todo = [(child, child.get_name() in _COMPREHENSIONS) for child in table.get_children()]
    while todo:
        scope, immediate = todo.pop()
        names = {s.get_name() for s in scope.get_symbols() if s.is_referenced() and s.is_global()}
        (now if immediate else later).update(names)
        todo += [(c, immediate and c.get_name() in _COMPREHENSIONS) for c in scope.get_children()]
    return now, later


def _reads_namespace(node: ast.AST) -> bool:
    return any(isinstance(n, ast.Name) and n.id in _NAMESPACE_READERS for n in ast.walk(node))


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
    """What the planner knows about the variables of one body (a test's top level, or a function)."""

    name: str | None
    shadowed: set[str] = field(default_factory=set)
    """Names whose current value the trusted side holds (replayed, or from `target`)."""
    tainted: set[str] = field(default_factory=lambda: {TARGET})
    exposed: set[str] = field(default_factory=set)
    """Shadowed names whose objects sandbox code has been handed since they were bound."""
    deps: dict[str, set[str]] = field(default_factory=dict)
    """For each replayed name, the names its value was computed from (it may alias them)."""
    unpacked: dict[str, int] = field(default_factory=dict)
    items: list[tuple[Any, ...]] = field(default_factory=list)
    """The body's flow, unresolved: ("site", id), ("def", name, scope), ("ref", name, exact)."""

    def bind(self, names: set[str], deps: set[str]) -> None:
        self.shadowed |= names
        self.exposed -= names
        for name in names:
            self.deps[name] = set(deps)

    def forget(self, names: Iterable[str]) -> None:
        for name in names:
            self.shadowed.discard(name)
            self.exposed.discard(name)
            self.deps.pop(name, None)

    def expose(self, names: Iterable[str]) -> None:
        self.exposed |= (set(names) & self.shadowed) - self.tainted

    def closure(self, names: Iterable[str]) -> set[str]:
        """`names` and, transitively, the shadowed names their values were computed from."""
        out: set[str] = set()
        todo = [n for n in names if n in self.shadowed]
        while todo:
            name = todo.pop()
            if name not in out:
                out.add(name)
                todo += [m for m in self.deps.get(name, ()) if m in self.shadowed]
        return out


@dataclass
class _Unit:
    """One statement of a body as the sandbox runs it, with what it reads (for `_Planner.render`)."""

    source: str
    loads: set[str] = field(default_factory=set)
    kills: set[str] = field(default_factory=set)
    """Names it rebinds unconditionally."""
    lazy: set[str] = field(default_factory=set)
    """Names read later, whenever code it defines runs."""
    opaque: bool = False
    """It reads a whole namespace (`locals()`, `eval`…)."""
    binds: set[str] | None = None
    """For a replay: the names it binds; the sandbox runs it only when later sandbox code reads them."""
    record_only: str = ""
    """For a replay: the record alone, its leaves evaluated (the sandbox does not run the assignment)."""
    record_loads: set[str] = field(default_factory=set)
    executed: bool = True
    function: ast.FunctionDef | None = None
    """A test-defined function holding sites; its body is `body`."""
    body: list[_Unit] = field(default_factory=list)
    declared: set[str] = field(default_factory=set)
    """Names the function declares global or nonlocal."""


class _Planner:
    def __init__(self, step_id: str, dependencies: str, test_cases: Sequence[str] = ()) -> None:
        self.step_id = step_id
        self.sites: list[Site] = []
        self.scopes: list[str] = []
        self.scope_items: list[list[tuple[Any, ...]]] = []
        self.test_items: list[list[tuple[Any, ...]]] = []
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
        self.scope_names = _scope_names(test_cases)

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

    def plan_test(self, k: int, src: str) -> list[_Unit]:
        try:
            tree = ast.parse(src)
        except SyntaxError as e:
            raise UnsupportedTestError(f"step {self.step_id} test {k + 1} does not parse: {e}") from e
        self.test_index, self.source, self.in_function = k, src, False
        scope = _Scope(None)
        self.trusted_here = set(self.trusted)
        units = self._plan_body(tree.body, scope, top=True)
        self.test_items.append(scope.items)
        return units

    def _plan_body(self, body: list[ast.stmt], scope: _Scope, *, top: bool) -> list[_Unit]:
        needed = self._needed(body, scope)
        out: list[_Unit] = []
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

    def _plan_stmt(self, stmt: ast.stmt, scope: _Scope, needed: set[str], *, top: bool) -> list[_Unit]:
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            self._add_import(stmt, self._segment(stmt))
            bound = _bound_by_import(stmt)
            self.trusted_here |= bound
            scope.forget(bound)
            return [_Unit(self._segment(stmt), kills=bound)]
        if isinstance(stmt, ast.FunctionDef) and top:
            return [self._plan_function(stmt, scope)]
        self._note_references(stmt, scope)
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
                return [replay]
        unit = _sandbox_unit(stmt, self._segment(stmt))
        scope.expose(unit.loads)
        scope.forget(_stored(stmt))
        self.trusted_here -= _stored(stmt)
        return [unit]

    def _note_references(self, node: ast.AST, scope: _Scope) -> None:
        """Flow items for the test-defined functions holding sites that `node` calls or names.

        A statement `f(...)` or `x = f(...)` that names no such function elsewhere calls `f`
        exactly once (if it completes); any other mention is a "free" reference.
        """
        mentions = [n for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in self.scope_names]
        if not mentions:
            return
        statement = isinstance(node, (ast.Expr, ast.Assign, ast.AnnAssign, ast.AugAssign))
        call = getattr(node, "value", None) if statement else None
        if len(mentions) == 1 and isinstance(call, ast.Call) and call.func is mentions[0]:
            scope.items.append(("ref", mentions[0].id, True))
            return
        scope.items += [("ref", name, False) for name in sorted({n.id for n in mentions})]

    # -- sites -------------------------------------------------------------------------------

    def _splitter(self, scope: _Scope) -> _Splitter:
        return _Splitter(
            known=scope.shadowed | scope.tainted,
            trusted=self.trusted_here,
            tainted=scope.tainted,
            pure=set(self.helpers),
        )

    def _new_site(self, stmt: ast.stmt, scope: _Scope, *, kind: str, trusted: str, split: _Split) -> Site:
        exposed = tuple(sorted(scope.closure(split.names_read) & scope.exposed))
        self.used |= split.names_read
        site = Site(
            site_id=len(self.sites),
            test_index=self.test_index,
            scope=scope.name,
            kind=kind,
            trusted=trusted,
            leaves=tuple(ast.unparse(leaf) for leaf in split.leaves),
            exposed=exposed,
            text=self._segment(stmt),
            line=stmt.lineno,
        )
        self.sites.append(site)
        scope.items.append(("site", site.site_id))
        return site

    def _record(self, site: Site) -> str:
        leaves = "".join(f"({leaf}), " for leaf in site.leaves)
        exposed = "".join(f"{name}, " for name in site.exposed)
        return f"{PROBE}.record({site.site_id}, ({leaves}), ({exposed}))"

    def _record_unit(self, site: Site, split: _Split) -> _Unit:
        leaves = ast.Tuple(list(split.leaves), ast.Load())
        now, later = _reads(leaves)
        return _Unit(self._record(site), loads=now | set(site.exposed), lazy=later, opaque=_reads_namespace(leaves))

    def _site(self, stmt: ast.stmt, expr: ast.expr, scope: _Scope, *, kind: str) -> _Unit:
        rewritten, split = self._splitter(scope).split(_copy(expr))
        site = self._new_site(stmt, scope, kind=kind, trusted=ast.unparse(rewritten), split=split)
        slots = tuple(self._slots(rewritten, scope))
        if slots:
            self.sites[site.site_id] = site = _with_slots(site, slots)
        scope.expose(_loads(ast.Tuple(list(split.leaves), ast.Load())))
        return self._record_unit(site, split)

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

    def _tainted_bind(self, stmt: ast.stmt, scope: _Scope) -> _Unit:
        assert isinstance(stmt, (ast.Assign, ast.AugAssign, ast.AnnAssign))
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and _names(stmt.value) == {TARGET}:
            target = stmt.targets[0]
            if isinstance(target, ast.Tuple) and isinstance(stmt.value, ast.Name):
                scope.unpacked |= {e.id: i for i, e in enumerate(target.elts) if isinstance(e, ast.Name)}
        rewritten, split = self._splitter(scope).split(_copy(stmt.value))  # type: ignore[arg-type]
        site = self._new_site(stmt, scope, kind="target", trusted=_with_value(stmt, rewritten), split=split)
        unit = self._record_unit(site, split)
        scope.expose(unit.loads)
        names = _assigned(_targets(stmt))
        scope.bind(names, set())
        scope.tainted |= names
        return unit

    def _replay(self, stmt: ast.stmt, scope: _Scope) -> _Unit | None:
        """Replay an assignment's trusted part on the trusted side; None when there is none.

        The sandbox evaluates and records the leaves; whether it also runs the assignment (on the
        recorded leaves, so model code is not run twice) is decided by `render`.
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
        unit = self._record_unit(site, split)
        names = _assigned(targets)
        unit.binds, unit.record_only, unit.record_loads = names, unit.source, set(unit.loads)
        statement = ast.parse(trusted) if split.leaves else stmt
        unit.source = (
            f"{LEAVES} = {unit.source}\n{trusted}" if split.leaves else f"{unit.source}\n{self._segment(stmt)}"
        )
        now, later = _reads(statement)
        unit.loads |= now - {LEAVES}
        unit.lazy |= later
        unit.kills = names
        scope.expose(unit.record_loads)
        scope.bind(names, split.names_read)
        return unit

    # -- test-defined functions ----------------------------------------------------------------

    def _plan_function(self, fn: ast.FunctionDef, outer: _Scope) -> _Unit:
        if not _has_sites(fn):
            self._note_references(fn, outer)
            if not fn.decorator_list and _free_names(fn) <= self.trusted_here:
                self.helpers[fn.name] = self._segment(fn)
                self.used |= _free_names(fn)
                self.trusted_here.add(fn.name)
            else:
                self.trusted_here.discard(fn.name)
            outer.expose(_free_names(fn) | _loads(_evaluated_at_def(fn)))
            outer.forget({fn.name})
            return _sandbox_unit(fn, self._segment(fn))
        if TARGET in _names(fn):
            raise UnsupportedTestError(f"step {self.step_id}: test function {fn.name} reads target")
        self._note_references(_evaluated_at_def(fn), outer)
        self.trusted_here.discard(fn.name)
        scope = _Scope(fn.name, tainted=set())
        index = len(self.scopes)
        self.scopes.append(fn.name)
        self.scope_items.append(scope.items)
        outer.items.append(("def", fn.name, index))
        self.in_function = True
        try:
            body = [_Unit(f"{PROBE}.enter({index})"), *self._plan_body(fn.body, scope, top=False)]
        finally:
            self.in_function = False
        outer.expose(_free_names(fn))
        outer.forget({fn.name})
        declared = {name for n in ast.walk(fn) if isinstance(n, (ast.Global, ast.Nonlocal)) for name in n.names}
        return _Unit(
            "", loads=_loads(_evaluated_at_def(fn)), kills={fn.name}, function=fn, body=body, declared=declared
        )

    # -- which replays the sandbox runs ------------------------------------------------------

    def render(self, tests: list[list[_Unit]]) -> tuple[str, ...]:
        """The sandbox source of each test, once each replay is known to be needed there or not.

        A replay runs in the sandbox only when sandbox code may read what it binds before it is
        bound again: later statements, leaves and records of its body (at top level: of later
        test cases too, which share the module's globals), or any function, lambda or class the
        tests define (they may run at any time). A statement reading a whole namespace makes every
        earlier replay run. Otherwise only its record is left: its leaves are evaluated and
        recorded, and the value it computes exists on the trusted side alone.
        """
        for unit in (u for units in tests for u in units if u.function is not None):
            _decide_function(unit)
            unit.lazy = _reads(ast.parse(_render([unit])[0]))[1]
        lazy = {name for units in tests for u in units for name in u.lazy}
        live, everything = set(lazy), False
        for unit in reversed([u for units in tests for u in units]):
            if unit.binds is not None:
                unit.executed = everything or bool(unit.binds & live)
                live = (live - unit.kills) | unit.loads if unit.executed else live | unit.record_loads
            else:
                everything = everything or unit.opaque
                live = (live - unit.kills) | unit.loads
            live |= lazy
        return tuple("\n".join(_render(units)) for units in tests)

    def flows(self) -> tuple[tuple[tuple[FlowItem, ...], ...], tuple[tuple[FlowItem, ...], ...]]:
        """The records a complete run produces: per test case, and per call of each scope.

        At top level, a statement `f(...)` or `x = f(...)` that names no other such function, where
        `f` is the latest function with sites defined under that name, is exactly one call. Inside
        a function, so is such a call of a name that only one function with sites has. Any other
        mention of such a function (a call in a loop or a larger expression, a reference from
        another function, a rebinding) makes every function of that name free: callable any
        number of times from that point on, each call complete and in order, and at least once.
        """
        by_name: dict[str, list[int]] = {}
        for index, name in enumerate(self.scopes):
            by_name.setdefault(name, []).append(index)
        free: set[int] = set()

        def resolve(items: list[tuple[Any, ...]], current: dict[str, int] | None) -> list[FlowItem]:
            out: list[FlowItem] = []
            for item in items:
                if item[0] == "site":
                    out.append(("site", item[1]))
                elif item[0] == "def":
                    if current is not None:
                        current[item[1]] = item[2]
                else:
                    _, name, exact = item
                    candidates = by_name.get(name, [])
                    if exact and current is not None:
                        if name in current:
                            out.append(("call", current[name]))
                    elif exact and len(candidates) == 1:
                        out.append(("call", candidates[0]))
                    else:
                        out += [("free", index) for index in candidates]
                        free.update(candidates)
            return out

        current: dict[str, int] = {}
        tests = [resolve(items, current) for items in self.test_items]
        bodies = [resolve(items, None) for items in self.scope_items]

        def settle(flow: list[FlowItem]) -> tuple[FlowItem, ...]:
            return tuple(("free", i) if kind == "call" and i in free else (kind, i) for kind, i in flow)

        return tuple(settle(f) for f in tests), tuple(settle(b) for b in bodies)


def _decide_function(unit: _Unit) -> None:
    """Decide which replays of a test function's body the sandbox runs.

    Inside a function a replay runs when sandbox code anywhere in the body reads what it binds (its
    locals live only there), or when the function declares that name global or nonlocal.
    """
    replays = [u for u in unit.body if u.binds is not None]
    everything = any(u.opaque for u in unit.body)
    live = set(unit.declared)
    for u in unit.body:
        live |= u.lazy | (u.record_loads if u.binds is not None else u.loads)
    for u in replays:
        u.executed = everything
    changed = True
    while changed:
        changed = False
        for u in replays:
            if not u.executed and u.binds is not None and u.binds & live:
                u.executed = changed = True
                live |= u.loads | u.lazy


def _render(units: list[_Unit]) -> list[str]:
    out: list[str] = []
    for unit in units:
        if unit.function is not None:
            fn = _copy(unit.function)
            fn.body = [stmt for src in _render(unit.body) for stmt in ast.parse(src).body]
            out.append(ast.unparse(fn))
        elif unit.binds is not None and not unit.executed:
            out.append(unit.record_only)
        else:
            out.append(unit.source)
    return out


def _sandbox_unit(stmt: ast.stmt, source: str) -> _Unit:
    """A statement the sandbox runs as written."""
    kills: set[str] = set()
    if isinstance(stmt, ast.Assign) and all(
        isinstance(n, (ast.Name, ast.Tuple, ast.List, ast.expr_context)) for t in stmt.targets for n in ast.walk(t)
    ):
        kills = _assigned(stmt.targets)
    elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        kills = {stmt.name}
    now, later = _reads(stmt)
    return _Unit(source, loads=now, kills=kills, lazy=later, opaque=_reads_namespace(stmt))


def _evaluated_at_def(fn: ast.FunctionDef) -> ast.expr:
    """What a `def` statement itself evaluates: decorators and default values."""
    return ast.Tuple([*fn.decorator_list, *fn.args.defaults, *(d for d in fn.args.kw_defaults if d)], ast.Load())


def _has_sites(fn: ast.FunctionDef) -> bool:
    return any(isinstance(n, ast.Assert) for n in ast.walk(fn)) or TARGET in _names(fn)


def _scope_names(test_cases: Sequence[str]) -> set[str]:
    """Names of the top-level test functions that hold sites, in any test case of the step."""
    out: set[str] = set()
    for src in test_cases:
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        out |= {s.name for s in tree.body if isinstance(s, ast.FunctionDef) and _has_sites(s)}
    return out


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
