"""The package's layers import strictly downward, and no module imports itself in a circle.

Every `import` and `from ... import` in graphc/ is read with `ast`, at module level and inside
functions alike (a function-local import is an import all the same). LAYERS, lowest first, is
the one written statement of the layer order; docs/architecture.md draws it. A module may
import from its own layer or a lower one, never from a higher one, and the module graph has no
cycle, even inside one layer."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "graphc"

# lowest first; `graphc` itself (graphc/__init__.py, __main__.py) gathers the public API on top
LAYERS = ["core", "ops", "frontend", "passes", "autodiff", "backend", "native", "tools", "api"]


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "api"


def imports() -> dict[str, set[str]]:
    """Module -> the graphc modules it imports (a package import counts as its __init__)."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                # `from graphc.ops import elementwise` imports the submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if target == "graphc" or target.startswith("graphc."):
                    while target not in modules and "." in target:
                        target = target.rpartition(".")[0]
                    if target != module:
                        edges[module].add(target)
    return edges


def test_layers_cover_every_subpackage():
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file() and p.name != "templates"}
    assert packages <= set(LAYERS), f"subpackages without a layer: {sorted(packages - set(LAYERS))}"


def test_every_import_goes_to_the_same_or_a_lower_layer():
    upward = []
    for module, targets in imports().items():
        for target in targets:
            if LAYERS.index(layer_of(target)) > LAYERS.index(layer_of(module)):
                upward.append(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})")
    assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(sorted(upward))


def test_the_import_graph_has_no_cycle():
    edges = imports()
    state: dict[str, int] = {}          # 1: on the current path, 2: done
    cycles = []

    def visit(m: str, path: list[str]) -> None:
        state[m] = 1
        for t in sorted(edges[m]):
            if t.startswith("graphc.") and t.count(".") and state.get(t) == 1:
                cycles.append(" -> ".join(path[path.index(t):] + [t]))
            elif state.get(t) is None:
                visit(t, path + [t])
        state[m] = 2

    for m in sorted(edges):
        if state.get(m) is None:
            visit(m, [m])
    assert not cycles, "import cycles:\n  " + "\n  ".join(cycles)


def test_the_walker_sees_function_local_and_package_imports():
    """The test above would pass vacuously if the walker missed imports: it must see some."""
    edges = imports()
    assert "graphc.core.ir" in edges["graphc.core.arguments"]
    assert "graphc.ops.elementwise" in edges["graphc.ops"]
    assert any("graphc.frontend.spec" in t for t in edges.values())
