"""The package's import graph stays acyclic and no module reaches into another's private names.

Every ``import`` statement of ``src/distill`` counts, function-local ones included (a cycle held together by
imports inside functions is still a cycle: the modules cannot be understood or loaded one without the other);
only imports under ``if TYPE_CHECKING:`` are left out, since they never run. An import of a private name
(``from distill.x import _helper``) from another module fails, and so does importing a private module
(``distill.store._layout``) from outside the package that holds it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import distill

ROOT = Path(distill.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in ROOT.rglob("*.py")}


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports(name: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import statement of module ``name``."""
    path = MODULES[name]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_lines(tree)
    package = name if _is_package(name) else name.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                out.append((base, alias.name, node.lineno))
    return out


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for name in MODULES:
        for module, attr, _ in imports(name):
            target = f"{module}.{attr}" if attr and f"{module}.{attr}" in MODULES else module
            if target in MODULES and target != name:
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
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
            visit(v)
    return found


def _private_module_owner(module: str) -> str | None:
    """The package that owns a private module (``distill.store._x`` -> ``distill.store``), else None."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:i])
    return None


def private_imports() -> list[str]:
    bad = []
    for name in MODULES:
        for module, attr, line in imports(name):
            if not module.startswith("distill"):
                continue
            where = f"{MODULES[name].relative_to(ROOT.parent)}:{line}"
            if (attr and attr.startswith("_") and not attr.startswith("__")
                    and f"{module}.{attr}" not in MODULES):
                bad.append(f"{where} imports the private name {attr} of {module}")
            full = f"{module}.{attr}" if attr and f"{module}.{attr}" in MODULES else module
            owner = _private_module_owner(full)
            if owner is not None and not (name == owner or name.startswith(owner + ".")):
                bad.append(f"{where} imports the private module {full} from outside {owner}")
    return bad


def test_the_graph_sees_function_local_imports():
    local = [m for m, _, _ in imports("distill.runner")] + [m for m, _, _ in imports("distill.tasks.base")]
    assert "distill.evaluation.speed" in local  # imported inside Task.time_latency


def test_cycle_detection_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_no_import_cycles():
    found = cycles(edges())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_no_cross_module_private_imports():
    bad = private_imports()
    assert not bad, "\n".join(bad)
