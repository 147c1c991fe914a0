"""The library's modules import one way: no module imports one that imports it back.

Every import counts, module-level or inside a function (a lazy import only delays the circle), and importing
`layers.a.b` from outside `layers.a` runs `layers/a/__init__.py` first, so a circle through a package's face
counts too. Imports under `if TYPE_CHECKING:` never run and are left out.
"""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_files(root: Path) -> dict[str, Path]:
    """Dotted name -> file, for app.py and every module under layers/ and ui/ (a package by its __init__.py)."""
    files = {"app": root / "app.py"}
    for path in sorted(p for package in ("layers", "ui") for p in (root / package).rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    return files


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes that sit under `if TYPE_CHECKING:`."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
            skipped.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return skipped


def import_graph(files: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the modules of ours that importing it runs (targets, plus the package faces above them)."""
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        is_package = path.name == "__init__.py"
        package = name if is_package else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        skipped = _type_checking_only(tree)
        targets: set[str] = set()
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[:len(package.split(".")) - node.level + 1]
                    base = ".".join(base + ([node.module] if node.module else []))
                else:
                    base = node.module or ""
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in files)
        edges: set[str] = set()
        for target in targets:
            if target not in files:
                continue
            edges.add(target)
            parts = target.split(".")
            for k in range(1, len(parts)):
                face = ".".join(parts[:k])
                # A module inside a package is imported while its face already runs: no edge to it.
                if face in files and not (name == face or name.startswith(face + ".")):
                    edges.add(face)
        edges.discard(name)
        graph[name] = edges
    return graph


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


KNOWN_CIRCLE_EDGES: set[tuple[str, str]] = set()


def reaches(graph: dict[str, set[str]], start: str, goal: str) -> bool:
    seen, todo = {start}, [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        for nxt in graph.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return False


def test_no_module_imports_one_that_imports_it_back():
    graph = import_graph(module_files(ROOT))
    assert "layers.plan" in graph and "layers.cli" in graph, "the graph covers the library"
    for a, b in KNOWN_CIRCLE_EDGES:
        assert b in graph[a], f"{a} no longer imports {b}: remove it from KNOWN_CIRCLE_EDGES"
        assert reaches(graph, b, a), f"{a} -> {b} is no longer on a circle: remove it from KNOWN_CIRCLE_EDGES"
    pruned = {name: {t for t in targets if (name, t) not in KNOWN_CIRCLE_EDGES} for name, targets in graph.items()}
    circle = find_circle(pruned)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_the_check_finds_a_circle_through_a_lazy_import_and_a_package_face(tmp_path):
    # a -> pkg (face) -> pkg.inner -> a, the last one inside a function
    (tmp_path / "layers" / "pkg").mkdir(parents=True)
    (tmp_path / "app.py").write_text("")
    (tmp_path / "layers" / "__init__.py").write_text("")
    (tmp_path / "layers" / "a.py").write_text("from .pkg import thing\n")
    (tmp_path / "layers" / "pkg" / "__init__.py").write_text("from .inner import thing\n")
    (tmp_path / "layers" / "pkg" / "inner.py").write_text("def thing():\n    from ..a import x\n")
    (tmp_path / "layers" / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                             "    from .a import x\n")
    graph = import_graph(module_files(tmp_path))
    assert graph["layers.pkg.inner"] == {"layers.a"}
    assert graph["layers.b"] == set(), "an import only for type checkers never runs"
    assert find_circle(graph) == ["layers.a", "layers.pkg", "layers.pkg.inner", "layers.a"]
    # Breaking the lazy import breaks the circle.
    (tmp_path / "layers" / "pkg" / "inner.py").write_text("def thing():\n    pass\n")
    assert find_circle(import_graph(module_files(tmp_path))) is None


def external_imports(path: Path) -> set[str]:
    """The top-level names of what a file imports from outside the project (gradio, torch, ...)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names.add((node.module or "").split(".")[0])
    return names


def test_the_library_never_imports_the_page():
    """layers/ is the pipeline, used by the CLI and the batch without gradio: only ui/ and app.py build the page."""
    files = module_files(ROOT)
    graph = import_graph(files)
    assert any(name.startswith("ui.") for name in files), "the graph covers the page"
    for name, path in files.items():
        if name.startswith("layers"):
            assert "gradio" not in external_imports(path), f"{name} imports gradio"
            assert not {t for t in graph[name] if t == "app" or t == "ui" or t.startswith("ui.")}, name
        if name.startswith("ui"):
            assert "app" not in graph[name], f"{name} imports app.py back"
