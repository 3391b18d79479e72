"""The packages of slide2expr import one way: no package loop, not even through an import
inside a function (docs/architecture.md, "Dependencies point one way")."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "slide2expr"


def package_of(module: str) -> str:
    """``slide2expr.heatmap.run`` -> ``heatmap``; a top-level module is its own package."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_arrows(src: Path = SRC) -> dict[tuple[str, str], set[str]]:
    """(importing package, imported package) -> the modules that import, at any depth."""
    arrows: dict[tuple[str, str], set[str]] = {}
    for path in src.rglob("*.py"):
        module = ".".join(path.relative_to(src.parent).with_suffix("").parts)
        source = package_of(module.removesuffix(".__init__"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (isinstance(node, ast.ImportFrom) and node.module and node.level == 0):
                continue
            if node.module == "slide2expr":
                targets = [f"slide2expr.{alias.name}" for alias in node.names]
            elif node.module.startswith("slide2expr."):
                targets = [node.module]
            else:
                continue
            for target in targets:
                if package_of(target) != source:
                    arrows.setdefault((source, package_of(target)), set()).add(module)
    return arrows


def find_cycle(arrows: dict[tuple[str, str], set[str]]) -> list[str] | None:
    """A loop of packages (first package repeated at the end), or None."""
    graph: dict[str, set[str]] = {}
    for a, b in arrows:
        graph.setdefault(a, set()).add(b)
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_package_graph_has_no_loop():
    arrows = package_arrows()
    assert ("train", "predict") in arrows and ("heatmap", "predict") in arrows  # scanned
    cycle = find_cycle(arrows)
    assert cycle is None, " -> ".join(cycle) + ": " + "; ".join(
        f"{a} -> {b} in {sorted(arrows[(a, b)])}" for a, b in itertools.pairwise(cycle))


def test_the_loop_finder_finds_a_loop():
    arrows = {("train", "predict"): {"m"}, ("predict", "heatmap"): {"m"},
              ("heatmap", "train"): {"m"}, ("commands", "train"): {"m"}}
    assert find_cycle(arrows) in (["heatmap", "train", "predict", "heatmap"],
                                  ["predict", "heatmap", "train", "predict"],
                                  ["train", "predict", "heatmap", "train"])
    del arrows[("heatmap", "train")]
    assert find_cycle(arrows) is None


def test_prediction_never_imports_training_or_drawing():
    """predict/ sits below train/ and heatmap/: it imports neither (nor Lightning)."""
    arrows = package_arrows()
    assert not {b for a, b in arrows if a == "predict"} & {"train", "heatmap", "report",
                                                          "viewer", "commands"}
    for path in (SRC / "predict").rglob("*.py"):
        assert "pytorch_lightning" not in path.read_text(encoding="utf-8"), path


def test_drawing_is_a_library_below_heatmap_report_and_viewer():
    """draw/ is what heatmap, report and viewer draw with; the viewer and report no longer
    reach into heatmap/, and draw/ imports none of them (nor a model)."""
    arrows = package_arrows()
    assert {("heatmap", "draw"), ("report", "draw"), ("viewer", "draw")} <= set(arrows)
    assert ("viewer", "heatmap") not in arrows and ("report", "heatmap") not in arrows
    assert not {b for a, b in arrows if a == "draw"} & {"heatmap", "report", "viewer",
                                                        "predict", "train", "commands"}
