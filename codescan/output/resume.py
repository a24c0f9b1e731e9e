"""Continue a JSONL scan that was interrupted or killed.

The file is the state: its header says how it was made, its result lines say which paths
are done. A torn last line (no newline, or not JSON) and any summary line are dropped, the
kept lines are rewritten atomically, and the new scan appends only paths not yet recorded,
so a resumed scan ends with the same records as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codescan.core import strictjson
from codescan.core.records import Ident, ident_of, is_result_record

# Header fields that must agree: resuming with other weights, head, thresholds, evidence or crops would mix
# two different questions in one file.
MUST_MATCH = ("schema_version", "weights", "head", "thresholds", "evidence", "crops")


class ResumeError(ValueError):
    """The file cannot be resumed as asked; the message says why."""


@dataclass
class ResumeState:
    header: dict[str, Any] | None = None
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def done(self) -> set[Ident]:
        return {ident_of(r) for r in self.results}


def load(path: str) -> ResumeState:
    """Read what a previous run left; a missing or empty file means a fresh start."""
    state = ResumeState()
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return state
    first = raw.lstrip().split(b"\n", 1)[0].strip()
    if first in (b"{", b"[") or first.startswith(b'{"header"'):  # --format json: one document, indented
        raise ResumeError(f"{path}: JSON output cannot be resumed (it is written whole at the end); scan into JSONL (-o FILE.jsonl) to resume")
    lines = raw.split(b"\n")
    if lines and lines[-1] != b"":
        lines = lines[:-1]  # torn: the writer was killed mid-line
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            obj = strictjson.loads(line)
        except ValueError:
            if number == len(lines):
                continue  # torn line that happened to end in a newline-less flush
            raise ResumeError(
                f"{path}: line {number} is not JSON; only codescan's JSONL output can be resumed (not CSV, JSON or Parquet)"
            ) from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "header":
            state.header = obj
        elif kind == "result" and is_result_record(obj):
            state.results.append(obj)
        elif kind != "summary":
            raise ResumeError(f"{path}: line {number} is not a codescan record")
    if state.results and state.header is None:
        raise ResumeError(f"{path}: no header line; not a codescan JSONL file")
    return state


def check_compatible(state: ResumeState, header: dict[str, Any], path: str) -> None:
    if state.header is None:
        return
    if "inputs" in state.header and state.header["inputs"] != header.get("inputs"):
        old, new = state.header["inputs"], header.get("inputs") or {}
        raise ResumeError(
            f"{path} was written for other PATH arguments ({old.get('count')} then, {new.get('count')} now, "
            "compared by their sha256); resume with the same arguments (with --files-from -, the same list on "
            "stdin) or start a new file"
        )
    for key in MUST_MATCH:
        if state.header.get(key) != header.get(key):
            raise ResumeError(
                f"{path} was written with a different {key} ({state.header.get(key)!r} vs {header.get(key)!r}); "
                "resume with the same options or start a new file"
            )
