"""The package's shape (issue #26): every module imports, the import graph has no cycle, numba is the kernels'
alone, the checkpoint's state is read through its schema, every module and function keeps to the size limits
(tools.sizes: 500 lines a module, 80 a function; the training loop's Run under 300), and no module outside the
cells registry spells a cell's name."""

import ast
import importlib
import os
import re

import pytest

from tools.sizes import oversized

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "fastrnn")


def modules():
    """{module name: path} of every module of the package."""
    found = {}
    for directory, _, names in os.walk(PACKAGE):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                module = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                found[module[:-len(".__init__")] if module.endswith(".__init__") else module] = path
    return found


MODULES = modules()


def imports(module, path):
    """The package's modules that `module` imports anywhere in it (at module level or inside functions): for
    `from a import b`, a.b if that is a module, else a."""
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in MODULES)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            for a in node.names:
                if f"{base}.{a.name}" in MODULES:
                    out.add(f"{base}.{a.name}")
                elif base in MODULES:
                    out.add(base)
    out.discard(module)
    return out


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not m.endswith(".__main__")))  # (that one runs)
def test_every_module_imports(module):
    importlib.import_module(module)


def test_the_import_graph_has_no_cycle():
    graph = {module: imports(module, path) for module, path in MODULES.items()}
    assert graph["fastrnn.kernels"] >= {"fastrnn.kernels.backend"}  # (the function-level imports are seen)
    assert cycles(graph) == []
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # (the check works)


def test_numba_is_imported_by_the_kernels_alone():
    users = set()
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(n == "numba" or n.startswith("numba.") for n in names):
                users.add(module)
    assert users and all(m.startswith("fastrnn.kernels.") for m in users), sorted(users)


def test_the_checkpoint_state_is_read_through_its_schema():
    """No module reads a checkpoint's state by key (`state.get(...)`, `ckpt.state["..."]`): its fields are
    checkpoint.RunState's attributes."""
    by_key = re.compile(r"\bstate\.get\(|\.state\[\s*[\"']")
    found = [f"{module}:{i}" for module, path in MODULES.items()
             for i, line in enumerate(open(path, encoding="utf-8"), 1) if by_key.search(line.split("#")[0])]
    assert found == []


def test_every_module_keeps_to_the_size_limits():
    assert [item for path in sorted(MODULES.values()) for item in oversized(path)] == []
    tree = ast.parse(open(os.path.join(ROOT, "fastrnn", "train", "run.py"), encoding="utf-8").read())
    run = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "Run")
    assert run.end_lineno - run.lineno + 1 < 300
    assert oversized(__file__, max_module=10, max_function=2)  # (the check works)


def test_a_cell_is_named_in_the_cells_registry_alone():
    """A cell's name as a string ("lstm", ...) appears in fastrnn/cells/ only: everything else looks cells up in
    the registry (the CLI's choices included)."""
    named = re.compile(r"""["'](lstm|gru|lnlstm)["']""")
    found = [f"{module}:{i}" for module, path in MODULES.items() if not module.startswith("fastrnn.cells")
             for i, line in enumerate(open(path, encoding="utf-8"), 1) if named.search(line)]
    assert found == []
