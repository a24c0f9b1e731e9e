"""The README's screenshot of a report: 24 generated images scanned, reported, shot in headless Chromium.

    CODESCAN_HOME=... python benchmarks/report_screenshot.py [docs/report.png]

Generated images only (never the shared corpus); with the test store's random weights the
verdicts are arbitrary, which is fine for showing the page. The PNG is palette-quantised to stay
small in the repository.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import textured_image  # noqa: E402 - the tests' generated images, shared on purpose

CODESCAN = str(Path(sys.executable).parent / "codescan")


def main() -> None:
    target = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs" / "report.png").resolve()
    if shutil.which("chromium") is None:
        sys.exit("needs chromium on PATH (apt-get install -y --no-install-recommends chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        photos = work / "photos"
        photos.mkdir()
        rng = np.random.default_rng(2026)
        for i in range(24):
            width, height = int(rng.integers(240, 900)), int(rng.integers(240, 700))
            textured_image(rng, width, height).save(photos / f"photo_{i:02d}.jpg", quality=90)
        subprocess.run([CODESCAN, "scan", "photos", "-q", "-o", "verdicts.jsonl"], cwd=work)
        subprocess.run([CODESCAN, "report", "verdicts.jsonl", "-o", "report.html", "-q"], cwd=work, check=True)
        shot = work / "shot.png"
        subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000",
             "--window-size=1200,800", f"--screenshot={shot}", (work / "report.html").as_uri()],
            capture_output=True, check=True, timeout=120,
        )
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(shot).convert("RGB").quantize(colors=64).save(target, optimize=True)
    print(f"{target}: {target.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
