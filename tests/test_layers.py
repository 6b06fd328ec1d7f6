"""The layers of ARCHITECTURE.md hold: a module imports only its own layer's and lower layers' modules (no arrow
back up), and no two modules of the library import each other at their tops (no circle)."""

import ast
from pathlib import Path

import eseg_cli

PACKAGE = Path(eseg_cli.__file__).parent
# lower number = lower layer (the leaf modules below the folders, in their own order)
LAYERS = {"errors": 0, "events": 0, "utils": 1, "run": 2, "data": 3, "models": 3, "inference": 4, "engine": 5,
          "analysis": 6, "cli": 7}


def _imports(path: Path, top_only: bool = False) -> set[str]:
    """The eseg_cli modules ``path`` imports (``from pkg import submodule`` names the submodule, not the package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_only else ast.walk(tree)
    out = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("eseg_cli"):
            subs = {f"{node.module}.{a.name}" for a in node.names} & MODULES
            out |= subs or {node.module}
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("eseg_cli"))
    return out


def _module(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    return ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def _files():
    return [p for p in sorted(PACKAGE.rglob("*.py")) if _layer(_module(p))]


MODULES = {_module(p) for p in PACKAGE.rglob("*.py")}


def test_no_module_imports_a_higher_layer():
    upward = []
    for p in _files():
        own = _layer(_module(p))
        for name in _imports(p):
            other = _layer(name)
            if other and other != own and LAYERS[other] >= LAYERS[own]:
                upward.append(f"{_module(p)} imports {name} ({own} -> {other})")
    assert not upward, "\n".join(upward)


def test_no_import_circle_between_modules():
    modules = {_module(p): p for p in _files()}
    graph = {m: {n for n in _imports(p, top_only=True) if n in modules and n != m} for m, p in modules.items()}
    seen: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(m, path):
        seen[m] = 1
        for n in graph[m]:
            if seen.get(n) == 1:
                raise AssertionError("import circle: " + " -> ".join(path[path.index(n):] + [n]))
            if n not in seen:
                visit(n, path + [n])
        seen[m] = 2

    for m in graph:
        if m not in seen:
            visit(m, [m])
