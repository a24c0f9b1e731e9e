"""Scans that are stalled, interrupted, killed or starved of disk space end cleanly.

- a decoder that stalls is killed at --decode-timeout and its file becomes decode_timeout;
- Ctrl-C / SIGTERM write what is done plus an interrupted summary, complete lines only, exit 130;
- a scan killed with SIGKILL (or left with a torn last line) resumes to exactly the records of
  an uninterrupted run;
- a full disk is a one-line error, exit 2.
Every subprocess has a generous timeout: these guard against hangs, they do not measure speed.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CODESCAN, run_cli, textured_image

N_IMAGES = 200
SLOW = {"CODESCAN_TEST_DECODE_DELAY": "0.05"}  # ~20 files/s per worker: the scan is still running when we strike


@pytest.fixture(scope="module")
def bigdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("big")
    rng = np.random.default_rng(11)
    for i in range(N_IMAGES):
        im = textured_image(rng, int(rng.integers(48, 140)), int(rng.integers(48, 140)))
        if i % 3 == 0:
            im.save(d / f"img{i:03d}.jpg", quality=85)
        else:
            im.save(d / f"img{i:03d}.png")
    good = (d / "img001.png").read_bytes()
    (d / "img100_broken.png").write_bytes(good[: len(good) // 2])
    (d / "readme.txt").write_text("not an image\n")
    return d


@pytest.fixture(scope="module")
def env(session_home) -> dict[str, str]:
    return {**os.environ, "CODESCAN_HOME": str(session_home)}


@pytest.fixture(scope="module")
def clean(bigdir, env, tmp_path_factory) -> list[dict]:
    """An uninterrupted scan of bigdir: the yardstick for resumed scans."""
    out = tmp_path_factory.mktemp("clean") / "b.jsonl"
    p = run_cli("scan", str(bigdir), "-o", str(out), "-q", env=env)
    assert p.returncode == 2 and p.stderr == b"", p.stderr  # the broken image is an error
    recs = read_jsonl(out)
    assert len(recs) == N_IMAGES + 2 + 2  # header, images, broken, readme, summary
    return recs


def read_jsonl(path: Path) -> list[dict]:
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), raw[-200:]  # no torn last line
    return [json.loads(line) for line in raw.decode("utf-8").split("\n")[:-1]]


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session: the scan, its forkserver and decode workers."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            text = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:  # state, ppid, pgrp, session
            pids.append(int(entry))
    return pids


def wait_gone(sid: int, grace: float = 10.0) -> list[int]:
    deadline = time.monotonic() + grace
    while (left := session_processes(sid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def start_scan(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    # A session of its own: like a shell job, and lets the test clean up every process it made.
    return subprocess.Popen(
        [CODESCAN, "scan", *args], env={**env, **SLOW}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
    )


def wait_for_lines(p: subprocess.Popen, out: Path, n: int, guard: float = 120.0) -> None:
    deadline = time.monotonic() + guard
    while count_lines(out) < n:
        assert p.poll() is None, f"scan ended before writing {n} lines: {p.returncode} {p.stderr.read()!r}"
        assert time.monotonic() < deadline, "scan wrote nothing (hang?)"
        time.sleep(0.02)


def kill_session(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def without_seconds(recs: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if not (r["type"] == "summary" and k == "seconds")} for r in recs]


def assert_same_as_clean(recs: list[dict], clean: list[dict]) -> None:
    paths = [r["path"] for r in recs if r["type"] == "result"]
    assert len(paths) == len(set(paths)), "duplicate paths"
    assert [r["type"] for r in recs] == [r["type"] for r in clean]
    assert recs[0] == clean[0]  # header
    assert paths == [r["path"] for r in clean if r["type"] == "result"]
    assert without_seconds(recs) == without_seconds(clean)


# --------------------------------------------------------------------------- stalled decoder


def test_stalled_decoder_is_killed(tmp_path, env):
    rng = np.random.default_rng(3)
    for name in ("a.png", "b.jpg", "stall_me.png", "z.png"):
        textured_image(rng, 160, 120).save(tmp_path / name)
    p = subprocess.Popen(
        [CODESCAN, "scan", str(tmp_path), "--decode-timeout", "2", "-q"],
        # Workers that take longer to start than the deadline (a loaded machine, --evidence all's
        # torch import) must not cost their first file: only the stalled file times out.
        env={**env, "CODESCAN_TEST_STALL_MARKER": "stall_me", "CODESCAN_TEST_WORKER_START_DELAY": "2.5"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = p.communicate(timeout=90)  # hang guard: the stalled worker sleeps for an hour
        # The stalled worker was killed, not orphaned.
        left = wait_gone(p.pid)
    finally:
        kill_session(p)
    assert stderr == b"", stderr
    recs = [json.loads(line) for line in stdout.decode().splitlines()]
    assert recs[0]["type"] == "header" and recs[-1]["type"] == "summary"
    by_name = {os.path.basename(r["path"]): r for r in recs[1:-1]}
    assert list(by_name) == ["a.png", "b.jpg", "stall_me.png", "z.png"]
    stalled = by_name.pop("stall_me.png")
    assert (stalled["status"], stalled["error_code"]) == ("error", "decode_timeout"), stalled
    assert "score" not in stalled
    for r in by_name.values():
        assert r["status"] in ("real", "fake"), r
    assert p.returncode == 2
    assert left == [], "a decode worker outlived the scan"


# --------------------------------------------------------------------------- Ctrl-C and SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_writes_complete_lines_and_summary(tmp_path, bigdir, env, clean, sig):
    out = tmp_path / "out.jsonl"
    p = start_scan([str(bigdir), "-o", str(out), "-q"], env)
    try:
        wait_for_lines(p, out, 3)
        t0 = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)  # Ctrl-C in a terminal reaches the whole foreground process group
        else:
            p.send_signal(sig)  # `kill PID`
        rc = p.wait(timeout=10)  # hang guard
        latency = time.monotonic() - t0
        stderr = p.stderr.read()
    finally:
        kill_session(p)
    print(f"\n{sig.name}: exit {rc} {latency:.3f}s after the signal")
    assert rc == 130, stderr
    assert b"Traceback" not in stderr and stderr == b"", stderr
    recs = read_jsonl(out)  # every line complete, valid JSON
    assert recs[0]["type"] == "header"
    assert recs[-1]["type"] == "summary" and recs[-1]["interrupted"] is True
    results = recs[1:-1]
    assert all(r["type"] == "result" for r in results)
    assert recs[-1]["files"] == len(results) < N_IMAGES + 2  # really interrupted
    assert [r["path"] for r in results] == [r["path"] for r in clean[1 : 1 + len(results)]]
    assert wait_gone(p.pid) == [], "decode workers outlived the scan"

    if sig == signal.SIGINT:
        # An interrupted file (with its "interrupted" summary) resumes to the clean result.
        r = run_cli("scan", str(bigdir), "--resume", str(out), "-q", env=env)
        assert r.returncode == 2 and r.stderr == b"", r.stderr
        assert_same_as_clean(read_jsonl(out), clean)


def test_interrupt_json_format(tmp_path, bigdir, env):
    out = tmp_path / "out.json"
    p = start_scan([str(bigdir), "--format", "json", "-o", str(out), "-q"], env)
    try:
        # JSON is written only at the end: give the scan a head start past its first batch.
        head_start = time.monotonic() + 2.5
        while time.monotonic() < head_start and p.poll() is None:
            time.sleep(0.05)
        assert p.poll() is None, "scan finished before the interrupt"
        t0 = time.monotonic()
        os.killpg(p.pid, signal.SIGINT)
        rc = p.wait(timeout=10)
        latency = time.monotonic() - t0
        stderr = p.stderr.read()
    finally:
        kill_session(p)
    print(f"\nSIGINT (--format json): exit {rc} {latency:.3f}s after the signal")
    assert rc == 130 and stderr == b"", stderr
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["header"]["type"] == "header"
    assert doc["summary"]["interrupted"] is True
    assert doc["summary"]["files"] == len(doc["results"]) < N_IMAGES + 2
    assert all(r["type"] == "result" for r in doc["results"])
    assert [f for f in os.listdir(tmp_path) if f != "out.json"] == [], "temporary file left behind"


STORM = r"""
import os, signal, sys, threading, time
from codescan.decoding.examine import Examined, ExamineConfig
from codescan.inputs.walk import Entry
from codescan.decoding.feed import DecodePool

hits = 0
def on_int(signum, frame):  # a Python handler, not SIG_IGN: SIG_IGN would be inherited and hide the bug
    global hits
    hits += 1
signal.signal(signal.SIGINT, on_int)
stop = threading.Event()
def storm():  # Ctrl-C, again and again, to the whole process group while the pool starts
    while not stop.is_set():
        os.killpg(0, signal.SIGINT)
        time.sleep(0.005)
threading.Thread(target=storm, daemon=True).start()
path = sys.argv[1]
pool = DecodePool(workers=2, config=ExamineConfig(), timeout=20, window=8)
outs = [o for _, o in pool.outcomes(iter([Entry(display=path, path=os.fsencode(path))] * 6))]
stop.set()
print(hits, sum(isinstance(o, Examined) for o in outs))
"""


def test_ctrl_c_while_decoders_start(tmp_path):
    """Ctrl-C hits the forkserver and workers too; while they start up it must not kill them
    (a dead forkserver prints a KeyboardInterrupt traceback on the user's terminal)."""
    img = tmp_path / "a.png"
    textured_image(np.random.default_rng(0), 100, 100).save(img)
    p = subprocess.run(
        [sys.executable, "-P", "-c", STORM, str(img)], capture_output=True, timeout=120, start_new_session=True
    )
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode(errors="replace")[-3000:]
    hits, decoded = map(int, p.stdout.split())
    print(f"\n{hits} SIGINTs to the process group while the decode pool started")
    assert hits > 0 and decoded == 6  # the storm ran from before the pool started until it was done


CRASH = r"""
import os, signal, sys, threading, time
os.environ["CODESCAN_TEST_STALL_MARKER"] = "stall_"  # before the forkserver starts: workers inherit it
from codescan.decoding.examine import Examined, ExamineConfig
from codescan.inputs.walk import Entry
from codescan.decoding.feed import DecodePool

good, stall = sys.argv[1], sys.argv[2]
pool = DecodePool(workers=2, config=ExamineConfig(), timeout=60, window=8)
def killer():  # the OOM killer strikes the worker stuck on the stalled file
    while True:
        for worker in list(pool._workers):
            if worker.current is not None and b"stall_" in worker.current.path:
                time.sleep(0.3)
                os.kill(worker.proc.pid, signal.SIGKILL)
                return
        time.sleep(0.01)
threading.Thread(target=killer, daemon=True).start()
entries = [Entry(display=p, path=os.fsencode(p)) for p in (good, stall, good, good, good)]
for entry, outcome in pool.outcomes(iter(entries)):
    if isinstance(outcome, Examined):
        print("decoded")
    else:
        print(outcome.code, outcome.message)
"""


def test_dead_decoder_is_corrupt_and_the_scan_goes_on(tmp_path):
    rng = np.random.default_rng(1)
    textured_image(rng, 100, 100).save(tmp_path / "a.png")
    textured_image(rng, 100, 100).save(tmp_path / "stall_b.png")
    p = subprocess.run(
        [sys.executable, "-P", "-c", CRASH, str(tmp_path / "a.png"), str(tmp_path / "stall_b.png")],
        capture_output=True,
        timeout=90,  # hang guard; the pool's own deadline (60 s) must not be what ends the stall
        start_new_session=True,
    )
    assert p.returncode == 0 and p.stderr == b"", p.stderr.decode(errors="replace")[-3000:]
    lines = p.stdout.decode().splitlines()
    assert lines == ["decoded", "corrupt the decoder crashed on this file", "decoded", "decoded", "decoded"], lines


# --------------------------------------------------------------------------- SIGKILL and resume


def test_sigkill_then_resume_equals_clean(tmp_path, bigdir, env, clean):
    out = tmp_path / "a.jsonl"
    p = start_scan([str(bigdir), "-o", str(out), "-q"], env)
    try:
        wait_for_lines(p, out, 20)
        p.kill()  # SIGKILL: no chance to write a summary
        p.wait(timeout=10)
        assert wait_gone(p.pid) == [], "decode workers outlived a killed scan"
    finally:
        kill_session(p)
    partial = out.read_bytes()
    assert b'"type": "summary"' not in partial
    n_done = partial.count(b"\n") - 1
    assert 0 < n_done < N_IMAGES + 2
    r = run_cli("scan", str(bigdir), "--resume", str(out), "-q", env=env)
    assert r.returncode == 2 and r.stderr == b"", r.stderr
    print(f"\nSIGKILL after {n_done} results; resumed the other {N_IMAGES + 2 - n_done}")
    assert_same_as_clean(read_jsonl(out), clean)


@pytest.mark.parametrize(
    "keep",
    [
        32,  # the first batch (32 images) complete, torn inside the next one's first line
        41,  # torn mid-batch: scores must not depend on batch mates (heads score row by row)
    ],
)
def test_torn_last_line_is_redone(tmp_path, bigdir, env, clean, keep):
    out = tmp_path / "a.jsonl"
    lines = [json.dumps(r) for r in clean]
    torn = lines[1 + keep][: len(lines[1 + keep]) // 2]
    out.write_text("\n".join(lines[: 1 + keep]) + "\n" + torn, encoding="utf-8")
    r = run_cli("scan", str(bigdir), "--resume", str(out), "-q", env=env)
    assert r.returncode == 2 and r.stderr == b"", r.stderr
    assert_same_as_clean(read_jsonl(out), clean)


def test_resume_keeps_the_file_mode_and_symlink(tmp_path, bigdir, env, clean):
    """Resuming rewrites the file; it must stay the user's file (mode) at the user's place (link target)."""
    real = tmp_path / "real.jsonl"
    real.write_text("".join(json.dumps(r) + "\n" for r in clean[:33]), encoding="utf-8")
    real.chmod(0o640)
    link = tmp_path / "link.jsonl"
    link.symlink_to(real.name)
    r = run_cli("scan", str(bigdir), "--resume", str(link), "-q", env=env)
    assert r.returncode == 2 and r.stderr == b"", r.stderr
    assert link.is_symlink() and os.readlink(link) == real.name
    assert stat.S_IMODE(real.stat().st_mode) == 0o640
    assert_same_as_clean(read_jsonl(real), clean)
    assert sorted(os.listdir(tmp_path)) == ["link.jsonl", "real.jsonl"]  # no temporary file left


def test_resume_with_other_head_is_refused(tmp_path, bigdir, env, clean):
    out = tmp_path / "a.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in clean[:30]), encoding="utf-8")
    before = out.read_bytes()
    r = run_cli("scan", str(bigdir), "--resume", str(out), "--head", "knn", "-q", env=env)
    assert r.returncode == 2
    err = r.stderr.decode()
    assert err.startswith("codescan: error:") and err.count("\n") == 1 and "head" in err, err
    assert b"Traceback" not in r.stderr
    assert out.read_bytes() == before, "a refused resume must not touch the file"


# --------------------------------------------------------------------------- full disk


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv"])
def test_full_disk_is_one_line(tmp_path, env, fmt):
    rng = np.random.default_rng(5)
    for i in range(3):
        textured_image(rng, 100, 100).save(tmp_path / f"i{i}.png")
    p = run_cli("scan", str(tmp_path), "-o", "/dev/full", "--format", fmt, env=env)
    err = p.stderr.decode()
    assert p.returncode == 2, err
    assert err.startswith("codescan: error:") and err.count("\n") == 1, err
    assert "no space" in err.lower() and "Traceback" not in err
