"""No module reads or writes another module's private attributes (issue 14, item 4).

A module may touch `obj._name` (or getattr(obj, "_name")) only when `_name` is its own: a
private name it defines itself (`self._name = ...`, `def _name`, a `__slots__` entry). What
one module needs of another's object is a declared public field or method, so a change of
private names never breaks another module. Checked with `ast` over every file of graphc/:
a heuristic (two modules that both define `_x` are not told apart), but it catches what
issue 14 found (Trainer reading TrainState's `_params`, `_plan`, ... and CompiledModel's
`_batch`; `getattr(model, "_trainer")`)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "graphc"
FILES = sorted(PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def own_private_names(tree: ast.AST) -> set[str]:
    """The private names a module defines: functions, classes, attributes it stores, __slots__."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__slots__"
                                                  for t in node.targets):
            names.update(e.value for e in ast.walk(node.value)
                         if isinstance(e, ast.Constant) and isinstance(e.value, str))
    return {n for n in names if _private(n)}


def foreign_private_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, text) of each access to a private name the module does not define, on an object
    other than self or cls: obj._name, and getattr/setattr/hasattr(obj, "_name")."""
    own = own_private_names(tree)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _private(node.attr) and node.attr not in own:
            if not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")):
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("getattr", "setattr", "hasattr", "delattr") and len(node.args) >= 2:
            key = node.args[1]
            if isinstance(key, ast.Constant) and isinstance(key.value, str) and _private(key.value) \
                    and key.value not in own:
                found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_private_access_no_module_touches_another_modules_private_attributes(path):
    bad = foreign_private_uses(ast.parse(path.read_text(), str(path)))
    assert not bad, "\n".join(f"{path.relative_to(PACKAGE.parent)}:{line}: {text}" for line, text in bad)


def test_private_access_checker_catches_what_issue_14_found():
    """The check has teeth: the Trainer's old reads of TrainState and CompiledModel internals."""
    trainer = ast.parse("def step(self, state, model):\n"
                        "    plan = state._plan\n"
                        "    n = model._batch(dims)\n"
                        "    t = getattr(model, '_trainer', None)\n"
                        "    self._ok = state.cache\n")
    assert [text for _, text in foreign_private_uses(trainer)] == [
        "state._plan", "model._batch", "getattr(model, '_trainer', None)"]
    own = ast.parse("class A:\n    __slots__ = ('_x',)\n\ndef copy(a):\n    b = A()\n    b._x = a._x\n")
    assert foreign_private_uses(own) == []
