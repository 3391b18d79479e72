"""Small functions with one job: no function or method in src/ runs over 60 lines.

A function's length is counted from its ``def`` line to its last line, docstring included
(decorators not). ``ALLOWED`` holds the functions that stay long, each with its reason.
Functions not yet split are listed in ``NOT_YET_SPLIT`` with their length today: the test
fails when one grows, when a new long function appears, and when a listed one has been
split (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slide2expr"
MAX_LINES = 60

#: ``module path (relative to src/slide2expr) :: qualified name`` -> (its length, why).
ALLOWED: dict[str, tuple[int, str]] = {
    "commands/heatmap.py :: heatmap": (84, "typer declares each of its 27 options as a "
                                       "parameter: the signature alone is 57 lines; the body "
                                       "(26 lines) calls _options and _draw"),
}

#: ``module path (relative to src/slide2expr) :: qualified name`` -> its length today.
NOT_YET_SPLIT: dict[str, int] = {
}


def long_functions(root: Path = SRC, limit: int = MAX_LINES) -> dict[str, int]:
    """``{"path :: Qual.name": lines}`` of every function over ``limit`` lines under
    ``root``."""
    found: dict[str, int] = {}
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name, node in _functions(tree):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found[f"{path.relative_to(root).as_posix()} :: {name}"] = lines
    return found


def _functions(tree: ast.AST, prefix: str = ""):
    """``(qualified name, node)`` of every function, nested ones and methods included."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{node.name}"
            if not isinstance(node, ast.ClassDef):
                yield name, node
            yield from _functions(node, f"{name}.")
        else:
            yield from _functions(node, prefix)


def test_no_function_over_60_lines():
    found = {k: v for k, v in long_functions().items()
             if k not in ALLOWED or v > ALLOWED[k][0]}
    new = {k: v for k, v in found.items() if k not in NOT_YET_SPLIT}
    grown = {k: (NOT_YET_SPLIT[k], v) for k, v in found.items()
             if k in NOT_YET_SPLIT and v > NOT_YET_SPLIT[k]}
    split = sorted(set(NOT_YET_SPLIT) - set(found))
    assert not new, f"functions over {MAX_LINES} lines (split them into functions with one job): {new}"
    assert not grown, f"listed long functions grew (listed, now): {grown}"
    assert not split, f"now under {MAX_LINES} lines: remove them from NOT_YET_SPLIT: {split}"


def test_the_count_sees_a_long_function(tmp_path):
    """The walk finds a long method inside a class and a nested function, and nothing short."""
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_LINES))
    (tmp_path / "m.py").write_text(
        f"class A:\n    def long(self):\n{body}\n\n    def short(self):\n        return 1\n\n"
        f"def outer():\n    def inner():\n{body.replace('        ', '        ')}\n    return inner\n")
    found = long_functions(tmp_path)
    assert found == {"m.py :: A.long": MAX_LINES + 1, "m.py :: outer.inner": MAX_LINES + 1,
                     "m.py :: outer": MAX_LINES + 3}
