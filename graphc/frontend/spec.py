"""Stage 1: a TOML spec (or its text) into a Graph.

In: the spec file (its TOML and key positions read by spec_source.py). Out: a Graph, built
through the same builder API users call. Expressions are parsed with `ast` against a whitelist and never
evaluated; every error names the file, the section.key, the line and column.
"""
from __future__ import annotations

import ast
import difflib
import re
from pathlib import Path
from typing import Any

from graphc.core.errors import GraphcError, Location, SpecError
from graphc.core.ir import Graph, Origin, Value, subscript
from graphc.core.opdef import unknown_op_hint
from graphc.frontend.spec_source import SpecSource, read_toml
from graphc.ops import REGISTRY

SECTIONS = ("name", "dims", "inputs", "params", "state", "graph", "scan", "outputs", "grad", "generate")
SYMBOLIC = ("batch", "symbolic")
MAX_EXPRESSION = 20_000
_BINOPS = {ast.MatMult: "matmul", ast.Add: "add", ast.Sub: "sub", ast.Mult: "mul", ast.Div: "div"}


def load(path: str | Path) -> Graph:
    """Parse a spec file into a Graph."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"cannot read spec: {e}", Location(str(path))) from None
    return parse_spec(text, str(path), default_name=p.stem)


def parse_spec(text: str, file: str = "<spec>", default_name: str = "model") -> Graph:
    doc, src = read_toml(text, file)
    return _Builder(doc, src, default_name).build()


class _Builder:
    def __init__(self, doc: dict, src: SpecSource, default_name: str):
        self.doc, self.src = doc, src
        self.default_name = re.sub(r"\W", "_", default_name) or "model"
        if not self.default_name[0].isalpha():
            self.default_name = "m_" + self.default_name

    def table(self, key: str) -> dict:
        t = self.doc.get(key, {})
        if not isinstance(t, dict):
            raise SpecError(f"[{key}] must be a table", self.src.loc(key))
        return t

    def build(self) -> Graph:
        for k in self.doc:
            if k not in SECTIONS:
                close = difflib.get_close_matches(k, SECTIONS, n=1)
                where = self.src.loc(k) if (k, "") in self.src.lines else self.src.loc("", k)
                raise SpecError(f"unknown section or key {k!r}", where,
                                hint=f"did you mean {close[0]!r}?" if close else f"a spec has {', '.join(SECTIONS)}")
        name = self.doc.get("name", self.default_name)
        if not isinstance(name, str):
            raise SpecError("name must be a string", self.src.loc("", "name"))
        dims = self._dims()
        g = self.guard(lambda: Graph(name, dims), self.src.loc("", "name"))
        g.source_file = self.src.file
        g.param_init = {}
        for section, declare in (("inputs", g.input), ("params", g.param), ("state", g.state)):
            for key, decl in self.table(section).items():
                loc = self.src.loc(section, key)
                shape, dtype, init = self._declaration(section, key, decl, loc)
                with g.origin(Origin(f"{section}.{key}", loc)):
                    self.guard(lambda: declare(key, shape, dtype), loc)
                if init is not None:
                    g.param_init[key] = init
        self.graph_section(g)
        self._outputs(g)
        self._grad(g)
        self._generate(g)
        g.verify()
        return g

    def guard(self, fn, loc: Location):
        """Re-raise builder errors with this key's location."""
        try:
            return fn()
        except GraphcError as e:
            if e.location is None:
                raise type(e)(e.message, loc, e.hint) from None
            raise

    def _dims(self) -> dict[str, int | None]:
        dims = {}
        for k, v in self.table("dims").items():
            loc = self.src.loc("dims", k)
            if not re.match(r"^[A-Za-z][A-Za-z0-9_]*$", k):
                raise SpecError(f"dim name {k!r} is not an identifier", loc)
            if isinstance(v, bool) or not (isinstance(v, int) and v > 0 or v in SYMBOLIC):
                raise SpecError(f"dim {k} = {v!r}: a dim is a positive integer, \"batch\" or \"symbolic\"", loc,
                                hint='write e.g. Dh = 128, or N = "batch" for a size chosen at call time '
                                     '(T = "symbolic" for another, such as a sequence length)')
            dims[k] = None if v in SYMBOLIC else v
        batch = [k for k, v in self.table("dims").items() if v == "batch"]
        if len(batch) > 1:
            raise SpecError(f"at most one batch dim, got {', '.join(batch)}", self.src.loc("dims"),
                            hint=f'mark the others "symbolic": {batch[1]} = "symbolic" (a size set at call time too)')
        # the batch is the first symbolic dim (the C functions' n, what fit splits into minibatches)
        return {**{k: v for k, v in dims.items() if v is not None or k in batch}, **dims}

    def _declaration(self, section, key, decl, loc):
        dtype, init = "float32", None
        if isinstance(decl, dict):
            extra = set(decl) - {"shape", "dtype", "init"}
            if extra or "shape" not in decl:
                raise SpecError(f"{section}.{key} takes {{ shape = [...], dtype = ..., init = ... }}"
                                + (f"; unknown field {sorted(extra)[0]!r}" if extra else "; shape is missing"), loc)
            dtype, init = decl.get("dtype", dtype), decl.get("init")
            decl = decl["shape"]
        if not isinstance(decl, list) or not all(isinstance(d, (int, str)) and not isinstance(d, bool) for d in decl):
            raise SpecError(f"{section}.{key}: a shape is a list of dim names and integers, got {decl!r}", loc,
                            hint='e.g. x = ["N", "Dx"]')
        for d in decl:
            if isinstance(d, str) and d not in self.table("dims"):
                close = difflib.get_close_matches(d, list(self.table("dims")), n=1)
                raise SpecError(f"{section}.{key}: unknown dim {d!r}", loc,
                                hint=f"did you mean {close[0]!r}?" if close else "declare it under [dims]")
        if not isinstance(dtype, str):
            raise SpecError(f"{section}.{key}: dtype must be a string", loc)
        return decl, dtype, init

    # ------------------------------------------------------------------ expressions
    def parse_expression(self, section: str, key: str, expr: Any) -> ast.expr:
        loc = self.src.loc(section, key)
        if not isinstance(expr, str):
            raise SpecError(f"{section}.{key} must be an expression string, got {type(expr).__name__}", loc,
                            hint=f'e.g. {key} = "x @ W.T + b1"')
        if len(expr) > MAX_EXPRESSION:
            raise SpecError(f"expression is {len(expr)} characters long (limit {MAX_EXPRESSION})", loc,
                            hint="split it into several named lines")
        try:
            tree = ast.parse(expr.strip(), mode="eval").body
        except SyntaxError as e:
            off = (e.offset or 1) - 1
            raise SpecError(f"syntax error: {e.msg}", self.src.loc(section, key, expr.strip(), off)) from None
        except (RecursionError, MemoryError, ValueError) as e:
            raise SpecError(f"expression cannot be parsed ({type(e).__name__}: nested too deeply?)", loc) from None
        return tree

    def graph_section(self, g: Graph, section: str = "graph", table: dict | None = None) -> None:
        """[graph]'s lines (or a scan body's, `section` and `table`), in the order they read each
        other; the [scan.NAME] tables of the model take their place in that order (spec_scan.py)."""
        from graphc.core.ir import check_name
        from graphc.frontend.spec_scan import build_scan, scan_tables
        table = self.table("graph") if table is None else table
        for k in table:   # graph names become C names too: the same rules as inputs
            check_name(k, "value", self.src.loc(section, k))
        exprs = {k: self.parse_expression(section, k, v) for k, v in table.items()}
        scans = scan_tables(self, g) if section == "graph" else {}
        order = self._toposort(g, exprs, scans)
        for key in order:
            if key in scans:
                build_scan(self, g, scans[key])
                continue
            expr_text = table[key].strip()
            loc = self.src.loc(section, key)
            with g.origin(Origin(f'{key} = "{expr_text}"', loc)), g.naming(key):
                v = self.expression(g, section, key, exprs[key], expr_text)
            if v.node is None or not v.name.startswith(key + "__"):
                # `h = "z"` only aliases; record the alias as a value name
                self._alias(g, key, v, loc)
            else:
                self.guard(lambda: g.rename(v, key), loc)

    def _alias(self, g, key, v, loc):
        from graphc.core.ir import check_name
        check_name(key, "value", loc)
        if key in g.values:
            raise SpecError(f"value name {key!r} is already used", loc)
        g.values[key] = v

    def _toposort(self, g: Graph, exprs: dict[str, ast.expr], scans: dict | None = None) -> list[str]:
        def names(t):   # the names an expression reads; `relu` in `relu(z)` calls the op, it reads no value
            called = {id(n.func) for n in ast.walk(t) if isinstance(n, ast.Call)}
            return [n.id for n in ast.walk(t) if isinstance(n, ast.Name) and id(n) not in called]

        scans = scans or {}
        provider = {name: key for key, st in scans.items() for name in st.provides}
        provider.update({k: k for k in exprs})
        deps = {k: [provider[d] for d in names(t) if d in provider and d != k] for k, t in exprs.items()}
        deps.update({key: [provider[d] for d in st.reads if d in provider and provider[d] != key]
                     for key, st in scans.items()})
        for k, t in exprs.items():   # a redeclared input is the real mistake in `x = "relu(x)"`: report it first
            if k in g.inputs or k in g.params:
                raise SpecError(f"{k!r} is declared as an input/param and again in [graph]", self.src.loc("graph", k))
            if k in names(t):
                raise SpecError(f"{k} refers to itself", self.src.loc("graph", k), hint="graphs have no cycles")
        order, state = [], {}
        for root in list(exprs) + list(scans):   # depth first with an explicit stack: a long chain of lines must not hit the recursion limit
            if root in state:
                continue
            state[root] = "active"
            path, pending = [root], [iter(deps[root])]
            while pending:
                d = next(pending[-1], None)
                if d is None:
                    k = path.pop()
                    pending.pop()
                    state[k] = "done"
                    order.append(k)
                elif state.get(d) == "active":
                    cycle = path[path.index(d):] + [d]
                    raise SpecError("cycle: " + " -> ".join(cycle), self.src.loc("graph", d),
                                    hint="every value must be computable from inputs and params")
                elif d not in state:
                    state[d] = "active"
                    path.append(d)
                    pending.append(iter(deps[d]))
        return order

    def expression(self, g: Graph, section: str, key: str, node: ast.expr, text: str) -> Value:
        def fail(msg, at, hint=None, cls=SpecError):
            raise cls(msg, self.src.loc(section, key, text, getattr(at, "col_offset", None)), hint)

        def visit(n):
            try:
                v = build(n)
            except GraphcError as e:
                if e.location is None or e.location.offset is None and e.location.key == f"{section}.{key}":
                    raise type(e)(e.message, self.src.loc(section, key, text, getattr(n, "col_offset", None)),
                                  e.hint) from None
                raise
            if v.temporary and v.spec_text is None:   # error messages name a sub-expression by its text
                one_line = text.isascii() and "\n" not in text   # then ast's byte offsets index the str
                v.spec_text = text[n.col_offset:n.end_col_offset] if one_line else ast.get_source_segment(text, n)
            return v

        def build(n):
            if isinstance(n, ast.Name):
                if n.id in g.values:
                    return g.values[n.id]
                outer = g.enclosing
                while outer is not None and n.id not in outer.values:
                    outer = outer.enclosing
                if outer is not None:          # a scan body reads a param or line of the model
                    return g.lift(outer.values[n.id])
                if n.id in g.dims:
                    fail(f"{n.id} is a dim, not a value", n, hint="dims size tensors; they cannot be used in arithmetic")
                if n.id in REGISTRY and REGISTRY[n.id].public:
                    fail(f"{n.id} is an op; call it: {n.id}(...)", n)
                close = difflib.get_close_matches(n.id, list(g.values), n=1)
                known = ", ".join(g.values) or "none yet"
                fail(f"unknown name {n.id!r}", n, hint=f"did you mean {close[0]!r}?" if close else
                     f"declare it under [inputs] or [params], or define it in [graph] before this line "
                     f"(the names so far: {known})")
            if isinstance(n, ast.Constant):
                if isinstance(n.value, bool) or not isinstance(n.value, (int, float)):
                    fail(f"only numbers are allowed as constants, got {n.value!r}", n)
                return g.const(n.value)
            if isinstance(n, ast.BinOp):
                if isinstance(n.op, ast.Pow):
                    if isinstance(n.right, ast.Constant) and n.right.value == 2 and not isinstance(n.right.value, bool):
                        return g.apply("square", visit(n.left))
                    fail("only '** 2' is supported", n.right, hint="write sqrt(x) or exp(...) for other powers")
                if type(n.op) not in _BINOPS:
                    fail(f"operator {type(n.op).__name__} is not allowed", n, hint="use @ + - * / and ** 2")
                a, b = visit(n.left), visit(n.right)
                return g.apply(_BINOPS[type(n.op)], a, b)
            if isinstance(n, ast.UnaryOp):
                if isinstance(n.op, ast.USub):
                    return g.apply("neg", visit(n.operand))
                if isinstance(n.op, ast.UAdd):
                    return visit(n.operand)
                fail(f"operator {type(n.op).__name__} is not allowed", n)
            if isinstance(n, ast.Attribute):
                if n.attr != "T":
                    fail(f"attribute access '.{n.attr}' is not allowed; only '.T' (transpose) is", n)
                return g.apply("transpose", visit(n.value))
            if isinstance(n, ast.Subscript):
                return self._subscript(g, visit(n.value), n.slice, fail)
            if isinstance(n, ast.Call):
                if not isinstance(n.func, ast.Name):
                    fail("only calls of graphc ops by name are allowed", n)
                opname = n.func.id
                if opname not in REGISTRY or not REGISTRY[opname].public:
                    fail(f"unknown op {opname!r}", n, hint=unknown_op_hint(opname))
                op = REGISTRY[opname]
                for kw in n.keywords:
                    if kw.arg is None:
                        fail("'**' arguments are not allowed", kw.value)
                inputs, attr_nodes = op.split_call(list(n.args), {kw.arg: kw.value for kw in n.keywords},
                                                   lambda a: isinstance(a, ast.Constant) and a.value is None)
                low = op.arity - op.optional_inputs if op.arity is not None else 1
                if len(inputs) < low:
                    fail(f"{opname} takes {low} argument{'s' if low != 1 else ''}, got {len(inputs)}", n)
                attrs = {name: self._literal(g, a, fail) for name, a in attr_nodes.items()}
                args = [visit(a) for a in inputs]
                return g.apply(opname, *args, **attrs)
            fail(f"{type(n).__name__} is not allowed in a graph expression", n,
                 hint="expressions use names, numbers, @ + - * / ** 2, .T and op calls")

        try:
            return visit(node)
        except RecursionError:
            raise SpecError("expression is nested too deeply", self.src.loc(section, key)) from None

    def _subscript(self, g: Graph, x: Value, index: ast.expr, fail) -> Value:
        """x[:, 1:5], x[..., ::2], x[:, 0]: core/subscript.py's subscript, each bad item pointed at."""
        nodes = list(index.elts) if isinstance(index, ast.Tuple) else [index]

        def bound(e):
            if isinstance(e, ast.Name) and e.id in g.dims:      # wpe[:T]: a dim's size, symbolic or not
                return e.id if g.dims[e.id] is None else g.dims[e.id]
            return None if e is None else self._literal(g, e, fail)

        items = []
        for e in nodes:
            if isinstance(e, ast.Slice):
                items.append(slice(bound(e.lower), bound(e.upper), bound(e.step)))
            elif isinstance(e, ast.Constant) and e.value is Ellipsis:
                items.append(Ellipsis)
            else:
                items.append(bound(e))
        return subscript(x, tuple(items), lambda i, message, hint=None: fail(message, nodes[i], hint))

    def _literal(self, g: Graph, n: ast.expr, fail):
        """Keyword values: numbers, bools, None, strings (gelu's approximate="tanh"), and tuples
        of ints or dim names (reshape)."""
        if isinstance(n, ast.Constant) and (n.value is None or isinstance(n.value, (int, float, bool, str))):
            return n.value
        if isinstance(n, ast.UnaryOp) and isinstance(n.op, ast.USub) and isinstance(n.operand, ast.Constant) \
                and isinstance(n.operand.value, (int, float)) and not isinstance(n.operand.value, bool):
            return -n.operand.value
        if isinstance(n, (ast.Tuple, ast.List)):
            out = []
            for e in n.elts:
                if isinstance(e, ast.Name) and e.id in g.dims:
                    out.append(e.id if g.dims[e.id] is None else g.dims[e.id])
                elif isinstance(e, ast.Constant) and isinstance(e.value, int) and not isinstance(e.value, bool):
                    out.append(e.value)
                elif isinstance(e, ast.UnaryOp) and isinstance(e.op, ast.USub) and isinstance(e.operand, ast.Constant) \
                        and type(e.operand.value) is int:
                    out.append(-e.operand.value)                     # reshape's -1, an axis from the end
                else:
                    fail("a shape holds integers and dim names", e)
            return tuple(out)
        fail("keyword values must be numbers, strings, True/False, None or a tuple of dims", n)

    def _outputs(self, g: Graph) -> None:
        for key, expr in self.table("outputs").items():
            tree = self.parse_expression("outputs", key, expr)
            loc = self.src.loc("outputs", key)
            with g.origin(Origin(f'{key} = "{expr.strip()}"', loc)), g.naming(key):
                v = self.expression(g, "outputs", key, tree, expr.strip())
            if v.node is not None and v.name.startswith(key + "__") and key not in g.values:
                g.rename(v, key)
            self.guard(lambda: g.output(key, v), loc)
        if not g.outputs:
            raise SpecError("the spec has no [outputs]", self.src.loc("outputs"), hint='add e.g. loss = "J"')

    def _grad(self, g: Graph) -> None:
        t = self.table("grad")
        g.grad_spec = None
        if not t:
            return
        loc = self.src.loc("grad")
        extra = set(t) - {"of", "wrt"}
        if extra:
            raise SpecError(f"[grad] has unknown key {sorted(extra)[0]!r}; it takes 'of' and 'wrt'", loc)
        of, wrt = t.get("of"), t.get("wrt")
        if not isinstance(of, str):
            raise SpecError("[grad] of must name the scalar loss (an output or a graph value)", self.src.loc("grad", "of"))
        if isinstance(wrt, str):
            wrt = [wrt]
        if not isinstance(wrt, list) or not wrt or not all(isinstance(w, str) for w in wrt):
            raise SpecError("[grad] wrt must be a list of param (or input) names", self.src.loc("grad", "wrt"),
                            hint=f"e.g. wrt = {list(g.params)}")
        if of not in g.outputs and of not in g.values:
            close = difflib.get_close_matches(of, list(g.outputs) + list(g.values), n=1)
            raise SpecError(f"[grad] of = {of!r} is not an output or value", self.src.loc("grad", "of"),
                            hint=f"did you mean {close[0]!r}?" if close else None)
        for w in wrt:
            if w in g.states:
                raise SpecError(f"[grad] wrt names {w!r}, which is model state (updated by train_step, not trained)",
                                self.src.loc("grad", "wrt"), hint=f"the trainable params are {', '.join(g.trainable())}")
            if w not in g.params and w not in g.inputs:
                close = difflib.get_close_matches(w, list(g.params) + list(g.inputs), n=1)
                raise SpecError(f"[grad] wrt names {w!r}, which is not a param or input", self.src.loc("grad", "wrt"),
                                hint=f"did you mean {close[0]!r}?" if close else None)
        if g[of].shape != ():
            raise SpecError(f"[grad] of = {of!r} has shape {g.format_shape(g[of].shape)}; it must be a scalar loss",
                            self.src.loc("grad", "of"), hint="reduce it with mean(...) or sum(...)")
        g.grad_spec = (of, wrt)

    def _generate(self, g: Graph) -> None:
        """[generate]: a language model's token input and logits output (Graph.generate_from)."""
        t = self.table("generate")
        if not t:
            return
        loc = self.src.loc("generate")
        if set(t) != {"ids", "logits"} or not all(isinstance(t[k], str) for k in t):
            raise SpecError("[generate] takes ids (the int32 input of token ids) and logits (the output of "
                            "next-token logits), both names", loc, hint='e.g. ids = "idx" and logits = "logits"')
        g.generate_from(t["ids"], t["logits"], loc)
