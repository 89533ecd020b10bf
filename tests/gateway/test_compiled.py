"""What mypyc (scripts/compile_gateway.py) needs of the gateway modules it compiles, beyond
what mypy checks."""

from __future__ import annotations

import ast
from pathlib import Path

from scripts.compile_gateway import ROOT, SOURCES


def _handlers(fn: ast.AST) -> list[ast.ExceptHandler]:
    """The except clauses of `fn` itself, not of the functions defined inside it."""
    found: list[ast.ExceptHandler] = []
    todo = list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.ExceptHandler):
            found.append(node)
        todo.extend(ast.iter_child_nodes(node))
    return found


def test_an_except_name_is_bound_to_one_type_per_function() -> None:
    # A compiled function gives an `except ... as e` name the type of its first clause; a
    # later clause binding `e` to another type raises TypeError when it catches. (It did: a
    # KeyError from a malformed compact message became "WireError object expected" and cut
    # the caller off instead of answering it.)
    clashes = []
    for source in SOURCES:
        tree = ast.parse(Path(ROOT, source).read_text())
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            types: dict[str, set[str]] = {}
            for h in _handlers(fn):
                if h.name:
                    types.setdefault(h.name, set()).add(ast.unparse(h.type) if h.type else "")
            clashes += [f"{source}:{fn.lineno} {fn.name}: {name} as {sorted(t)}"
                        for name, t in types.items() if len(t) > 1]
    assert not clashes
