"""The installed package, not the source tree, is what the suite exercises (CI installs a wheel)."""

import importlib
import os
from pathlib import Path

import pytest
from conftest import run_cli

SOURCE = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    "module",
    ["codescan", "codescan.engines", "codescan.engines.registry", "codescan.engines.onnx_engine", "codescan.engines.torch_engine", "codescan.train"],
)
def test_every_subpackage_is_installed(module):
    mod = importlib.import_module(module)
    if os.environ.get("CI"):
        # a wheel that misses a package-dir mapping would leave the module unimportable or
        # make Python find it in the checkout instead of site-packages
        assert "site-packages" in Path(mod.__file__).parts, mod.__file__


def test_scan_from_outside_the_source_tree(home, tmp_path):
    from PIL import Image

    Image.new("RGB", (300, 300), (120, 30, 200)).save(tmp_path / "a.png")
    p = run_cli("scan", "a.png", "-q", cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr
    assert b'"path": "a.png"' in p.stdout
    assert not str(tmp_path).startswith(str(SOURCE))


def test_onnx_path_imports_no_torch_and_no_reference_stacks(home):
    # transformers and scikit-learn are test-only extras and torch is optional: the default
    # CPU path must start without any of them (start-up time is part of every scan).
    code = (
        "import sys, codescan.pipeline as p; s = p.Scanner(engine='onnxruntime'); list(s.scan([]));"
        "bad = [m for m in ('torch', 'timm', 'transformers', 'sklearn', 'codescan.train') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True)  # -P: never import the checkout
    assert r.returncode == 0, r.stdout + r.stderr


def test_workers_never_import_a_codescan_folder_from_the_cwd(home, tmp_path):
    """A scan run inside a folder holding another `codescan/` must still decode with the installed code."""
    from PIL import Image

    decoy = tmp_path / "codescan"
    decoy.mkdir()
    (decoy / "__init__.py").write_text("raise SystemExit('decoy codescan imported')\n")
    Image.new("RGB", (240, 240), (10, 200, 30)).save(tmp_path / "a.png")
    p = run_cli("scan", "a.png", "-q", cwd=tmp_path)
    assert p.returncode in (0, 1), p.stderr
    assert b'"status": "error"' not in p.stdout and b"decoy" not in p.stderr
