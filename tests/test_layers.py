"""The import graph of src/gradfit, built from the source (function-level imports included):
no cycles, and no module imports from a layer below its own (docs/DESIGN.md lists the layers)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "gradfit"

#: layers from the bottom up; a module may import only from its own layer's module itself or from
#: layers listed BEFORE it. Modules in one layer with several entries (data, models) are peers
#: that must not import each other.
LAYERS = [
    ["errors"], ["status"], ["_version"], ["_files"], ["_memory"], ["_threads"], ["_native"], ["callbacks"], ["_checks"], ["options"],
    ["formula"],
    ["data", "models"],
    ["losses"],
    ["likelihood"],
    ["optim"],
    ["goodness_of_fit"],
    ["stats"],
    ["lsq"],
    ["train"],
    ["results"],
    ["fitting"],
    ["tuning"],
    ["sklearn"],
    ["cli"],
    ["__main__"],
]
#: the package front (the lazy public API): only the CLI, at the top, imports it
UNLAYERED = {"gradfit"}
FRONT_ALLOWED = {"cli", "__main__"}


def _group(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _layer_of() -> dict[str, tuple[int, int]]:
    out = {}
    for i, layer in enumerate(LAYERS):
        for j, group in enumerate(layer):
            out[group] = (i, j)
    return out


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str) -> set[str]:
    """Every gradfit module this file imports, at any nesting level."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "gradfit")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "gradfit":
                continue
            if node.module is None or target == "gradfit":
                # "from . import x" / "from gradfit import x": x may be a submodule
                for a in node.names:
                    if a.name == "__version__":
                        found.add("gradfit._version")
                        continue
                    candidate = f"{target}.{a.name}"
                    found.add(candidate if _exists(candidate) else target)
            else:
                found.add(target)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (SRC / rel).with_suffix(".py").exists() or (SRC / rel / "__init__.py").exists()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        graph[module] = {m for m in _imports(path, module) if m != module}
    return graph


def test_every_module_has_a_layer():
    layers = _layer_of()
    missing = sorted({_group(m) for m in _graph() if m not in UNLAYERED and _group(m) not in layers})
    assert not missing, f"modules outside every layer (add them to LAYERS and docs/DESIGN.md): {missing}"


def test_no_upward_or_sideways_imports():
    layers = _layer_of()
    bad = []
    for module, targets in _graph().items():
        if module in UNLAYERED:
            continue
        here = layers[_group(module)]
        for target in targets:
            if target in UNLAYERED:
                if _group(module) in FRONT_ALLOWED:
                    continue
                bad.append(f"{module} -> {target} (import the defining module, not the package front)")
                continue
            there = layers[_group(target)]
            if _group(target) == _group(module):
                continue
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                bad.append(f"{module} -> {target}")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


def test_no_import_cycles():
    graph = _graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif state.get(nxt) is None:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if state.get(node) is None:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


@pytest.mark.parametrize("text, expected", [
    ("from ..errors import X", {"gradfit.errors"}),
    ("from .solve import solve", {"gradfit.lsq.solve"}),
    ("def f():\n    from ..models.formula import FormulaModel", {"gradfit.models.formula"}),
    ("import gradfit.stats", {"gradfit.stats"}),
])
def test_the_graph_sees_function_level_and_relative_imports(tmp_path, text, expected):
    path = tmp_path / "problem.py"
    path.write_text(text)
    # read the text as if it were src/gradfit/lsq/problem.py
    assert _imports(path, "gradfit.lsq.problem") == expected
