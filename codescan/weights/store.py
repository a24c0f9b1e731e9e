"""The store under $CODESCAN_HOME: where it is, bundle names, the default bundle's name."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

BUNDLE_FORMAT = 1


DEFAULT_NAME = "code"


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class WeightsError(Exception):
    """A bundle problem the user can act on; the message says how."""


def store_root() -> Path:
    env = os.environ.get("CODESCAN_HOME")
    if env:
        return Path(env).expanduser()
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("codescan"))


def ensure_store() -> Path:
    """Create the store private to the user (0700, whatever the umask): the scan cache in it is
    refused when others could write its folder, and so would the default cache be under umask 002."""
    root = store_root()
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    return root


def weights_dir() -> Path:
    return store_root() / "weights"


def sha256_file(path: Path) -> str:
    """The file's sha256, read through one reused buffer (hashlib.file_digest): a fresh 1 MB bytes
    object per read cost a scan's start-up 7 ms more over the 22 MB of weights it checks."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def _default_file() -> Path:
    return store_root() / "default-weights"  # beside weights/, so no bundle name can collide with it


def stored_default() -> str | None:
    """The name `codescan weights default NAME` stored, if any (an unreadable file counts as none)."""
    try:
        name = _default_file().read_text().strip()
    except OSError:
        return None
    return name if _NAME_RE.match(name) else None


def chosen_name(name: str | None) -> str:
    """The bundle a command uses: --weights > CODESCAN_WEIGHTS > `codescan weights default` > code."""
    return name or os.environ.get("CODESCAN_WEIGHTS") or stored_default() or DEFAULT_NAME


def check_name(name: str) -> str:
    if not _NAME_RE.match(name):
        raise WeightsError(f"invalid bundle name {name!r}: use letters, digits, '.', '_' or '-'")
    return name
