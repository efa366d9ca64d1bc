"""The package's shape: no import cycles, no oversized module.

The import graph is read from the source (AST), not by importing: an edge
``a -> b`` for every ``import b`` / ``from b import x`` in ``a`` that names a
module of the package (``from pkg import sub`` counts as an edge to
``pkg.sub`` when ``sub`` is a module). Three kinds of edge: imports that run at
import time, imports inside functions (lazy), and type-only imports under
``if TYPE_CHECKING:`` (they never run, but two modules that name each other's
types still depend on each other: a cycle among them is refused too). The
implicit import of a module's parent packages is left out (every submodule would
otherwise form a cycle with the ``__init__`` that imports it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lightning_noiseprobe"

#: Most lines a module may have.
MAX_LINES = 700


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


#: When an import statement runs: at import time, inside a function, or never (type-only).
AT_IMPORT, IN_FUNCTION, TYPE_ONLY = "at_import", "in_function", "type_only"


def _imports(tree: ast.Module) -> list[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement, with when it runs (:data:`AT_IMPORT`, :data:`IN_FUNCTION`,
    :data:`TYPE_ONLY`)."""
    found: list[tuple[ast.Import | ast.ImportFrom, str]] = []

    def visit(node: ast.AST, when: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.body:
                    visit_stmt(sub, TYPE_ONLY)
                for sub in child.orelse:
                    visit_stmt(sub, when)
                continue
            visit_stmt(child, when)

    def visit_stmt(child: ast.AST, when: str) -> None:
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            found.append((child, when))
        elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            visit(child, TYPE_ONLY if when == TYPE_ONLY else IN_FUNCTION)
        else:
            visit(child, when)

    visit(tree, AT_IMPORT)
    return found


def import_graph(*, with_function_level: bool, with_type_only: bool = False) -> dict[str, set[str]]:
    """``module -> modules of the package it imports``: module-level imports; optionally
    also those in functions and the type-only ones (under ``if TYPE_CHECKING:``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    kinds = {AT_IMPORT}
    kinds |= {IN_FUNCTION} if with_function_level else set()
    kinds |= {TYPE_ONLY} if with_type_only else set()
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, when in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if when not in kinds:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = name.split(".")
                    anchor = anchor if is_package else anchor[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.append(sub if sub in modules else base)
            for target in targets:
                while target and target not in modules:  # `import a.b.c` of a name inside a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return found


def test_the_graph_sees_real_edges() -> None:
    """The checker is not vacuous: known edges of both kinds are found."""
    top = import_graph(with_function_level=False)
    every = import_graph(with_function_level=True)
    assert "lightning_noiseprobe.backends.base" in top["lightning_noiseprobe.backends"]
    assert "lightning_noiseprobe._errors" in top["lightning_noiseprobe.module"]
    # a lazy import (inside a function) counts only in the full graph
    assert "lightning_noiseprobe._sharding" not in top["lightning_noiseprobe.module"]
    assert "lightning_noiseprobe._sharding" in every["lightning_noiseprobe.module"]
    # a type-only import (under `if TYPE_CHECKING:`) counts only when asked for
    typed = import_graph(with_function_level=True, with_type_only=True)
    owner, used = "lightning_noiseprobe.probe.probeset", "lightning_noiseprobe.backends.base"
    assert used not in every[owner] and used in typed[owner]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_type_only_imports_are_told_apart() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "import a\n"
        "if TYPE_CHECKING:\n"
        "    import b\n"
        "else:\n"
        "    import c\n"
        "def f():\n"
        "    import d\n"
        "if typing.TYPE_CHECKING:\n"
        "    def g():\n"
        "        import e\n"
    )
    found = {
        node.names[0].name: when
        for node, when in _imports(tree)
        if node.names[0].name != "TYPE_CHECKING"
    }
    assert found == {
        "a": AT_IMPORT,
        "b": TYPE_ONLY,
        "c": AT_IMPORT,
        "d": IN_FUNCTION,
        "e": TYPE_ONLY,
    }


def test_no_import_cycles_at_module_level() -> None:
    assert cycles(import_graph(with_function_level=False)) == []


def test_no_import_cycles_even_through_imports_in_functions() -> None:
    """A lazy import is no excuse for two modules needing each other."""
    assert cycles(import_graph(with_function_level=True)) == []


def test_no_import_cycles_even_through_type_only_imports() -> None:
    """Nor is ``if TYPE_CHECKING:``: a module naming another's types depends on it."""
    assert cycles(import_graph(with_function_level=True, with_type_only=True)) == []


def test_base_imports_no_concrete_backend() -> None:
    every = import_graph(with_function_level=True)
    assert every["lightning_noiseprobe.backends.base"] <= {
        "lightning_noiseprobe._errors",
        "lightning_noiseprobe._hashing",
        "lightning_noiseprobe._io",
        "lightning_noiseprobe.functional.losses",
    }
    backends = {m for m in every["lightning_noiseprobe.module"] if ".backends" in m}
    assert backends <= {"lightning_noiseprobe.backends", "lightning_noiseprobe.backends.base"}


@pytest.mark.parametrize("name", sorted(_modules()))
def test_no_module_over_the_line_limit(name: str) -> None:
    path = _modules()[name]
    relative = path.relative_to(PACKAGE).as_posix()
    lines = len(path.read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{relative} has {lines} lines (at most {MAX_LINES}); split it"


def test_the_readme_layout_names_every_top_level_module_and_package() -> None:
    """A newcomer finds each module in the README's layout table (it matches the tree)."""
    readme = (PACKAGE.parent / "README.md").read_text(encoding="utf-8")
    layout = readme[readme.index("Layout (one obvious home per concept") :]
    names = [
        p.name + ("/" if p.is_dir() else "")
        for p in PACKAGE.iterdir()
        if (p.suffix == ".py" and p.name != "__init__.py")
        or (p.is_dir() and (p / "__init__.py").exists())
    ]
    probe = [f"probe/{p.name}" for p in (PACKAGE / "probe").glob("*.py") if p.name != "__init__.py"]
    # a package counts as named when one of its modules is (`probe/spec.py`)
    missing = [n for n in names + probe if f"`{n}" + ("" if n.endswith("/") else "`") not in layout]
    assert missing == [], f"the README's layout table does not name {missing}"
