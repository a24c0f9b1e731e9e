"""Small filesystem helpers shared by the caches and the private Ray instance."""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write beside the target and rename over it: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def unsafe_status(st: os.stat_result, owners: tuple[int, ...]) -> str | None:
    """Why a file or folder with this status could hold someone else's data, or None: it is
    owned by none of `owners`, or group or others can write it."""
    if st.st_uid not in owners:
        return f"owned by uid {st.st_uid}, not by uid {os.geteuid()}"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def private_folder_problem(path: str | os.PathLike[str]) -> str | None:
    """Why `path` is not a folder only this user can enter (a link is not followed), or None."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        return exc.strerror or str(exc)
    if stat.S_ISLNK(st.st_mode):
        return "a symbolic link"
    if not stat.S_ISDIR(st.st_mode):
        return "not a folder"
    problem = unsafe_status(st, (os.geteuid(),))
    if problem is None and st.st_mode & 0o077:
        problem = f"open to group or others (mode {stat.S_IMODE(st.st_mode):04o})"
    return problem


def swappable_path_problem(path: str | os.PathLike[str]) -> str | None:
    """Why someone else could rename or replace a folder on the way from / to `path` (its real
    path): one owned by neither this user nor root, or writable by group or others without the
    sticky bit. None when only this user (or root) can change what `path` names."""
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    for i in range(1, len(parts) + 1):
        folder = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(folder)
        except OSError as exc:
            return f"{folder}: {exc.strerror or exc}"
        if st.st_uid not in (os.geteuid(), 0):
            return f"{folder} is owned by uid {st.st_uid}, not by uid {os.geteuid()} or root"
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH) and not st.st_mode & stat.S_ISVTX:
            return f"{folder} is writable by group or others without the sticky bit (mode {stat.S_IMODE(st.st_mode):04o})"
    return None
