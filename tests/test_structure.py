"""The package's shape: layers that show the data flow, no import circle, engines by registry.

The import graph is read from the source (every `import` and `from … import`, function-level
lazy imports and `if TYPE_CHECKING:` blocks included), so a circle or an upward import that only
closes when some code path runs, or only for the type checker, is found too.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from codescan.engines import protocol, registry, specs

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"codescan": ROOT / "codescan", "codescan.engines": ROOT / "engines", "codescan.train": ROOT / "train"}

# Bottom to top: a module may import its own layer and the layers below it, never one above.
# docs/architecture.md says what each owns; each package's docstring says the same.
LAYERS: list[tuple[str, ...]] = [
    ("codescan.core",),
    ("codescan.model",),
    ("codescan.weights",),
    ("codescan.inputs",),
    ("codescan.evidence",),
    ("codescan.decoding",),
    ("codescan.engines",),
    ("codescan.output",),
    ("codescan.scan",),
    ("codescan.review",),
    ("codescan.cli",),
    ("codescan.train",),
    ("codescan", "codescan.pipeline"),  # the package root (the public API) and the one-release alias
]
# The only imports allowed to point upward, each with its reason.
ALLOWED_UPWARD = {
    # The CLI reaches training through one command module, lazily (a scan never loads it).
    ("codescan.cli.calibrate", "codescan.train.commands"),
    ("codescan.cli.tools", "codescan.train.commands"),
}


def _modules() -> dict[str, Path]:
    out = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = [package, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.stem == "__init__" else name.rsplit(".", 1)[0]
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
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


def _layer(module: str) -> int:
    """The index of the most specific layer holding `module`."""
    best, depth = -1, -1
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > depth:
                best, depth = i, len(prefix)
    if module == "codescan":
        return len(LAYERS) - 1
    return best


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


def test_layers_only_import_downward():
    """Prints the layers (pytest -s) and fails on any upward import not listed in ALLOWED_UPWARD."""
    modules = _modules()
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    unplaced = sorted(m for m in modules if _layer(m) < 0)
    assert unplaced == [], f"modules in no layer: {unplaced}"
    upward = sorted(
        (m, d) for m, deps in graph.items() for d in deps
        if _layer(d) > _layer(m) and (m, d) not in ALLOWED_UPWARD and d not in ("codescan",)
    )
    for i, names in enumerate(LAYERS):
        members = sorted(m for m in modules if _layer(m) == i)
        print(f"layer {i}: {', '.join(names)} ({len(members)} modules)")
    assert upward == [], f"upward imports: {upward}"
    used = {(m, d) for m, deps in graph.items() for d in deps}
    assert ALLOWED_UPWARD <= used, f"allowed but no longer used (drop them): {ALLOWED_UPWARD - used}"
    assert _layer("codescan.inputs.walk") < _layer("codescan.decoding.examine") < _layer("codescan.scan.pipeline")


def test_the_package_root_only_reaches_up_lazily():
    """`import codescan` (which every worker does) loads only the version: Scanner and ScanConfig
    are looked up on first use."""
    out = subprocess.run(
        [sys.executable, "-P", "-c", "import sys, codescan; print(sorted(m for m in sys.modules if m.startswith('codescan')))"],
        capture_output=True, text=True, check=True,
    ).stdout
    assert out.strip() == "['codescan', 'codescan.core', 'codescan.core.version']"


def test_every_python_child_of_the_tests_skips_the_checkout():
    """CI installs the package (not editable) and runs pytest from the checkout: a `python -c` child
    without -P puts the checkout first on sys.path, where codescan has no `engines` or `train`."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.List) or not node.elts:
                continue
            first, flags = node.elts[0], [e.value for e in node.elts if isinstance(e, ast.Constant)]
            if ast.unparse(first) == "sys.executable" and "-c" in flags and "-P" not in flags:
                offenders.append(f"{path.name}:{node.lineno}")
    assert offenders == []


def test_the_wheel_holds_every_module_and_asset(tmp_path):
    """pyproject lists the packages by name: a subpackage missing there is missing from the wheel
    while an editable install still imports it."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    if built.returncode != 0:
        pytest.fail(f"pip wheel failed: {built.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("codescan-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {str(Path(*m.split(".")).with_suffix(".py")) if p.stem != "__init__" else str(Path(*m.split(".")) / "__init__.py")
                for m, p in _modules().items()}
    assert expected - names == set(), sorted(expected - names)
    assets = {p.name for p in (ROOT / "codescan" / "review" / "report_assets").iterdir()}
    assert {n.rsplit("/", 1)[1] for n in names if "/report_assets/" in n} == assets


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
    """scan (Judge), the gate (status_for) and eval agree at the boundary: equal is real."""
    import numpy as np
    from codescan.train.metrics import binary_metrics

    from codescan.core.records import ImageFacts, is_fake, status_for
    from codescan.model.heads import HeadSet, LinearHead
    from codescan.scan.judge import Judge

    head = LinearHead(coef=np.array([1.0, 0.0]), intercept=0.0)
    emb = np.array([[0.5, 0.0], [0.5000001, 0.0], [0.4999999, 0.0]])
    judge = Judge(judged=("linear",), thresholds={"linear": 0.5}, show_all=False)
    facts = ImageFacts(224, 224, "PNG", ((0, 0, 224, 224),))
    scores = HeadSet(heads={"linear": head}).scores(emb)
    statuses = [judge.image("x.png", "00", None, facts, (s,)).status for s in scores]
    assert statuses == ["real", "fake", "real"] == ["fake" if is_fake(s, 0.5) else "real" for s in emb[:, 0]]
    assert statuses == [status_for(s["linear"], 0.5) for s in scores]
    m = binary_metrics(np.array([False, True, False]), emb[:, 0], 0.5)
    assert (m.confusion.tn, m.confusion.tp, m.confusion.fp) == (2, 1, 0)


def test_the_architecture_page_maps_every_module_of_the_tree():
    """docs/architecture.md has one line per module: a new, moved or deleted module updates it."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    mapped = re.findall(r"^- `((?:codescan|engines|train)/[\w/]+\.(?:py|c))`: ", text, re.M)
    assert len(mapped) == len(set(mapped)), "a module is listed twice"
    tree = {
        str(p.relative_to(ROOT))
        for folder in PACKAGES.values()
        for p in [*folder.rglob("*.py"), *folder.rglob("*.c")]
        if p.name != "__init__.py" or p.parent == ROOT / "codescan"
    }
    assert set(mapped) == tree, (sorted(tree - set(mapped)), sorted(set(mapped) - tree))
    for names in LAYERS[:-1]:
        assert all(f"`{n}`" in text for n in names), names  # every layer is described


def test_the_old_pipeline_import_still_works_for_one_release_and_says_so():
    code = (
        "import warnings; warnings.simplefilter('error')\n"
        "try:\n    import codescan.pipeline\nexcept DeprecationWarning as w:\n    print('warned:', w)\n"
        "warnings.simplefilter('ignore'); import importlib, codescan.pipeline as p, codescan\n"
        "print(p.Scanner is codescan.Scanner, p.ScanConfig is codescan.ScanConfig)\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, check=True).stdout
    assert "warned: codescan.pipeline is deprecated" in out and out.strip().endswith("True True")
