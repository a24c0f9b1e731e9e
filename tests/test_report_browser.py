"""The review page driven like a person drives it: keys, filters, the gallery, in a real Chromium.

Playwright for Python drives Debian's `chromium` (found on PATH, given as executable_path: no
browser is ever downloaded). The verdicts are written by hand: 960 records over seven real small
images (so thumbnails are made once each), with errors, skips, evidence, a hostile file name
and a threshold with many digits, all as paths relative to the folder the "scan" ran in, the
report made from another folder with --root.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_cli, textured_image

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
NAMES = [f"{k}.jpg" for k in range(6)] + [HOSTILE]
THRESHOLD = -0.13326283361426672
RECORDS = 960


def synthetic_verdicts(root: Path, count: int = RECORDS) -> list[dict]:
    """imgs/ with the seven images, and v.jsonl of `count` records naming them by relative path."""
    (root / "imgs").mkdir(parents=True)
    rng = np.random.default_rng(3)
    sizes = {}
    for k, name in enumerate(NAMES):
        width, height = 200 + 60 * k, 360 - 20 * k
        textured_image(rng, width, height).save(root / "imgs" / name)
        sizes[name] = (width, height, hashlib.sha256((root / "imgs" / name).read_bytes()).hexdigest())
    header = {"type": "header", "schema_version": 3, "codescan": "0.1.0", "weights": {"name": "code", "sha256": "ab" * 32},
              "engine": "onnxruntime", "device": "cpu", "precision": "fp32", "head": "linear",
              "thresholds": {"linear": THRESHOLD}, "evidence": "metadata"}
    scores = random.Random(0)
    records = []
    for i in range(count):
        name = NAMES[i % len(NAMES)]
        width, height, sha = sizes[name]
        if i % 50 == 7:
            records.append({"type": "result", "path": f"imgs/broken_{i}.jpg", "status": "error", "error_code": "truncated",
                            "error": "image file is truncated"})
            continue
        if i % 97 == 5:
            records.append({"type": "result", "path": f"imgs/notes_{i}.txt", "status": "skipped", "error_code": "not_an_image"})
            continue
        score = scores.gauss(0, 1.5)
        status = "fake" if score > THRESHOLD else "real"
        evidence = [{"kind": "c2pa", "generator": "DALL-E 3", "conclusive": True}] if i % 40 == 3 else []
        side = min(width, height) // 2
        x0, y0 = (width - side) // 2, (height - side) // 3
        records.append({"type": "result", "path": f"imgs/{name}", "status": status, "score": score, "threshold": THRESHOLD,
                        "head": "linear", "width": width, "height": height, "format": "JPEG", "crop": [x0, y0, x0 + side, y0 + side],
                        "sha256": sha, "evidence": evidence, "combined": "fake" if evidence or status == "fake" else "real"})
    lines = [header, *records, {"type": "summary", "files": count, "seconds": 3.2}]
    (root / "v.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return records


def launch(playwright):
    executable = shutil.which("chromium")
    require(executable is not None, "chromium", "apt-get install -y --no-install-recommends chromium")
    return playwright.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])


@pytest.fixture(scope="module")
def review(tmp_path_factory) -> tuple[Path, list[dict]]:
    """review.html of the synthetic scan, made from another folder with --root."""
    scan = tmp_path_factory.mktemp("scan")
    records = synthetic_verdicts(scan)
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    env = {"CODESCAN_HOME": str(tmp_path_factory.mktemp("home"))}
    done = run_cli("report", str(scan / "v.jsonl"), "-o", "review.html", "--root", str(scan), env=env, cwd=elsewhere)
    assert done.returncode == 0, done.stderr.decode()
    assert b"not found" not in done.stderr and b"960 records, 930 thumbnails" in done.stderr
    return elsewhere / "review.html", records


def until(page, condition: str, seconds: float = 10.0) -> None:
    """Poll `condition` (page.wait_for_function would compile it with eval, which the page's CSP forbids)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(condition):
        assert time.monotonic() < deadline, f"still false after {seconds} s: {condition}"
        page.wait_for_timeout(50)


def visible(page, selector: str) -> list[str]:
    return page.eval_on_selector_all(selector, "nodes => nodes.map(n => n.textContent)")


def test_keys_filters_and_gallery(review):
    require(importlib.util.find_spec("playwright") is not None, "playwright", "pip install -e '.[test]' (never `playwright install`)")
    from playwright import sync_api
    page_file, records = review
    judged = [r for r in records if r["status"] in ("real", "fake")]
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type in ("error", "warning") else None)
        page.on("request", lambda req: problems.append(req.url) if not req.url.startswith("file://") else None)
        page.goto(page_file.as_uri())
        page.wait_for_selector("body[data-shown]", state="attached")
        shown = lambda: int(page.get_attribute("body", "data-shown"))  # noqa: E731
        selected = lambda: int(page.get_attribute("body", "data-selected"))  # noqa: E731

        # The table: all records, empty columns (no record has per-head scores) left out.
        assert shown() == RECORDS and page.is_visible("#results") and not page.is_visible("#gallery")
        assert visible(page, "#heads th") == ["image", "path", "status", "score", "combined", "evidence", "error"]
        assert page.locator("#rows tr").count() == 100
        assert "1–100 of 960 shown" in page.text_content("#pageinfo")

        # The histogram: a rounded threshold, counts on an axis and on every bar, no label over another.
        assert visible(page, "svg.histogram text.threshold-label") == ["threshold -0.133"]
        assert sum(int(c) for c in page.eval_on_selector_all("rect.bar", "bs => bs.map(b => b.dataset.count)")) == len(judged)
        counts = [int(t) for t in visible(page, "svg.histogram text.count-axis")]
        assert counts[0] == 0 and counts[-1] >= max(int(b) for b in page.eval_on_selector_all("rect.bar", "bs => bs.map(b => b.dataset.count)"))
        overlaps = page.eval_on_selector_all("svg.histogram text", """texts => {
            const boxes = texts.map(t => [t.textContent, t.getBoundingClientRect()]);
            const out = [];
            for (let i = 0; i < boxes.length; i++) for (let j = i + 1; j < boxes.length; j++) {
              const [a, p] = boxes[i], [b, q] = boxes[j];
              if (p.left < q.right - 0.5 && q.left < p.right - 0.5 && p.top < q.bottom - 0.5 && q.top < p.bottom - 0.5) out.push(a + " / " + b);
            }
            return out;
          }""")
        assert overlaps == []

        # Keys in the table: j j j k moves the selection, Enter opens the record, Esc closes it, n/p turn pages.
        rows = page.eval_on_selector_all("#rows tr", "trs => trs.map(tr => Number(tr.dataset.index))")
        for key in "jjjk":
            page.keyboard.press(key)
        assert selected() == rows[1] and page.get_attribute("#rows tr.sel", "data-index") == str(rows[1])
        page.keyboard.press("Enter")
        assert page.is_visible("#detail") and records[rows[1]]["path"] in page.text_content("#detail-body")
        page.keyboard.press("Escape")
        assert not page.is_visible("#detail")
        page.keyboard.press("n")
        assert "101–200 of 960" in page.text_content("#pageinfo") and "page=2" in page.url
        page.keyboard.press("p")
        assert "1–100 of 960" in page.text_content("#pageinfo")

        # "/" focuses the search; typing filters (debounced); a hostile name is text, never an element.
        page.keyboard.press("/")
        page.keyboard.type("<img")
        page.wait_for_selector("body:not([data-shown='960'])", state="attached")
        assert shown() == sum(HOSTILE in r["path"] for r in records)
        assert all(p == f"imgs/{HOSTILE}" for p in visible(page, "#rows td.c-path"))
        assert page.locator("img[src=x], [onerror]").count() == 0
        page.keyboard.press("Escape")  # in the search box: clears it, and leaves it
        assert shown() == RECORDS and page.input_value("#q") == "" and "q=" not in page.url

        # The status filter, then "g": the gallery of the same records, with status colours and crop boxes.
        page.select_option("#status", "fake")
        fakes = [i for i, r in enumerate(records) if r["status"] == "fake"]
        assert shown() == len(fakes) and set(visible(page, "#rows td.c-status")) == {"fake"}
        page.keyboard.press("g")
        assert page.is_visible("#gallery") and not page.is_visible("#results") and "view=gallery" in page.url
        assert page.text_content("#view") == "table" and page.get_attribute("body", "data-view") == "gallery"
        tiles = page.locator("#gallery figure.tile")
        assert tiles.count() == 100 and page.locator("#gallery figure.tile.st-fake").count() == 100
        assert all(t.startswith("fake ") for t in visible(page, "#gallery .badge"))
        until(page, "[...document.querySelectorAll('#gallery img')].slice(0, 5).every(i => i.complete && i.naturalWidth > 0)")
        first = tiles.nth(0)
        picture, crop = first.locator("img").bounding_box(), first.locator(".crop").bounding_box()
        assert picture["width"] >= 180  # a large thumbnail, not the table's 96 px
        assert picture["x"] - 1 <= crop["x"] and crop["x"] + crop["width"] <= picture["x"] + picture["width"] + 1
        assert picture["y"] - 1 <= crop["y"] and crop["y"] + crop["height"] <= picture["y"] + picture["height"] + 1
        record = records[int(first.get_attribute("data-index"))]
        c = record["crop"]
        assert crop["width"] == pytest.approx(picture["width"] * (c[2] - c[0]) / record["width"], abs=3)

        # Keys in the gallery: j moves one tile, ↓ one row (as many tiles as fit across), Enter opens, n pages.
        tile_order = page.eval_on_selector_all("#gallery figure", "fs => fs.map(f => Number(f.dataset.index))")
        across = page.evaluate("(() => { const t = [...document.querySelectorAll('#gallery figure')];"
                               " return t.filter(f => f.offsetTop === t[0].offsetTop).length; })()")
        assert across >= 3
        page.keyboard.press("j")
        assert selected() == tile_order[0]
        page.keyboard.press("ArrowDown")
        assert selected() == tile_order[across]
        page.keyboard.press("k")
        assert selected() == tile_order[across - 1]
        page.keyboard.press("Enter")
        assert page.is_visible("#detail") and records[tile_order[across - 1]]["path"] in page.text_content("#detail-body")
        page.keyboard.press("Escape")
        page.keyboard.press("n")
        assert f"101–200 of {len(fakes)}" in page.text_content("#pageinfo") and page.locator("#gallery figure").count() == 100

        # Errors in the gallery: their message where the picture would be; the button back to the table.
        page.select_option("#status", "error")
        errors = [r for r in records if r["status"] == "error"]
        assert page.locator("#gallery figure.tile.st-error").count() == len(errors) == shown()
        assert set(visible(page, "#gallery .nothumb")) == {"image file is truncated"}
        page.click("#view")
        assert page.is_visible("#results") and not page.is_visible("#gallery") and "view=gallery" not in page.url
        assert set(visible(page, "#rows td.c-error")) == {"truncated: image file is truncated"}

        # A fragment opens straight into the gallery with its filters.
        page.goto(page_file.as_uri() + "#view=gallery&status=real&sort=score-asc")
        page.wait_for_selector("body[data-shown]", state="attached")
        assert page.is_visible("#gallery") and page.locator("#gallery figure.st-real").count() == 100
        assert float(visible(page, "#gallery .badge")[0].split()[1]) == pytest.approx(min(r["score"] for r in judged), abs=1e-3)
        browser.close()
    assert problems == []
