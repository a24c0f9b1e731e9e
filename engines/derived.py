"""Files derived from a bundle and stored in its folder, verified like the weights.

The word is "derived", never "cache": in codescan the cache is the scan cache (verdicts by
content), and the thumbnail cache is always named so.

bundle.json pins the encoder and heads, but a file built from them decides verdicts just as
much: one changed initializer in a stored ONNX graph changes every score. So each derived file
(ONNX graphs, TensorRT engine files, gates.json) is written with a record beside it,
``<file>.record.json``, and read only when the record still vouches for it: same bundle
digest, same path in the bundle (a record cannot be moved to another file or bundle), same key
(what the file was built from) and the sha256 of the bytes read. The bytes hashed are the
bytes returned, so a file changed between the check and the use is not used either.

One record per file rather than one manifest per bundle: processes building different files at
once (Ray actors, `codescan compile` beside a scan) never rewrite each other's records.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codescan.engines.protocol import EngineError

from codescan.core.fsutil import atomic_write_bytes

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

RECORD_FORMAT = 1
RECORD_SUFFIX = ".record.json"


class DerivedFileError(EngineError):
    """A derived file that fails its record and that codescan cannot rebuild by itself."""


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def _record(bundle: Bundle, path: Path, key: Mapping[str, Any], data: bytes) -> dict[str, Any]:
    return {
        "format": RECORD_FORMAT,
        "bundle_digest": bundle.digest,
        "file": path.relative_to(bundle.path).as_posix(),
        "key": json.loads(json.dumps(key)),  # as it reads back from JSON (tuples become lists)
        "sha256": hashlib.sha256(data).hexdigest(),
        "bytes": len(data),
    }


def write(bundle: Bundle, path: Path, data: bytes, key: Mapping[str, Any]) -> None:
    """File first, record last, each atomically: a record only ever describes a complete file."""
    record_path(path).unlink(missing_ok=True)
    atomic_write_bytes(path, data)
    record = json.dumps(_record(bundle, path, key, data), indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(record_path(path), record.encode())


def read_record(path: Path) -> dict[str, Any] | None:
    """The record beside `path` as written, unchecked: for listing what is stored, never for trusting it."""
    try:
        record = json.loads(record_path(path).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def read(bundle: Bundle, path: Path, key: Mapping[str, Any]) -> bytes | None:
    """The file's bytes if its record vouches for them; None when it is missing, has no record,
    or differs from what was written for this bundle and key."""
    record = read_record(path)
    if record is None:
        return None
    try:
        data = path.read_bytes()
    except OSError:
        return None
    return data if record == _record(bundle, path, key, data) else None


def read_or_refuse(bundle: Bundle, path: Path, key: Mapping[str, Any], remedy: str) -> bytes | None:
    """For a file codescan cannot rebuild on its own: None when it does not exist, its bytes when
    its record vouches for them, otherwise a one-line DerivedFileError that ends with `remedy`."""
    if not path.exists():
        return None
    data = read(bundle, path, key)
    if data is None:
        raise DerivedFileError(
            f"{path} does not match the record codescan wrote with it for bundle {bundle.name!r} "
            f"(changed since, or written without one); {remedy}"
        )
    return data
