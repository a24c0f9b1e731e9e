"""`scan --ray local` keeps Ray's folders (temp, session, logs, sockets, object store, spilled
objects) in a fresh private folder of the user's, never in Ray's shared /tmp/ray (0777, not
sticky), and removes it when the scan ends; an unsuitable $XDG_RUNTIME_DIR is not used."""

from __future__ import annotations

import atexit
import base64
import json
import os
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import CODESCAN, textured_image

pytest.importorskip("ray", reason="the ray extra is part of the test install")

# Ray's folders as its processes' command lines name them (as security/round2/R8 reads them).
FLAGS = ("session_dir", "session-dir", "temp_dir", "temp-dir", "log_dir", "log-dir", "logs-dir", "plasma_directory")
SOCKETS = ("raylet_socket_name", "store_socket_name")


@pytest.fixture()
def short_dir():
    """A 0700 folder with a short path (Ray's socket paths must fit 107 bytes): pytest's are too long."""
    folder = Path(tempfile.mkdtemp(prefix="rp", dir="/tmp"))
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


def descendants(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                ppid = int(Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def ray_folders(argv: list[str]) -> dict[str, str]:
    found = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        key = key.lstrip("-")
        if key in FLAGS and value:
            found[key.replace("-", "_")] = value
        elif key in SOCKETS and value:
            found["sockets"] = os.path.dirname(value)
        elif key == "config_list":
            conf = json.loads(base64.b64decode(value + "=="))
            spill = json.loads(conf.get("object_spilling_config") or "{}")
            path = (spill.get("params") or {}).get("directory_path")
            if path:
                found["spill"] = path if isinstance(path, str) else path[0]
    return found


def exposed(path: str) -> str | None:
    """Why a folder on `path`'s way from / lets others in: a link, or writable by group/others
    without the sticky bit; or no folder on it is this user's alone (0700). None: private."""
    parts = os.path.abspath(path).split(os.sep)
    private = False
    for i in range(1, len(parts) + 1):
        p = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            break
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            return f"{p} is a symlink"
        if mode & 0o022 and not mode & stat.S_ISVTX:
            return f"{p} is {mode:04o}"
        private = private or (stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not mode & 0o077)
    return None if private else f"no folder on {path} is 0700 and this user's"


def test_local_scan_keeps_every_ray_folder_private_and_removes_it(home, tmp_path, short_dir):
    rng = np.random.default_rng(8)
    (tmp_path / "img").mkdir()
    for i in range(2):
        textured_image(rng, 64, 48).save(tmp_path / "img" / f"{i}.png")
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "XDG_RUNTIME_DIR": str(short_dir)}
    cmd = [CODESCAN, "scan", "-q", "--no-cache", "--ray", "local", "--ray-workers", "1", "-o", str(out), str(tmp_path / "img")]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen: dict[str, str] = {}
    problems: dict[str, str] = {}
    try:
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            for pid in descendants(proc.pid):
                try:
                    argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode("utf-8", "replace").split("\0")
                except OSError:
                    continue
                seen.update(ray_folders(argv))
            for key, path in seen.items():  # checked again at every look: no worker may open them up later
                if key not in problems and (why := exposed(path)):
                    problems[key] = f"{path}: {why}"
            time.sleep(0.2)
        stderr = proc.communicate(timeout=60)[1].decode(errors="replace")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
    assert proc.returncode == 0, stderr[-3000:]
    assert len(out.read_text().splitlines()) == 2 + 2  # header, 2 records, summary
    assert {"session_dir", "temp_dir", "log_dir", "sockets", "spill", "plasma_directory"} <= set(seen), seen
    assert not problems, problems
    (made,) = {Path(seen[k]).relative_to(short_dir).parts[0] for k in seen if k != "plasma_directory"}
    assert made.startswith("codescan-")  # all in one folder codescan made in $XDG_RUNTIME_DIR
    plasma = Path(seen["plasma_directory"])
    assert plasma.parent.name == f"codescan-ray-{os.geteuid()}" or plasma.is_relative_to(short_dir / made)
    assert not (short_dir / made).exists() and not plasma.exists()  # removed when the scan ended
    assert list(short_dir.iterdir()) == []


def _session(monkeypatch, xdg: Path | None):
    from codescan.scan.ray_cluster import PrivateSession

    if xdg is None:
        monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    else:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(xdg))
    session = PrivateSession.create()
    atexit.unregister(session.close)
    return Path(session.folder), session


def test_only_a_runtime_dir_of_the_users_alone_is_used(monkeypatch, short_dir):
    from codescan.scan import ray_cluster as ray_scan

    shared = short_dir / "tmp"  # stands for /tmp: shared, sticky
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setattr(ray_scan, "FALLBACK_PARENT", str(shared))
    monkeypatch.setattr(ray_scan, "_SOCKET_TAIL", 20)  # these folders are deeper than /tmp: room made for them
    own = shared / f"codescan-ray-{os.geteuid()}"

    good = short_dir / "run"
    good.mkdir(mode=0o700)
    folder, session = _session(monkeypatch, good)
    assert folder.parent == good and folder.name.startswith("codescan-") and stat.S_IMODE(folder.stat().st_mode) == 0o700
    session.close()
    assert not folder.exists() and good.exists()

    unsuitable = {
        "group-writable": 0o770,
        "readable by others": 0o755,
        "missing": None,
    }
    for why, mode in unsuitable.items():
        xdg = short_dir / why.replace(" ", "-")
        if mode is not None:
            xdg.mkdir()
            xdg.chmod(mode)
        folder, session = _session(monkeypatch, xdg)
        assert folder.parent == own, why  # /tmp/codescan-ray-UID: 0700, kept
        assert stat.S_IMODE(own.stat().st_mode) == stat.S_IMODE(folder.stat().st_mode) == 0o700
        session.close()
        assert not folder.exists() and own.exists()
    deep = short_dir / ("d" * 80)  # Ray's socket paths would not fit
    deep.mkdir(mode=0o700)
    assert _session(monkeypatch, deep)[0].parent == own
    assert _session(monkeypatch, None)[0].parent == own
    if os.geteuid() == 0:  # someone else's folders: only root can make them here
        theirs = short_dir / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 4242, 4242)
        assert _session(monkeypatch, theirs)[0].parent == own
        os.chown(own, 4242, 4242)  # /tmp/codescan-ray-UID made first by someone else: not used
        folder, _ = _session(monkeypatch, theirs)
        assert folder.parent == shared and stat.S_IMODE(folder.stat().st_mode) == 0o700


def test_no_private_folder_is_one_line_and_exit_2(home, monkeypatch, short_dir):
    from codescan.scan import ray_cluster as ray_scan
    from codescan.scan.ray_cluster import PrivateInstanceError

    open_tmp, xdg = short_dir / "tmp", short_dir / "run"
    open_tmp.mkdir()
    open_tmp.chmod(0o777)  # a /tmp without the sticky bit: anyone may rename what is in it
    xdg.mkdir()
    xdg.chmod(0o770)
    monkeypatch.setattr(ray_scan, "FALLBACK_PARENT", str(open_tmp))
    with pytest.raises(PrivateInstanceError) as caught:
        _session(monkeypatch, xdg)
    message = str(caught.value)
    assert "\n" not in message and "$XDG_RUNTIME_DIR" in message and "sticky" in message, message

    code = "import sys, codescan.scan.ray_cluster as r; r.FALLBACK_PARENT = sys.argv.pop(1); from codescan.cli import main; main()"
    (short_dir / "img").mkdir()
    textured_image(np.random.default_rng(0), 40, 40).save(short_dir / "img" / "a.png")
    p = subprocess.run(
        [sys.executable, "-P", "-c", code, str(open_tmp), "scan", str(short_dir / "img"), "--no-cache", "--ray", "local"],
        capture_output=True, env={**os.environ, "XDG_RUNTIME_DIR": str(xdg)}, timeout=300,
    )
    err = p.stderr.decode()
    assert p.returncode == 2 and err.count("\n") == 1, err
    assert err.startswith("codescan: error: --ray local needs a private folder"), err
    assert not any(open_tmp.iterdir()) or [x.name for x in open_tmp.iterdir()] == [f"codescan-ray-{os.geteuid()}"]


def test_rays_own_lines_go_to_the_driver_log_and_codescans_stay_on_stderr(tmp_path):
    """Ray's C++ core writes into fd 2 (`core_worker.cc:2465 ...`) whatever Python's logging says:
    after connect's redirect those bytes land in the log, while codescan's messages still reach
    the terminal's stderr."""
    log = tmp_path / "ray" / "driver.log"
    code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from codescan.output import messages\n"
        "from codescan.scan.ray_cluster import _stderr_into\n"
        f"_stderr_into(Path({str(log)!r}))\n"
        "os.write(2, b'[2026-12-06 core_worker.cc:2465: Task failed]\\n')\n"
        "messages.note('still here')\n"
    )
    p = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and p.stderr == "codescan: still here\n", p.stderr
    assert "core_worker.cc:2465" in log.read_text() and stat.S_IMODE(log.stat().st_mode) == 0o600
