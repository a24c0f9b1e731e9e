"""benchmarks/gpu_check.sh, end to end on the CPU (--dry-run), as it will run on a lent GPU machine.

The script is run once per lease, minutes long, with no second chance to fix it there; so here
the prepare step builds its folder from a tiny labelled corpus made by the test (no shared corpus,
no network), the check runs through the shell wrapper exactly as on the machine, and the report
must name every step with a result or a recorded skip.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import textured_image

REPO = Path(__file__).resolve().parents[1]
STEPS = ["install", "environment", "parity", "throughput", "end_to_end", "train"]
sys.path.insert(0, str(REPO / "benchmarks"))


def make_corpus(folder: Path) -> Path:
    """Twelve images in the MANIFEST.csv layout, real and fake alternating, some under 224 px (padded)."""
    rng = np.random.default_rng(7)
    rows = []
    for i in range(12):
        label = ("real", "fake")[i % 2]
        rel = f"{label}/g{i % 3}/{i:02d}.{('jpg', 'png')[i % 2]}"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        textured_image(rng, int(rng.integers(120, 400)), int(rng.integers(120, 400))).save(folder / rel)
        rows.append({"path": rel, "label": label, "generator_or_source": f"g{i % 3}"})
    with open(folder / "MANIFEST.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "generator_or_source"])
        writer.writeheader()
        writer.writerows(rows)
    return folder


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    corpus = make_corpus(tmp_path_factory.mktemp("corpus"))
    out = tmp_path_factory.mktemp("gpucheck") / "prepared"
    subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_prepare.py"), "--corpus", str(corpus), "--out", str(out),
         "--crops", "6", "--no-wheel", "--no-extension"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return out


def run_check(out: Path, prepared: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out), "--prepared", str(prepared), *extra],
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done, json.loads((out / "gpu_check.json").read_text())


def files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_size for p in folder.rglob("*") if p.is_file()}


def test_dry_run_reports_every_step(prepared, tmp_path):
    meta = json.loads((prepared / "prepared.json").read_text())
    assert meta["weights"].startswith("RANDOM STAND-IN") and meta["crops"]["count"] == 6
    before = files(prepared)

    done, report = run_check(tmp_path / "out", prepared, "--count", "64")  # as #18 asks of CI
    assert done.returncode == 0, done.stdout + done.stderr
    assert files(prepared) == before  # the carried folder stays as prepared (and under the carry limit)
    assert list(report["steps"]) == STEPS and report["finished_utc"] is not None
    for name, entry in report["steps"].items():
        assert entry["status"] in ("ok", "skipped"), (name, entry)
    steps = {name: entry["result"] for name, entry in report["steps"].items()}
    assert "this tree" in report["steps"]["install"]["reason"]  # the venv's editable codescan is this checkout
    assert steps["environment"]["tensorrt"].startswith(("skipped:", "importable"))

    parity = steps["parity"]
    assert parity["images"] == 6 and parity["head_scores_here_vs_prepared_max_abs_diff"] == 0.0
    for precision in ("fp16", "fp32"):
        assert set(parity[precision]["heads"]) == set(meta["reference"]["thresholds"])
    # Same timm model, same bytes, both fp32 on the CPU: the CUDA engine's code must match the reference.
    assert parity["fp32"]["cosine_min"] >= 0.99999 and all(h["disagreements"] == 0 for h in parity["fp32"]["heads"].values())
    # Six identical crops cannot show 99% agreement at 95% confidence: the gate's sample rule fails it.
    assert parity["gate"]["fp32"] == "fail" and all("at least 299 images" in r for r in parity["fp32"]["reasons"])

    runs = steps["throughput"]["runs"]
    assert [(r["batch"], r["cuda_graphs"]) for r in runs] == [(1, False), (1, True), (2, False), (2, True)]
    assert all(r["images_per_s_best"] > 0 and r["cuda_graphs_active"] is False for r in runs)  # no graphs on the CPU

    e2e = steps["end_to_end"]
    assert e2e["scan_summary"]["files"] == 64 and e2e["scan_summary"]["errors"] == 0
    assert e2e["scan_header"]["weights"]["sha256"] == meta["reference"]["digest"]
    assert e2e["files_per_s"] > 0 and e2e["host_pss_peak_mib"] > 0
    assert "end_to_end   ok" in done.stdout and (tmp_path / "out" / "gpu_check.log").read_text() == done.stdout

    train = steps["train"]  # stopped after its first epoch, resumed to the end, compiled where it can, gated
    assert train["steps"] == 4 and train["amp"] == "off" and train["first_run_s"] > 0 and train["resumed_run_s"] > 0
    assert train["compile"] and "no TensorRT engine built" in train["compile"][0]
    assert [(g["engine"], g["precision"]) for g in train["gate"]] == [("onnxruntime", "int8")]


def test_failed_steps_are_recorded_and_exit_zero(tmp_path):
    """Without the prepared folder every data step fails, says why, and the script still exits 0."""
    done, report = run_check(tmp_path / "out", tmp_path / "missing")
    assert done.returncode == 0, done.stdout + done.stderr
    statuses = [entry["status"] for entry in report["steps"].values()]
    assert statuses == ["skipped", "ok", "failed", "failed", "failed", "failed"]  # STEPS' order
    assert "prepared.json" in report["steps"]["parity"]["error"] and "unreadable" in report["weights"]


def test_symlinked_layout_imports_the_engines(tmp_path):
    """The fallback install where pip cannot build: codescan.engines must come from this tree's engines/."""
    from gpu_check import build_shim

    build_shim(REPO, tmp_path / "shim")
    probe = "import codescan.engines.cuda_engine as m, codescan.train.config as t; print(m.__file__, t.__file__)"
    found = subprocess.run(
        [sys.executable, "-P", "-c", probe],
        env={**os.environ, "PYTHONPATH": str(tmp_path / "shim")},
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    engines, train = found.stdout.split()
    assert Path(engines) == tmp_path / "shim" / "codescan" / "engines" / "cuda_engine.py"
    assert Path(engines).resolve() == REPO / "engines" / "cuda_engine.py"
    assert Path(train).resolve() == REPO / "train" / "config.py"


def test_an_install_of_this_tree_is_recognised_wherever_its_venv_lives(tmp_path):
    """A venv outside the checkout with this tree installed (not editable) holds this tree's code:
    the install step must not replace it (the suite passes wherever the package is installed)."""
    import shutil

    from gpu_check import imports_this_tree, package_dirs

    site = tmp_path / "elsewhere" / "site-packages"
    for package, folder in package_dirs(REPO).items():
        target = site.joinpath(*package.split("."))
        for source in (REPO / folder).rglob("*.py"):
            (target / source.relative_to(REPO / folder)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / source.relative_to(REPO / folder))
    engine = site / "codescan" / "engines" / "cuda_engine.py"
    assert imports_this_tree(engine, REPO)
    assert imports_this_tree(REPO / "engines" / "cuda_engine.py", REPO)  # editable
    (site / "codescan" / "inputs" / "walk.py").write_text("# another version\n")
    assert not imports_this_tree(engine, REPO)
