"""The first ten minutes: errors a user meets are one line naming the thing, weights arrive by
themselves (or say exactly how), small truths hold, and outputs are safe to open.

Also the security kit's F6 (CSV formula injection through file names) and F7 (terminal escapes
from file-controlled text on stderr), here because both are about what a person opens or sees.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import image_folder, run_cli, textured_image

from codescan.weights import bundle as W
from codescan.weights import install as I

ESC = "\x1b]0;owned\x07\x1b[2J"


@pytest.fixture()
def photos(tmp_path) -> Path:
    return image_folder(tmp_path / "photos", 3, seed=4)


def _lines(p) -> list[str]:
    return p.stderr.decode().strip().splitlines()


def test_missing_path_is_one_line_and_a_record(home, photos, tmp_path):
    missing = str(tmp_path / "Picturez")
    p = run_cli("scan", missing, str(photos), "-q", "--no-cache")
    assert p.returncode == 2
    assert _lines(p) == [f"codescan: error: {missing}: No such file or directory"]
    records = [json.loads(line) for line in p.stdout.splitlines()]
    assert records[1]["path"] == missing and records[1]["status"] == "error"
    assert [r["status"] for r in records[2:-1]] != [] and records[-1]["files"] == 4


@pytest.mark.parametrize("target", ["missing/out.json", "missing/out.jsonl"])
def test_output_into_a_missing_folder(home, photos, tmp_path, target):
    p = run_cli("scan", str(photos), "-o", target, cwd=tmp_path)
    assert p.returncode == 2 and len(_lines(p)) == 1, p.stderr
    assert f"cannot write {target}" in _lines(p)[0] and ".tmp" not in p.stderr.decode()
    assert not list(tmp_path.rglob(".codescan.*"))


def test_empty_input_says_so_and_exits_0(home, tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "texts").mkdir()
    (tmp_path / "texts" / "a.txt").write_text("hello")
    for folder, extra in (("empty", ""), ("texts", " (1 other file skipped)")):
        p = run_cli("scan", str(tmp_path / folder), "--no-cache")
        assert p.returncode == 0
        assert _lines(p)[-1] == f"codescan: no images found{extra}", p.stderr


def test_usage_errors_keep_suggestions_without_noise(home):
    p = run_cli("scan", "--head", "foo", "x")
    assert p.returncode == 2 and b"Value error" not in p.stderr and b"'foo' is not one of" in p.stderr
    p = run_cli("scna")
    assert p.returncode == 2 and b"Did you mean 'scan'" in p.stderr


def test_first_use_offline_names_the_repo_and_the_commands(tmp_path, photos):
    env = {"CODESCAN_HOME": str(tmp_path / "empty-store"), "HF_HUB_OFFLINE": "1"}
    p = run_cli("scan", str(photos), env=env)
    assert p.returncode == 2 and len(_lines(p)) == 1, p.stderr
    line = _lines(p)[0]
    assert "aimagelab/CoDE" in line and "`hf download aimagelab/CoDE --local-dir CoDE`" in line
    assert "`codescan weights import CoDE`" in line
    assert run_cli("scan", str(photos), env={**env, "HF_HUB_OFFLINE": "", "CODESCAN_OFFLINE": "1"}).returncode == 2


def test_first_use_with_an_unreachable_hub_is_one_line(tmp_path, photos):
    env = {"CODESCAN_HOME": str(tmp_path / "empty-store"), "HF_ENDPOINT": "http://127.0.0.1:9",
           "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": ""}
    p = run_cli("scan", str(photos), "-q", env=env)
    assert p.returncode == 2
    assert _lines(p)[-1].startswith("codescan: error: hub unreachable") and "hf download" in _lines(p)[-1]


def test_first_use_pulls_the_default_bundle_and_prints_the_pin(tmp_path, monkeypatch, small_checkpoint):
    from test_weights import COMMIT_A, fake_hub

    monkeypatch.setenv("CODESCAN_HOME", str(tmp_path / "store"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # the fake hub is the only one reached
    served = {"calls": [], "commits": {"main": COMMIT_A}, "root": tmp_path / "hub"}
    said: list[str] = []
    I.ensure_default("code", said.append, download=fake_hub(small_checkpoint, served))
    bundle = W.load_bundle("code")
    assert bundle.revision == COMMIT_A and served["calls"] == [("aimagelab/CoDE", "main")]
    assert any(COMMIT_A in s for s in said)
    for fname, digest in bundle.meta["source"]["files"].items():
        assert any(digest in s and fname in s for s in said), fname
    I.ensure_default("code", said.append, download=fake_hub(small_checkpoint, served))  # installed: no second pull
    I.ensure_default("other", said.append, download=fake_hub(small_checkpoint, served))  # only the default name
    assert len(served["calls"]) == 1


def test_git_lfs_pointer_folder_is_named(tmp_path, small_checkpoint):
    folder = tmp_path / "CoDE"
    shutil.copytree(small_checkpoint, folder)
    (folder / "model.safetensors").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 22000000\n"
    )
    p = run_cli("weights", "import", str(folder), env={"CODESCAN_HOME": str(tmp_path / "store")})
    assert p.returncode == 2 and len(_lines(p)) == 1
    assert "model.safetensors is a Git LFS pointer" in _lines(p)[0] and "git lfs pull" in _lines(p)[0]


@pytest.mark.timeout(60)
def test_import_refuses_what_is_not_a_file_and_follows_links_to_files(tmp_path, small_checkpoint):
    """A FIFO under a name the import reads held `weights import` forever (open waits for a writer);
    `hf download` may leave links into its cache, which still import."""
    import os

    folder, cache = tmp_path / "CoDE", tmp_path / "cache"
    shutil.copytree(small_checkpoint, cache)
    shutil.copytree(small_checkpoint, folder)
    for name in ("model.safetensors", "config.json"):
        (folder / name).unlink()
        (folder / name).symlink_to(cache / name)
    os.mkfifo(folder / "sklearn" / "extra.sav")
    env = {"CODESCAN_HOME": str(tmp_path / "store")}
    p = run_cli("weights", "import", str(folder), env=env)
    said = f"{folder}/sklearn/extra.sav is not a regular file (a folder, FIFO, socket or device); remove it or download again"
    assert p.returncode == 2 and _lines(p) == [f"codescan: error: {said}"]
    (folder / "sklearn" / "extra.sav").unlink()
    p = run_cli("weights", "import", str(folder), env=env)
    assert p.returncode == 0, p.stderr


def test_small_truths(home, photos, tmp_path):
    one = tmp_path / "one"
    one.mkdir()
    shutil.copy(photos / "0.jpg", one)
    p = run_cli("scan", str(one), "--no-cache")
    header = json.loads(p.stdout.splitlines()[0])
    assert header["weights"]["revision"] is None  # an imported bundle has no hub commit
    assert _lines(p)[-1].startswith("1 file: ") and ", 0 errors, " in _lines(p)[-1]
    out = tmp_path / "v.jsonl"
    assert run_cli("scan", str(photos), "-o", str(out), "-q").returncode in (0, 1)
    again = run_cli("scan", str(photos), "--resume", str(out))  # nothing left: the rate counts this run only
    assert _lines(again)[-1].startswith("3 files: ") and _lines(again)[-1].endswith("(0.0 files/s)"), again.stderr


def test_resume_refuses_other_path_arguments(home, photos, tmp_path):
    out = tmp_path / "v.jsonl"
    assert run_cli("scan", str(photos), "-o", str(out), "-q").returncode in (0, 1)
    header = json.loads(out.read_text().splitlines()[0])
    assert header["inputs"]["count"] == 1 and str(photos) not in json.dumps(header)
    p = run_cli("scan", str(photos), str(tmp_path), "--resume", str(out), "-q")
    assert p.returncode == 2 and b"other PATH arguments" in p.stderr
    listing = f"{photos / '0.jpg'}\n{photos / '1.jpg'}\n".encode()
    listed = tmp_path / "listed.jsonl"
    assert run_cli("scan", "--files-from", "-", "-o", str(listed), "-q", input=listing).returncode in (0, 1)
    assert run_cli("scan", "--files-from", "-", "--resume", str(listed), "-q", input=listing).returncode in (0, 1)
    p = run_cli("scan", "--files-from", "-", "--resume", str(listed), "-q", input=listing[: listing.index(b"\n") + 1])
    assert p.returncode == 2 and b"same list on stdin" in p.stderr


def test_help_fits_80_columns():
    for command in (["scan"], ["eval"], ["train"], ["weights", "import"], []):
        p = run_cli(*command, "--help", env={"COLUMNS": "80"})
        text = p.stdout.decode()
        assert p.returncode == 0 and all(len(line) <= 80 for line in text.splitlines()), command
        assert "<bool>" not in text and "…" not in text, command
    scan_help = run_cli("scan", "--help", env={"COLUMNS": "80"}).stdout.decode()
    for var in ("CODESCAN_PRECISION", "CODESCAN_DECODE_TIMEOUT", "CODESCAN_FOLLOW_SYMLINKS", "CODESCAN_RAY_WORKERS"):
        assert var in scan_help.replace("\n", " ").replace("  ", ""), var
    assert b"--install-completion" in run_cli("--help").stdout


def _hostile_names(folder: Path) -> list[str]:
    """The kit's F6 names: formula starts, a tab and a CR inside names, plus a plain one."""
    rng = np.random.default_rng(6)
    names = ["=HYPERLINK(\"x\",\"y\").png", "+1+2.png", "-rf.png", "@SUM(A1).png", "\tt.png", "a\rb.png"]
    for name in names:
        textured_image(rng, 64, 64).save(folder / name)
    return names


def test_csv_cells_are_safe_to_open(home, tmp_path):
    folder = tmp_path / "f6"
    folder.mkdir()
    names = _hostile_names(folder)
    out = tmp_path / "v.csv"
    p = run_cli("scan", "-q", "--no-cache", "--head", "all", "-o", str(out), "--", *sorted(names), cwd=folder)
    assert p.returncode in (0, 1), p.stderr
    raw = out.read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == 1 + len(names)
    rows = list(csv.reader(io.StringIO(raw.decode())))
    assert len(rows) == 1 + len(names) and all(len(r) == len(rows[0]) for r in rows)
    for row in rows[1:]:
        text_cells = [c for c in row if c and not _is_number(c)]
        assert not any(c.startswith(("=", "+", "-", "@", "\t", "\r")) for c in text_cells), row
        assert any(_is_number(c) and float(c) != 0 for c in row)  # scores stay numbers
    jsonl = run_cli("scan", "-q", "--no-cache", "--", *sorted(names), cwd=folder)
    assert {json.loads(line)["path"] for line in jsonl.stdout.splitlines()[1:-1]} == set(names)  # JSONL: exact


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_no_escape_sequence_from_a_file_reaches_stderr(home, tmp_path):
    (tmp_path / "names").mkdir()
    rng = np.random.default_rng(8)
    textured_image(rng, 64, 64).save(tmp_path / "names" / f"x{ESC}.png")
    (tmp_path / "names" / f"broken{ESC}.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    env = {"NO_COLOR": "1"}
    scans = [
        run_cli("scan", str(tmp_path / "names"), "-o", str(tmp_path / "o.jsonl"), "--no-cache", env=env),
        run_cli("scan", str(tmp_path / f"missing{ESC}"), "--no-cache", env=env),
        run_cli("scan", str(tmp_path / "names"), "--no-cache", "--resume", str(tmp_path / f"r{ESC}/x.jsonl"), env=env),
    ]
    data = tmp_path / "eval"
    for label, gen in (("real", ""), ("fake", f"gen{ESC}")):
        (data / label / gen).mkdir(parents=True)
        for i in range(2):
            textured_image(rng, 64, 64).save(data / label / gen / f"{i}.png")
    scans.append(run_cli("eval", "--data", str(data), env=env))
    for p in scans:
        assert p.stderr, "each command said something on stderr"
        assert b"\x1b" not in p.stderr and b"\x07" not in p.stderr, p.stderr
    assert "\\x1b" in scans[1].stderr.decode()  # shown escaped, not dropped
