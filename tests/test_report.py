"""`codescan report`: verdicts of real scans drawn in headless Chromium and checked in the DOM."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from conftest import require, run_cli, textured_image

from codescan.review.report import data_script

HOSTILE = "<img src=x onerror=alert(1)>.jpg"
SCRIPT_MEMBER = "a</script>b.jpg"
LINE_SEP = "line\u2028sep.jpg"


def report_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return run_cli("report", *args, cwd=cwd)


@pytest.fixture(autouse=True)
def private_home(tmp_path, monkeypatch) -> Path:
    """Each test's reports cache their thumbnails in a CODESCAN_HOME of its own (not the user's, not the scan's)."""
    monkeypatch.setenv("CODESCAN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class Dom(HTMLParser):
    """The dumped DOM: every element's tag and attributes, the table's columns and the cells of its rows by column."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.elements: list[tuple[str, dict[str, str | None]]] = []
        self.rows: list[dict[str, str]] = []
        self.heads: list[str] = []
        self.ids: dict[str, str] = {}
        self._cell: tuple[str, list[str]] | None = None
        self._id: str | None = None
        self.body: dict[str, str | None] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.elements.append((tag, attributes))
        if tag == "body":
            self.body = attributes
        if tag == "tr" and "data-index" in attributes:
            self.rows.append({})
        column = next((c[2:] for c in (attributes.get("class") or "").split() if c.startswith("c-")), None)
        if tag == "th" and column:
            self.heads.append(column)
        if tag == "td" and self.rows and column:
            self._cell = (column, [])
        if attributes.get("id") in ("counts", "pageinfo"):
            self._id = attributes["id"]
            self.ids[self._id] = ""

    def handle_endtag(self, tag):
        if tag == "td" and self._cell is not None:
            self.rows[-1][self._cell[0]] = "".join(self._cell[1])
            self._cell = None
        if tag in ("p", "span"):
            self._id = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell[1].append(data)
        if self._id:
            self.ids[self._id] += data

    def column(self, name: str) -> list[str]:
        """The cells of one column (image, path, status, score, heads, combined, evidence, error); absent when empty."""
        return [r[name] for r in self.rows]


def chromium(page: Path, fragment: str = "", screenshot: Path | None = None) -> Dom:
    require(shutil.which("chromium") is not None, "chromium", "apt-get install -y --no-install-recommends chromium")
    base = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--virtual-time-budget=5000"]
    url = page.resolve().as_uri() + fragment
    if screenshot is not None:
        subprocess.run([*base, f"--screenshot={screenshot}", "--window-size=1280,900", url], capture_output=True, timeout=60)
        assert screenshot.stat().st_size > 10_000
    done = subprocess.run([*base, "--dump-dom", url], capture_output=True, timeout=60, check=True)
    dom = Dom(done.stdout.decode())
    assert "data-render-ms" in dom.body, "report.js did not run (blocked by the CSP?)"
    return dom


@pytest.fixture(scope="module")
def scanned(tmp_path_factory, session_home) -> Path:
    """A folder scanned once: images, hostile names, a tar member, a broken file; then one file
    deleted and one changed, as happens between a scan and its review."""
    root = tmp_path_factory.mktemp("report")
    imgs = root / "imgs"
    imgs.mkdir()
    rng = np.random.default_rng(7)
    for i, name in enumerate(["0.jpg", "1.jpg", "2.png", "3.jpg", "gone.jpg", "edited.jpg", HOSTILE, LINE_SEP]):
        textured_image(rng, 240 + 60 * i, 300).save(imgs / name)
    (imgs / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    member = io.BytesIO()
    textured_image(rng, 320, 256).save(member, "JPEG")
    with tarfile.open(imgs / "set.tar", "w") as tar:
        info = tarfile.TarInfo(SCRIPT_MEMBER)
        info.size = len(member.getvalue())
        tar.addfile(info, io.BytesIO(member.getvalue()))
    env = {"CODESCAN_HOME": str(session_home)}
    for target, report in (("v.jsonl", ["--report", "scan-report.html"]), ("v.json", []), ("v.parquet", [])):
        done = run_cli("scan", "imgs", "--archives", "-q", "-o", target, *report, env=env, cwd=root)
        assert done.returncode in (1, 2), done.stderr.decode()
    (imgs / "gone.jpg").unlink()
    textured_image(rng, 100, 100).save(imgs / "edited.jpg")
    return root


def results(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_bytes().splitlines()) if r["type"] == "result"]  # U+2028 is in a name


def test_report_of_a_scan(scanned, tmp_path):
    done = report_cli("v.jsonl", "-o", str(tmp_path / "report.html"), cwd=scanned)
    assert done.returncode == 0, done.stderr.decode()
    dom = chromium(tmp_path / "report.html", screenshot=tmp_path / "report.png")
    records = results(scanned / "v.jsonl")
    assert dom.ids["counts"].startswith(f"{len(records)} files: ")
    assert len(dom.rows) == len(records)
    scores = [float(s) for s in dom.column("score") if s]
    assert scores == sorted(scores, reverse=True) and len(scores) == sum(r["status"] in ("real", "fake") for r in records)
    paths = dom.column("path")
    assert f"imgs/{HOSTILE}" in paths and f"imgs/set.tar::{SCRIPT_MEMBER}" in paths and f"imgs/{LINE_SEP}" in paths
    assert not [a for _, a in dom.elements if a.get("src") == "x" or "onerror" in a], "an element was injected"
    assert "corrupt" in " ".join(dom.column("error")) or "truncated" in " ".join(dom.column("error"))
    by_path = dict(zip(paths, dom.column("image")))
    assert by_path["imgs/gone.jpg"] == "missing" and by_path["imgs/edited.jpg"] == "changed"
    thumbs = sorted((tmp_path / "report_files" / "thumbs").iterdir())
    assert len(thumbs) == len(scores) - 2  # all judged images but the deleted and the changed one, the member included
    from PIL import Image

    assert all(max(Image.open(t).size) <= 256 for t in thumbs)
    assert sum(1 for tag, a in dom.elements if tag == "span" and a.get("class") == "crop") == len(thumbs)
    assert "</script" not in (tmp_path / "report_files" / "data.js").read_text()


def test_fragment_filters_and_sorts(scanned, tmp_path):
    assert report_cli("v.jsonl", "-o", str(tmp_path / "r.html"), "--no-thumbnails", "-q", cwd=scanned).returncode == 0
    dom = chromium(tmp_path / "r.html", "#status=real&sort=score-asc")
    real = sorted(r["score"] for r in results(scanned / "v.jsonl") if r["status"] == "real")
    assert "image" not in dom.heads and dom.heads[:3] == ["path", "status", "score"]  # --no-thumbnails: no image column
    assert set(dom.column("status")) == {"real"} and [float(s) for s in dom.column("score")] == pytest.approx(real, abs=1e-3)
    assert dom.body["data-shown"] == str(len(real))
    dom = chromium(tmp_path / "r.html", "#q=%3Cimg")
    assert dom.column("path") == [f"imgs/{HOSTILE}"]


def test_torn_and_interrupted_jsonl(scanned, tmp_path):
    lines = (scanned / "v.jsonl").read_bytes().splitlines(keepends=True)
    (tmp_path / "torn.jsonl").write_bytes(b"".join(lines[:-2]) + lines[-2][:40])  # no summary, last result cut
    done = report_cli(str(tmp_path / "torn.jsonl"), "-o", str(tmp_path / "t.html"), "--no-thumbnails", cwd=scanned)
    assert done.returncode == 0, done.stderr.decode()
    assert b"torn" in done.stderr and b"interrupted" in done.stderr
    assert len(chromium(tmp_path / "t.html").rows) == len(lines) - 3


def test_shards_folder_parquet_and_json(scanned, tmp_path):
    """A --shards folder (laid out as the Ray executor writes it, from the JSONL's own lines) Parquet and JSON verdicts."""
    lines = (scanned / "v.jsonl").read_bytes().splitlines(keepends=True)
    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "header.json").write_bytes(lines[0])
    (shards / "part-000000000000-000000000000.jsonl").write_bytes(b"".join(lines[1:4]))
    (shards / "part-000000000003-000000000000.jsonl").write_bytes(b"".join(lines[4:-1]))
    (shards / "summary.json").write_bytes(lines[-1])
    expected = len(lines) - 2
    for source, page in ((shards, "s.html"), (scanned / "v.parquet", "p.html"), (scanned / "v.json", "j.html")):
        done = report_cli(str(source), "-o", str(tmp_path / page), "--no-thumbnails", cwd=scanned)
        assert done.returncode == 0, done.stderr.decode()
        dom = chromium(tmp_path / page)
        assert len(dom.rows) == expected and f"imgs/{HOSTILE}" in dom.column("path")


def test_not_verdicts_is_one_error_line(tmp_path):
    (tmp_path / "notes.jsonl").write_text('{"hello": 1}\n')
    done = report_cli("notes.jsonl", "-o", "r.html", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.decode().count("\n") == 1 and done.stderr.startswith(b"codescan: error: notes.jsonl")
    assert not (tmp_path / "r.html").exists()


def test_a_csv_of_verdicts_is_named_as_such(tmp_path):
    """`scan -o v.csv` then `report v.csv` said "not a codescan verdicts file"; CSV holds no header."""
    from codescan.output.reporters import CSV_COLUMNS

    (tmp_path / "v.csv").write_text(",".join(CSV_COLUMNS) + "\n/x/a.jpg,real,-1.5,0.0,linear\n")
    done = report_cli("v.csv", "-o", "r.html", cwd=tmp_path)
    said = "v.csv: a CSV of verdicts, which holds no header (weights, engine, thresholds) for the page: scan with -o FILE.jsonl, .json or .parquet"
    assert done.returncode == 2 and done.stderr.decode().splitlines() == [f"codescan: error: {said}"]


def test_thumbnails_are_cached_by_content(scanned, tmp_path, private_home):
    """Made once into CODESCAN_HOME/thumbs (<sha256>-256-<its own sha256>.jpg), then copied into each new a_files/."""
    assert report_cli("v.jsonl", "-o", str(tmp_path / "a.html"), "-q", cwd=scanned).returncode == 0
    thumbs, cache = tmp_path / "a_files" / "thumbs", private_home / "thumbs"
    pictures = {t.name: t.read_bytes() for t in thumbs.iterdir()}
    stamps = {t.name: t.stat().st_mtime_ns for t in cache.iterdir()}
    assert sorted(name.split("-")[0] + ".jpg" for name in stamps) == sorted(pictures)
    assert report_cli("v.jsonl", "-o", str(tmp_path / "a.html"), "-q", cwd=scanned).returncode == 0
    assert {t.name: t.stat().st_mtime_ns for t in cache.iterdir()} == stamps
    assert {t.name: t.read_bytes() for t in thumbs.iterdir()} == pictures


def test_thumbnail_refuses_a_pixel_bomb_and_a_slow_worker_is_replaced(tmp_path):
    from PIL import Image

    from codescan.decoding.decode import DecodeLimits
    from codescan.review.thumbs import make_thumbnails

    Image.new("RGB", (2000, 2000)).save(tmp_path / "big.png")
    data = (tmp_path / "big.png").read_bytes()
    import hashlib

    record = {"path": str(tmp_path / "big.png"), "status": "real", "sha256": hashlib.sha256(data).hexdigest()}
    assert make_thumbnails([record], tmp_path / "t", 1, DecodeLimits(max_pixels=1_000_000)) == ["failed"]
    assert make_thumbnails([record], tmp_path / "t", 1, deadline=0.001) == ["timeout"]
    assert make_thumbnails([record], tmp_path / "t", 1) == ["ok"]


def test_data_script_cannot_end_the_script():
    text = data_script({"path": "</script><!--\u2028\u2029&\udcff"})
    assert "<" not in text and ">" not in text and "\u2028" not in text and "&" not in text
    assert json.loads(text.split(" = ", 1)[1].rstrip(";\n")) == {"path": "</script><!--\u2028\u2029&\udcff"}
    assert os.linesep not in text[:-1]


def test_scan_writes_its_report_alongside(scanned, tmp_path):
    """`scan --report` reads back what it wrote: the same records as `codescan report` of that file."""
    data = (scanned / "scan-report_files" / "data.js").read_text()
    assert (scanned / "scan-report.html").is_file() and data.count('"sha256"') >= len(results(scanned / "v.jsonl")) - 1
    refused = run_cli("scan", str(scanned / "imgs"), "-q", "--report", str(tmp_path / "r.html"))
    assert refused.returncode == 2 and b"--report reads the verdicts back" in refused.stderr
    as_csv = run_cli("scan", str(scanned / "imgs"), "-q", "-o", str(tmp_path / "v.csv"), "--report", str(tmp_path / "r.html"))
    assert as_csv.returncode == 2 and b"--report reads the verdicts back" in as_csv.stderr and not (tmp_path / "v.csv").exists()
