"""A user's first hour (#24): the small untruths and the noise a new user met, each pinned."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import tarfile
import time
from pathlib import Path

import pytest
from conftest import image_folder, run_cli

from codescan.core.records import Summary


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    return image_folder(tmp_path_factory.mktemp("first-hour") / "photos", 3, seed=5)


def result_paths(path: Path) -> list[str]:
    return [r["path"] for r in map(json.loads, path.read_text().splitlines()) if r["type"] == "result"]


def test_resume_takes_the_slash_tab_completion_adds(home, photos, tmp_path):
    out = tmp_path / "v.jsonl"
    first = run_cli("scan", str(photos), "-q", "--no-cache", "-o", str(out))
    assert first.returncode in (0, 1), first.stderr
    lines = out.read_text().splitlines()
    out.write_text("\n".join(lines[:2]) + "\n")  # header and one result: the rest was never written
    again = run_cli("scan", f"{photos}/", "-q", "--no-cache", "--resume", str(out))
    assert again.returncode in (0, 1), again.stderr
    assert result_paths(out) == sorted(str(p) for p in photos.iterdir())  # each once, in walk order
    other = run_cli("scan", f"{photos}//", "-q", "--no-cache", "--resume", str(out))  # lists other paths: refused
    assert other.returncode == 2 and b"other PATH arguments" in other.stderr


def test_resume_of_json_or_csv_says_what_can_be_resumed(home, photos, tmp_path):
    for fmt, hint in (("json", b"JSON output cannot be resumed"), ("csv", b"only codescan's JSONL output can be resumed")):
        out = tmp_path / f"v.{fmt}"
        assert run_cli("scan", str(photos), "-q", "--no-cache", "--format", fmt, "-o", str(out)).returncode in (0, 1)
        p = run_cli("scan", str(photos), "-q", "--no-cache", "--resume", str(out))
        assert p.returncode == 2 and hint in p.stderr, p.stderr


def test_progress_counts_are_all_cumulative_when_resuming():
    from rich.console import Console

    from codescan.output.progress import ScanProgress

    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, force_interactive=True, width=120)
    progress = ScanProgress(quiet=False, console=console)
    progress.count_in_background(lambda: range(10), already_done=4)  # 4 files from the killed run
    summary = Summary(files=5, real=3, fake=2)  # the summary is cumulative too: 4 resumed + 1 new
    with progress:
        progress.advance(summary, 1)
        task = progress._progress.tasks[0]
        for _ in range(100):
            if task.total is not None:  # set by the counting thread
                break
            time.sleep(0.02)
        line = "".join(str(c.render(task)) for c in progress._progress.columns[1:4])
    assert task.completed == 5 and task.total == 10 and task.fields["fake"] == 2
    assert "5/10 files (4 resumed)" in line and "2 fake" in line


def test_the_pixel_limit_quoted_is_codescans_own():
    from PIL import Image

    from codescan.decoding.decode import DecodeLimits, configure_pillow, decode_bytes
    from codescan.inputs.read import DecodeFailure

    limits = DecodeLimits(max_pixels=1000)
    configure_pillow(limits)
    try:
        data = io.BytesIO()
        Image.new("RGB", (100, 100)).save(data, "PNG")  # 10,000 pixels: Pillow itself refuses at open
        with pytest.raises(DecodeFailure) as failure:
            decode_bytes(data.getvalue(), limits, "x.png")
    finally:
        configure_pillow(DecodeLimits())
    assert failure.value.code == "too_large"
    assert failure.value.message == "10,000 pixels exceed the limit of 1,000 (--max-pixels)"


def test_a_folder_of_shut_archives_gets_a_hint(home, tmp_path):
    folder = tmp_path / "shards"
    folder.mkdir()
    for name in ("a.tar", "b.tar"):
        with tarfile.open(folder / name, "w") as tar:
            info = tarfile.TarInfo("x.txt")
            tar.addfile(info, io.BytesIO(b""))
    p = run_cli("scan", str(folder), "--no-cache")
    assert b"2 of them are archives or Parquet files, not opened when met in a folder: add --archives" in p.stderr
    opened = run_cli("scan", str(folder), "--no-cache", "--archives")
    assert b"add --archives" not in opened.stderr


def test_parquet_output_header_and_summary_each_one_pyarrow_call(home, photos, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    out = tmp_path / "v.parquet"
    assert run_cli("scan", str(photos), "-q", "--no-cache", "-o", str(out)).returncode in (0, 1)
    header = json.loads(pq.read_table(out).schema.metadata[b"codescan.header"])
    summary = json.loads(pq.read_metadata(out).metadata[b"codescan.summary"])
    assert header["type"] == "header" and summary["files"] == 3 and pq.read_table(out).num_rows == 3


def test_onnxruntime_quantiser_advice_stays_off_the_terminal(home, caplog):
    from codescan.engines.onnx_engine import build_model

    from codescan.weights.bundle import load_bundle

    root = logging.getLogger()
    handlers = list(root.handlers)
    with caplog.at_level(logging.DEBUG):
        build_model(load_bundle("code"), "int8")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert root.handlers == handlers  # no stderr handler left behind on the root logger


def test_output_on_a_read_only_file_system_says_so(home, photos, tmp_path):
    mount = tmp_path / "ro"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {made.stderr.decode().strip()}")
    try:
        p = run_cli("scan", str(photos), "-q", "--no-cache", "-o", str(mount / "v.jsonl"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert p.returncode == 2 and p.stderr.decode().strip() == f"codescan: error: cannot write {mount / 'v.jsonl'}: read-only file system"


def test_default_bundle_precedence_and_the_error_that_names_what_is_installed(small_checkpoint, photos, tmp_path):
    env = {"CODESCAN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1"}
    assert run_cli("weights", "import", str(small_checkpoint), "--name", "mine", env=env).returncode == 0
    missing = run_cli("scan", str(photos), "-q", "--no-cache", env=env)  # `code` is not installed; `mine` is
    assert missing.returncode == 2 and missing.stdout == b""
    line = missing.stderr.decode()
    assert line.count("\n") == 1 and "installed: mine" in line and "--weights mine" in line
    assert "codescan weights default mine" in line and "downloads are off" not in line  # no first-use pull tried

    assert run_cli("weights", "default", "mine", env=env).returncode == 0
    shown = run_cli("weights", "default", env=env)
    assert shown.stdout.decode().strip() == "mine" and b"stored" in shown.stderr

    def header_weights(*extra: str, **more: str) -> str:
        p = run_cli("scan", str(photos), "-q", "--no-cache", *extra, env={**env, **more})
        return json.loads(p.stdout.splitlines()[0])["weights"]["name"] if p.returncode in (0, 1) else p.stderr.decode()

    assert header_weights() == "mine"  # the stored default
    assert "no weights bundle 'other'" in header_weights(CODESCAN_WEIGHTS="other")  # the variable beats it
    assert header_weights("--weights", "mine", CODESCAN_WEIGHTS="other") == "mine"  # the option beats both
    assert run_cli("weights", "default", "nosuch", env=env).returncode == 2
    assert run_cli("weights", "default", "--clear", env=env).returncode == 0
    assert run_cli("weights", "default", env=env).stdout.decode().strip() == "code"
