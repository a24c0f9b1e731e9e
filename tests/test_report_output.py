"""`codescan report` owns its output: NAME_files/ is built fresh and renamed into place, nothing in an
existing folder is followed, kept or shown, and thumbnails come from a private cache checked by hash.

The verdicts are written by hand (two judged images, one error): what is tested is the output
folder, not the scan, so no weights are needed and each report takes well under a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import stat
from pathlib import Path

import pytest
from conftest import run_cli

from codescan.review.report import MARKER

ASSETS = Path(__file__).resolve().parents[1] / "codescan" / "review" / "report_assets"
ERROR = b"codescan: error: "


def jpeg(color: tuple[int, int, int]) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (64, 64), color).save(out, "JPEG")
    return out.getvalue()


PLANTED = jpeg((20, 200, 20))
PLANTED_JS = b"document.title = 'PLANTED';\n"


@pytest.fixture(scope="module")
def verdicts(tmp_path_factory) -> Path:
    """v.jsonl of two judged PNGs (and an error record) in a folder of their own."""
    from PIL import Image

    root = tmp_path_factory.mktemp("verdicts")
    lines = [{"type": "header", "schema_version": 3, "head": "linear", "thresholds": {"linear": 0.0}}]
    for name, color, status in (("red.png", (200, 20, 20), "fake"), ("blue.png", (20, 20, 200), "real")):
        Image.new("RGB", (300, 200), color).save(root / name)
        sha = hashlib.sha256((root / name).read_bytes()).hexdigest()
        lines.append({"type": "result", "path": str(root / name), "status": status, "score": 1.0 if status == "fake" else -1.0,
                      "head": "linear", "threshold": 0.0, "width": 300, "height": 200, "sha256": sha})
    lines.append({"type": "result", "path": str(root / "bad.jpg"), "status": "error", "error_code": "truncated"})
    lines.append({"type": "summary", "files": 3})
    (root / "v.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "v.jsonl"


def shas(verdicts: Path) -> list[str]:
    return [r["sha256"] for r in map(json.loads, verdicts.read_text().splitlines()) if r.get("status") in ("real", "fake")]


def report(verdicts: Path, page: Path, home: Path):
    return run_cli("report", str(verdicts), "-o", str(page), "-q", env={"CODESCAN_HOME": str(home)})


def made(verdicts: Path, page: Path, home: Path) -> Path:
    """A report codescan made (its marker in its folder), as a previous run leaves it."""
    done = report(verdicts, page, home)
    assert done.returncode == 0, done.stderr.decode()
    return page.with_name(page.stem + "_files")


def refused(done, what: bytes) -> None:
    assert done.returncode == 2, done.stderr.decode()
    assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(ERROR) and what in done.stderr, done.stderr.decode()
    assert b"not replaced (remove it, or choose another -o)" in done.stderr


def only_codescan_files(folder: Path, verdicts: Path) -> None:
    """The folder is exactly what codescan writes: nothing planted kept, no link anywhere, the assets as shipped."""
    found = sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))
    expected = sorted([MARKER, "data.js", "report.css", "report.js", "thumbs", *(f"thumbs/{s}.jpg" for s in shas(verdicts))])
    assert found == expected
    assert not any(p.is_symlink() for p in folder.rglob("*"))
    for asset in ("report.js", "report.css"):
        assert (folder / asset).read_bytes() == (ASSETS / asset).read_bytes()


def no_leftovers(parent: Path, *keep: str) -> None:
    """No temporary build folder or old folder set aside is left beside the page."""
    assert sorted(p.name for p in parent.iterdir()) == sorted(keep)


def test_planted_asset_links_are_not_written_through(verdicts, tmp_path):
    """(a) report.css/report.js links to a victim: refused in a folder codescan did not make, replaced in one it did."""
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    out = tmp_path / "out"
    (out / "report_files").mkdir(parents=True)
    (out / "report_files" / "report.css").symlink_to(victim)
    (out / "report_files" / "report.js").symlink_to(victim)
    refused(report(verdicts, out / "report.html", tmp_path / "home"), b"report_files: not made by codescan report")
    assert victim.read_bytes() == b"precious\n" and not (out / "report.html").exists()
    no_leftovers(out, "report_files")

    folder = made(verdicts, tmp_path / "mine" / "report.html", tmp_path / "home")
    for asset in ("report.css", "report.js", "data.js"):
        (folder / asset).unlink()
        (folder / asset).symlink_to(victim)
    assert report(verdicts, folder.parent / "report.html", tmp_path / "home").returncode == 0
    assert victim.read_bytes() == b"precious\n"
    only_codescan_files(folder, verdicts)


def test_thumbs_link_writes_nothing_elsewhere(verdicts, tmp_path):
    """(b) thumbs/ a link to another folder: no thumbnail lands there."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = tmp_path / "out"
    (out / "report_files").mkdir(parents=True)
    (out / "report_files" / "thumbs").symlink_to(elsewhere)
    refused(report(verdicts, out / "report.html", tmp_path / "home"), b"not made by codescan report")
    folder = made(verdicts, tmp_path / "mine" / "report.html", tmp_path / "home")
    for name in os.listdir(folder / "thumbs"):
        (folder / "thumbs" / name).unlink()
    (folder / "thumbs").rmdir()
    (folder / "thumbs").symlink_to(elsewhere)
    assert report(verdicts, folder.parent / "report.html", tmp_path / "home2").returncode == 0  # a fresh cache: made again
    assert list(elsewhere.iterdir()) == []
    only_codescan_files(folder, verdicts)


def test_planted_thumbnail_is_not_shown(verdicts, tmp_path):
    """(c) a planted thumbs/<sha256>.jpg in the page's own folder is not the record's picture."""
    folder = made(verdicts, tmp_path / "report.html", tmp_path / "home")
    sha = shas(verdicts)[0]
    genuine = (folder / "thumbs" / f"{sha}.jpg").read_bytes()
    (folder / "thumbs" / f"{sha}.jpg").write_bytes(PLANTED)
    assert report(verdicts, tmp_path / "report.html", tmp_path / "home").returncode == 0
    assert (folder / "thumbs" / f"{sha}.jpg").read_bytes() == genuine != PLANTED


def test_planted_script_is_gone(verdicts, tmp_path):
    """(d) a planted report.js (and a planted file beside it) does not survive a report run."""
    folder = made(verdicts, tmp_path / "report.html", tmp_path / "home")
    (folder / "report.js").write_bytes(PLANTED_JS)
    (folder / "extra.js").write_bytes(PLANTED_JS)
    (folder / "thumbs" / f"{'0' * 64}.jpg").write_bytes(PLANTED)
    assert report(verdicts, tmp_path / "report.html", tmp_path / "home").returncode == 0
    only_codescan_files(folder, verdicts)
    no_leftovers(tmp_path, "home", "report.html", "report_files")


def test_folder_others_can_write_or_not_ours_is_refused(verdicts, tmp_path):
    """(e) a group-writable folder, a link to a folder codescan made, someone else's folder: refused, left alone."""
    folder = made(verdicts, tmp_path / "report.html", tmp_path / "home")
    before = sorted(p.name for p in folder.rglob("*"))
    folder.chmod(0o775)
    refused(report(verdicts, tmp_path / "report.html", tmp_path / "home"), b"writable by group or others (mode 0775)")
    assert sorted(p.name for p in folder.rglob("*")) == before
    folder.chmod(0o755)
    (tmp_path / "link_files").symlink_to(folder)
    refused(report(verdicts, tmp_path / "link.html", tmp_path / "home"), b"link_files: a symbolic link")
    assert not (tmp_path / "link.html").exists() and sorted(p.name for p in folder.rglob("*")) == before
    if os.geteuid() == 0:  # only root can give a folder away
        os.chown(folder, 65534, -1)
        refused(report(verdicts, tmp_path / "report.html", tmp_path / "home"), b"owned by uid 65534")
        os.chown(folder, 0, -1)
    (folder / MARKER).write_bytes(b"something else\n")
    refused(report(verdicts, tmp_path / "report.html", tmp_path / "home"), b"no .codescan-report marker")
    no_leftovers(tmp_path, "home", "report.html", "report_files", "link_files")


def test_page_of_any_name_shows_its_own_thumbnails(verdicts, tmp_path):
    """(f) review.html, with another report_files/ beside it: Chromium shows review_files/'s thumbnails."""
    from test_report import chromium

    sha_list = shas(verdicts)
    for sha in sha_list:
        (tmp_path / "report_files" / "thumbs").mkdir(parents=True, exist_ok=True)
        (tmp_path / "report_files" / "thumbs" / f"{sha}.jpg").write_bytes(PLANTED)
    made(verdicts, tmp_path / "review.html", tmp_path / "home")
    dom = chromium(tmp_path / "review.html")
    assert dom.heads == ["image", "path", "status", "score", "error"]  # no heads, combined or evidence: no room taken
    srcs = sorted(a["src"] for tag, a in dom.elements if tag == "img")
    assert srcs == sorted(f"review_files/thumbs/{sha}.jpg" for sha in sha_list)
    for src in srcs:
        assert (tmp_path / src).read_bytes() != PLANTED and (tmp_path / src).read_bytes()[:2] == b"\xff\xd8"


def test_second_run_over_its_own_output(verdicts, tmp_path):
    """(g) re-running over its own previous output succeeds and leaves nothing aside; an odd name is a URL."""
    page = tmp_path / "my review #1.html"
    folder = made(verdicts, page, tmp_path / "home")
    first = (folder / "data.js").stat().st_ino
    folder = made(verdicts, page, tmp_path / "home")
    assert (folder / "data.js").stat().st_ino != first  # a new folder, not the old one rewritten
    only_codescan_files(folder, verdicts)
    no_leftovers(tmp_path, "home", page.name, folder.name)
    assert '"files":"my%20review%20%231_files"' in (folder / "data.js").read_text()
    assert 'src="my%20review%20%231_files/report.js"' in page.read_text()
    assert stat.S_IMODE(folder.stat().st_mode) & 0o022 == 0


def test_thumbnail_cache_is_checked_before_use(verdicts, tmp_path):
    """(h) thumbnails are cached in CODESCAN_HOME by content and size with their own hash; a tampered one is remade."""
    home = tmp_path / "home"
    folder = made(verdicts, tmp_path / "report.html", home)
    sha = shas(verdicts)[0]
    cache = home / "thumbs"
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    (cached,) = cache.glob(f"{sha}-256-*.jpg")
    genuine = (folder / "thumbs" / f"{sha}.jpg").read_bytes()
    assert cached.read_bytes() == genuine and cached.name == f"{sha}-256-{hashlib.sha256(genuine).hexdigest()}.jpg"

    source = Path(json.loads(verdicts.read_text().splitlines()[1])["path"])
    hidden = source.with_name("hidden")
    source.rename(hidden)  # a cache hit needs no source: still shown
    try:
        assert made(verdicts, tmp_path / "report.html", home) == folder
        assert (folder / "thumbs" / f"{sha}.jpg").read_bytes() == genuine
        assert '"ok"' in (folder / "data.js").read_text().split('"thumbs":')[1].split(",")[0]
    finally:
        hidden.rename(source)

    cached.write_bytes(PLANTED)  # tampered: its bytes no longer hash to its name
    made(verdicts, tmp_path / "report.html", home)
    assert (folder / "thumbs" / f"{sha}.jpg").read_bytes() == genuine
    assert cached.read_bytes() == genuine  # dropped and remade under the same name


def relative_verdicts(root: Path) -> Path:
    """v.jsonl as a scan run in `root` writes it: the image named by its path relative to there."""
    from PIL import Image

    (root / "imgs").mkdir(parents=True)
    Image.new("RGB", (120, 80), (200, 120, 20)).save(root / "imgs" / "a.png")
    sha = hashlib.sha256((root / "imgs" / "a.png").read_bytes()).hexdigest()
    lines = [{"type": "header", "schema_version": 3, "head": "linear", "thresholds": {"linear": 0.0}},
             {"type": "result", "path": "imgs/a.png", "status": "fake", "score": 1.0, "head": "linear", "threshold": 0.0,
              "width": 120, "height": 80, "crop": [20, 0, 100, 80], "sha256": sha},
             {"type": "summary", "files": 1}]
    (root / "v.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    return root / "v.jsonl"


def thumb_states(page: Path) -> list:
    data = page.with_name(page.stem + "_files").joinpath("data.js").read_text()
    return json.loads(data.split(" = ", 1)[1].rstrip(";\n"))["thumbs"]


def test_relative_paths_resolve_against_root(tmp_path):
    """Paths as the scan was given them: found from --root (default: the current folder); when not found, --root is named."""
    verdicts = relative_verdicts(tmp_path / "scan")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {"CODESCAN_HOME": str(tmp_path / "home")}
    lost = run_cli("report", str(verdicts), "-o", "r.html", env=env, cwd=elsewhere)
    assert lost.returncode == 0 and thumb_states(elsewhere / "r.html") == ["missing"]
    assert f"codescan: 1 scanned file not found, relative paths looked for from {elsewhere}".encode() in lost.stderr
    assert b"give it with --root DIR" in lost.stderr and b"1 record, 0 thumbnails, 1 not found" in lost.stderr
    found = run_cli("report", str(verdicts), "-o", "r.html", "--root", "../scan", "-q", env=env, cwd=elsewhere)
    assert found.returncode == 0 and found.stderr == b"" and thumb_states(elsewhere / "r.html") == ["ok"]
    here = run_cli("report", "v.jsonl", "-o", str(elsewhere / "h.html"), "-q", env={"CODESCAN_HOME": str(tmp_path / "home2")},
                   cwd=tmp_path / "scan")
    assert here.returncode == 0 and here.stderr == b"" and thumb_states(elsewhere / "h.html") == ["ok"]
    assert '"inputs"' not in (elsewhere / "r_files" / "data.js").read_text()  # nothing about where the files were is added
    wrong = run_cli("report", str(verdicts), "-o", "r.html", "--root", "nowhere", env=env, cwd=elsewhere)
    assert wrong.returncode == 2 and wrong.stderr == b"codescan: error: --root nowhere: not a folder\n"


def test_absolute_paths_not_found_do_not_name_root(verdicts, tmp_path):
    moved = tmp_path / "moved.jsonl"
    moved.write_text(verdicts.read_text().replace(str(verdicts.parent), str(tmp_path / "gone")))
    done = run_cli("report", str(moved), "-o", str(tmp_path / "r.html"), "-q", env={"CODESCAN_HOME": str(tmp_path / "home")})
    assert done.returncode == 0
    assert done.stderr == b"codescan: 2 scanned files not found (moved or deleted since the scan); shown without thumbnails\n"


def test_report_never_replaces_its_input(verdicts, tmp_path):
    copy = tmp_path / "v.jsonl"
    copy.write_bytes(verdicts.read_bytes())
    done = run_cli("report", str(copy), "-o", str(copy), env={"CODESCAN_HOME": str(tmp_path / "home")})
    assert done.returncode == 2 and done.stderr.count(b"\n") == 1 and b"would replace its own input" in done.stderr
    assert copy.read_bytes() == verdicts.read_bytes()


def test_scan_checks_the_report_target_before_the_model_loads(tmp_path):
    """`scan --report` fails in one line, exit 2, before any weights are looked for (this home has none) or -o is written."""
    from PIL import Image

    (tmp_path / "imgs").mkdir()
    Image.new("RGB", (64, 64)).save(tmp_path / "imgs" / "a.png")
    (tmp_path / "page_files").mkdir()
    (tmp_path / "page_files" / "keep.txt").write_text("mine\n")
    (tmp_path / "a_file").write_text("not a folder\n")
    env = {"CODESCAN_HOME": str(tmp_path / "empty-home")}
    cases = [
        ("page.html", b"page_files: not made by codescan report (no .codescan-report marker of yours in it); "
                      b"not replaced (remove it, or choose another --report)"),
        ("v.jsonl", b"--report: v.jsonl: the report would replace its own input v.jsonl; choose another --report"),
        ("a_file/page.html", b"a_file: not a folder, so a_file/page.html cannot be written there; choose another --report"),
    ]
    for page, message in cases:
        done = run_cli("scan", "imgs", "-q", "-o", "v.jsonl", "--report", page, env=env, cwd=tmp_path)
        assert done.returncode == 2, done.stderr.decode()
        assert done.stderr.count(b"\n") == 1 and done.stderr.startswith(ERROR + b"--report: ") and message in done.stderr, done.stderr
        assert not (tmp_path / "v.jsonl").exists() and not (tmp_path / "empty-home").exists()
    assert (tmp_path / "page_files" / "keep.txt").read_text() == "mine\n"
