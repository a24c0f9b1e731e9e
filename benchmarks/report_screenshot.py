"""The docs' screenshots of a report: generated pictures scanned, reported, shot in Chromium.

    CODESCAN_HOME=... python benchmarks/report_screenshot.py [OUT_DIR]   # default: docs/

Writes OUT_DIR/report-gallery.png (the gallery: thumbnails with their judged box, verdict
colours) and OUT_DIR/report-table.png (the header, histogram and table, sorted by path). Every picture is
drawn here (skies, hills, a sun: numpy, no corpus image), plus a PNG carrying AUTOMATIC1111
parameters (evidence), a truncated JPEG (an error) and a text file (skipped). The scan uses the
weights in CODESCAN_HOME (bundle `code`); with the tests' random stand-in weights the verdicts
mean nothing, which is fine for showing the page. Chromium is Debian's `chromium`, driven by
Playwright (the test extra) through executable_path: no browser is downloaded. The PNGs are
palette-quantised to stay small in the repository.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

REPO = Path(__file__).resolve().parents[1]
CODESCAN = str(Path(sys.executable).parent / "codescan")
A1111 = ("a lighthouse on a cliff at dusk, oil painting\nNegative prompt: blurry\n"
         "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7, Seed: 1234, Size: 768x512, Model: sd_xl_base_1.0")


def landscape(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A sky in a random hue, a sun, three ridges of hills, a little grain: a picture anyone may show."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    top, bottom = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    sky = (top[None, None, :] * (1 - y / height)[..., None] + bottom[None, None, :] * (y / height)[..., None]) * 255
    image = sky.copy()
    cx, cy, r = rng.uniform(0.15, 0.85) * width, rng.uniform(0.12, 0.4) * height, rng.uniform(0.05, 0.11) * min(width, height)
    glow = np.clip(1.6 - np.hypot(x - cx, y - cy) / r, 0, 1)[..., None]
    image = image * (1 - glow) + np.array([255, 236, 170]) * glow
    base = rng.uniform(0, 1, 3)
    for layer, level in enumerate((0.45, 0.6, 0.75)):
        phase, freq = rng.uniform(0, 6.3, 3), rng.uniform(1, 5, 3)
        ridge = level * height + sum(np.sin(x[0] / width * f * np.pi + p) * height * 0.05 / (k + 1)
                                     for k, (p, f) in enumerate(zip(phase, freq)))
        shade = (base * (0.75 - 0.2 * layer) + 0.1 * layer) * 255
        image = np.where((y > ridge[None, :])[..., None], shade * (0.85 + 0.15 * (y / height))[..., None], image)
    image += rng.normal(0, 4, image.shape)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


def pictures(folder: Path) -> None:
    rng = np.random.default_rng(2026)
    folder.mkdir()
    for i in range(22):
        width, height = int(rng.integers(320, 1000)), int(rng.integers(300, 760))
        landscape(rng, width, height).save(folder / f"photo_{i:02d}.jpg", quality=88)
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", A1111)
    landscape(rng, 768, 512).save(folder / "lighthouse.png", pnginfo=info)
    good = (folder / "photo_00.jpg").read_bytes()
    (folder / "photo_broken.jpg").write_bytes(good[: len(good) // 3])
    (folder / "notes.txt").write_text("not a picture\n")


def shoot(page_file: Path, target_dir: Path) -> list[Path]:
    from playwright.sync_api import sync_playwright

    shots = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox", "--disable-gpu"])
        shots_wanted = (("report-gallery.png", "#view=gallery", 1040), ("report-table.png", "#sort=path", 900))
        for name, fragment, height in shots_wanted:
            page = browser.new_page(viewport={"width": 1280, "height": height}, color_scheme="light")  # a fresh load each
            page.goto(page_file.as_uri() + fragment)
            page.wait_for_selector("body[data-shown]", state="attached")
            if "gallery" in fragment:  # from the filters down (fakes first, then reals), the first tile selected
                page.evaluate("window.scrollTo(0, document.getElementById('filters').offsetTop - 8)")
                page.keyboard.press("j")
            # (the table: from the top, sorted by path, so the file with evidence and the skipped one come first)
            for _ in range(100):
                if page.evaluate("[...document.images].every(i => i.complete)"):
                    break
                page.wait_for_timeout(50)
            shot = target_dir / name
            page.screenshot(path=str(shot))
            shots.append(shot)
        browser.close()
    return shots


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else REPO / "docs").resolve()
    if shutil.which("chromium") is None:
        sys.exit("needs chromium on PATH (apt-get install -y --no-install-recommends chromium)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pictures(work / "photos")
        scan = subprocess.run([CODESCAN, "scan", "photos", "-q", "-o", "verdicts.jsonl"], cwd=work, capture_output=True)
        if scan.returncode not in (0, 1, 2) or not (work / "verdicts.jsonl").exists():
            sys.exit(f"scan failed: {scan.stderr.decode()} (CODESCAN_HOME={os.environ.get('CODESCAN_HOME')} needs weights)")
        subprocess.run([CODESCAN, "report", "verdicts.jsonl", "-o", "report.html", "-q"], cwd=work, check=True)
        out.mkdir(parents=True, exist_ok=True)
        for shot in shoot(work / "report.html", work):
            target = out / shot.name
            Image.open(shot).convert("RGB").quantize(colors=256, dither=Image.Dither.NONE).save(target, optimize=True)
            print(f"{target}: {target.stat().st_size // 1024} KiB")


if __name__ == "__main__":
    main()
