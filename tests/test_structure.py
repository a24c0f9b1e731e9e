"""The package's shape: no import circle anywhere, and engines by registry.

The import graph is read from the source (every `import` and `from … import`, function-level
lazy imports included, `if TYPE_CHECKING:` blocks excluded), so a circle that only closes when
some code path runs is found too.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from codescan.engines import protocol, registry, specs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"codescan": ROOT / "codescan", "codescan.engines": ROOT / "engines", "codescan.train": ROOT / "train"}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.glob("*.py"):
            out[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for child in node.orelse:
                    self.visit(child)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            base = node.module or ""
            if node.level:
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rsplit(".", 1)[0]
                base = f"{anchor}.{node.module}" if node.module else anchor
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in found if m in known and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative over a stack)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_anywhere():
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph["codescan.engines.registry"], "the import graph is read"
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]  # the check can fail


def test_protocol_is_a_leaf_and_backends_never_import_the_registry():
    modules = _modules()
    known = set(modules)
    assert _imports("codescan.engines.protocol", modules["codescan.engines.protocol"], known) == set()
    for spec in specs.SPECS:
        deps = _imports(spec.module, modules[spec.module], known)
        assert "codescan.engines.registry" not in deps, spec.module


def test_every_engine_is_one_registry_entry():
    assert specs.ENGINE_NAMES[1:] == tuple(s.name for s in specs.SPECS)
    assert set(protocol.EngineName.__args__) == set(specs.ENGINE_NAMES)  # type: ignore[attr-defined]
    for spec in specs.SPECS:
        assert set(spec.auto_rank) == set(spec.precisions) and set(spec.gated) < set(spec.precisions)
        assert set(spec.precisions) <= set(protocol.PRECISIONS)
        assert callable(importlib.import_module(spec.module).create), spec.module
    ranks = [r for s in specs.SPECS for r in s.auto_rank.values()]
    assert sorted(ranks) == list(range(len(ranks)))
    assert registry.AUTO_ORDER[0] == ("tensorrt", "fp16") and registry.AUTO_ORDER[-1] == ("torch", "fp32")


def test_one_verdict_rule_at_the_threshold_everywhere():
    """scan (Judge, HeadSet.judge, and so the gate) and eval agree at the boundary: equal is real."""
    import numpy as np

    from codescan.heads import HeadSet, LinearHead
    from codescan.records import is_fake
    from codescan.train.metrics import binary_metrics

    head = LinearHead(coef=np.array([1.0, 0.0]), intercept=0.0)
    emb = np.array([[0.5, 0.0], [0.5000001, 0.0], [0.4999999, 0.0]])
    statuses = [v.status for v in HeadSet(heads={"linear": head}).judge("linear", emb, threshold=0.5)]
    assert statuses == ["real", "fake", "real"] == ["fake" if is_fake(s, 0.5) else "real" for s in emb[:, 0]]
    m = binary_metrics(np.array([False, True, False]), emb[:, 0], 0.5)
    assert (m.confusion.tn, m.confusion.tp, m.confusion.fp) == (2, 1, 0)
