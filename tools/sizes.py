"""The size limits of issue #26: no module of the package over MAX_MODULE lines, no function over MAX_FUNCTION.

    python -m tools.sizes [PATH ...]      (default: fastrnn/)

Lists every module over MAX_MODULE lines and every function (or method) over MAX_FUNCTION lines, read with ast,
largest first; exits 1 if there is any. A function's lines run from its `def` (decorators excluded) to its last
line, docstring and comments included. Runs from a checkout (tools/ is not part of the installed package);
tests/test_layout.py checks the modules it names with `oversized`.
"""

import ast
import os
import sys

MAX_MODULE = 500
MAX_FUNCTION = 80
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def modules(paths):
    """The .py files under `paths` (files or directories), sorted."""
    found = []
    for path in paths:
        if os.path.isfile(path):
            found.append(path)
            continue
        for directory, _, names in os.walk(path):
            found += [os.path.join(directory, n) for n in names if n.endswith(".py")]
    return sorted(found)


def oversized(path, max_module=MAX_MODULE, max_function=MAX_FUNCTION):
    """[(what, lines)] of the module at `path`: 'path' if it has more than max_module lines, and
    'path:line name' for each function or method of more than max_function lines (nested ones included)."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    rel = os.path.relpath(path, ROOT)
    out = []
    lines = len(source.splitlines())
    if lines > max_module:
        out.append((rel, lines))
    for node in ast.walk(ast.parse(source, path)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > max_function:
                out.append((f"{rel}:{node.lineno} {node.name}", n))
    return out


def main(argv):
    paths = argv or [os.path.join(ROOT, "fastrnn")]
    found = [item for path in modules(paths) for item in oversized(path)]
    for what, n in sorted(found, key=lambda item: -item[1]):
        print(f"{n:5d}  {what}")
    print(f"{len(found)} over the limits (modules {MAX_MODULE} lines, functions {MAX_FUNCTION})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
