"""The package's import graph points down: request → editor → tracker → kernel.

Built from the source with ``ast`` (function-level imports included, so a cycle cannot hide
behind a deferred import).  Two rules: no cycle between the units of ``prune_fast`` (its
subpackages and top-level modules), and every import goes to the same or a lower layer of
:data:`LAYERS`.
"""
from __future__ import annotations

import ast
from pathlib import Path

import prune_fast

PACKAGE = Path(prune_fast.__file__).parent

# bottom first; a unit may import units of its own layer or below
LAYERS: list[set[str]] = [
    {"errors", "_validate", "_atomic", "_scratch", "_dtype", "cache"},
    {"kernels"},
    {"spectral"},
    {"restrain", "_tracker_state"},
    {"tracker"},
    {"checkpoint", "updates"},
    {"lm"},
    {"editors"},
    {"testbed"},
    {"runs"},
    {"commands"},
    {"cli", "__main__", "__init__"},
]


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def import_edges() -> dict[tuple[str, str], list[str]]:
    """``(from_unit, to_unit) -> ["module:line", ...]`` for every import between different units."""
    modules = {_module_name(p)[0] for p in PACKAGE.rglob("*.py")}
    edges: dict[tuple[str, str], list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        name, is_pkg = _module_name(path)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_pkg else name.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                # "from . import x" names a submodule x when there is one
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
            for target in targets:
                if target != "prune_fast" and not target.startswith("prune_fast."):
                    continue
                src, dst = _unit(name), _unit(target)
                if src != dst:
                    edges.setdefault((src, dst), []).append(f"{name}:{node.lineno}")
    return edges


def _layer(unit: str) -> int:
    for i, layer in enumerate(LAYERS):
        if unit in layer:
            return i
    raise AssertionError(f"unit {unit!r} of prune_fast is in no layer of LAYERS: add it where it belongs")


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)[0]) for p in PACKAGE.rglob("*.py")}
    for unit in units:
        _layer(unit)


def test_imports_point_down():
    upward = [f"{src} (layer {_layer(src)}) imports {dst} (layer {_layer(dst)}) at {', '.join(where)}"
              for (src, dst), where in sorted(import_edges().items()) if _layer(dst) > _layer(src)]
    assert not upward, "imports that point up:\n" + "\n".join(upward)


def test_no_cycle_between_units():
    graph: dict[str, set[str]] = {}
    for src, dst in import_edges():
        graph.setdefault(src, set()).add(dst)
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (cycle := visit(v)):
                return cycle
        stack.pop()
        state[u] = 2
        return None

    for unit in sorted(graph):
        if unit not in state and (cycle := visit(unit)):
            raise AssertionError("import cycle between units of prune_fast: " + " → ".join(cycle))


def test_the_checker_sees_a_function_level_import(tmp_path, monkeypatch):
    """A deferred import upward is caught like a top-level one (the checker reads function bodies)."""
    pkg = tmp_path / "prune_fast"
    (pkg / "kernels").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "kernels" / "__init__.py").write_text("def f():\n    from ..runs import runner\n")
    (pkg / "runs").mkdir()
    (pkg / "runs" / "__init__.py").write_text("from ..kernels import f\n")
    (pkg / "runs" / "runner.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    edges = import_edges()
    assert ("kernels", "runs") in edges and ("runs", "kernels") in edges
