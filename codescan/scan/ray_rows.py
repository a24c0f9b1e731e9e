"""The rows Ray's stages pass: units of work, the Arrow schema of decoded rows, and the records
made from rows (by the same verdict maker as a local scan)."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codescan.core.records import (
    Evidence,
    ImageFacts,
    Origin,
    Result,
    error_result,
    skipped_result,
)
from codescan.decoding.examine import Examined, Skipped
from codescan.inputs.read import DecodeFailure
from codescan.inputs.walk import Entry
from codescan.scan.judge import Judge

if TYPE_CHECKING:
    import pyarrow as pa



CROP_SHAPE = (224, 224, 3)


ARCHIVE_RECORD = 10**12 - 1  # an archive's own record (a listing that failed) sorts after its members


@dataclass(frozen=True)
class Unit:
    """One task's worth of input: a file, or a whole archive or Parquet file opened on the worker.

    `done` holds the member indices already recorded (a resumed job), `done_itself` whether the
    archive's own error record is; the driver never reads an archive's contents.
    """

    entry: Entry
    archive: bool = False
    done: frozenset[int] = frozenset()
    done_itself: bool = False


def _write_shards(folder: Path, rows: list[dict[str, Any]], made: list[Result | None]) -> None:
    """One shard per run of rows that follow each other in listing order: the shards, in name
    order, are the local scan's result lines. A run goes on within a unit, and from a unit's last
    row to the next unit; a shard is named by its first (seq, sub), stable across retries and
    resumed jobs."""
    from codescan.output.reporters import write_shard

    order = sorted(range(len(rows)), key=lambda i: (rows[i]["seq"], rows[i]["sub"]))
    run: list[int] = []
    for k, i in enumerate(order):
        run.append(i)
        row, following = rows[i], rows[order[k + 1]] if k + 1 < len(order) else None
        if following is None or not (following["seq"] == row["seq"] or (row["last"] and following["seq"] == row["seq"] + 1)):
            kept = [j for j in run if made[j] is not None]
            if kept:
                write_shard(folder, (rows[kept[0]]["seq"], rows[kept[0]]["sub"]), [made[j] for j in kept])  # type: ignore[misc]
            run = []


@functools.cache
def _decoded_schema() -> pa.Schema:
    """The decode stage's typed columns (pyarrow is imported only under Ray)."""
    import pyarrow as pa

    evidence = pa.struct(
        [("kind", pa.string()), ("detail", pa.string()), ("generator", pa.string()),
         ("conclusive", pa.bool_()), ("valid", pa.bool_())]
    )
    return pa.schema(
        [("seq", pa.int64()), ("sub", pa.int64()), ("last", pa.bool_()), ("display", pa.binary()), ("crop", pa.binary()), ("kind", pa.string()),
         ("width", pa.int64()), ("height", pa.int64()), ("box", pa.list_(pa.int64())), ("format", pa.string()),
         ("sha256", pa.string()), ("code", pa.string()), ("message", pa.string()), ("evidence", pa.list_(evidence)),
         ("has_evidence", pa.bool_()), ("archive", pa.binary()), ("member", pa.binary()), ("member_index", pa.int64()),
         ("key", pa.binary())]
    )


def _decoded_table(rows: list[dict[str, Any]]) -> pa.Table:
    """An Arrow table with a fixed schema, not a dict of numpy arrays: Ray's guessing would turn
    equal-length byte strings into tensors."""
    import pyarrow as pa

    schema = _decoded_schema()
    return pa.Table.from_pydict({name: [row.get(name) for row in rows] for name in schema.names}, schema=schema)


def _origin_columns(origin: Origin | None) -> dict[str, Any]:
    """Names as bytes: a tar member's name may hold undecodable bytes (surrogates Arrow cannot store)."""
    if origin is None:
        return {}
    key = None if origin.key is None else os.fsencode(origin.key)
    return {"archive": os.fsencode(origin.archive), "member": os.fsencode(origin.member),
            "member_index": origin.member_index, "key": key}


def _decoded_row(o: Examined | DecodeFailure | Skipped) -> dict[str, Any]:
    """One decode outcome as typed columns (the crop as raw bytes); the driver rebuilds the
    record from them with the Judge, exactly as the local scan makes it."""
    evidence = getattr(o, "evidence", None)
    row: dict[str, Any] = {
        "evidence": None if evidence is None else [e.to_dict() for e in evidence],
        "has_evidence": evidence is not None,
    }
    if isinstance(o, Examined):
        assert o.decoded is not None  # no cache under Ray
        facts = o.facts
        row |= {"kind": "image", "crop": o.decoded.crop.tobytes(), "width": facts.width, "height": facts.height,
                "box": list(facts.boxes[0]), "format": facts.format, "sha256": o.sha256.hex()}
    elif isinstance(o, DecodeFailure):
        row |= {"kind": "failure", "code": o.code, "message": o.message, "sha256": o.sha256}
    else:
        row |= {"kind": "skipped", "code": o.code}
    return row


def record(judge: Judge, row: dict[str, Any]) -> Result:
    """A typed row back into its record: the same Judge and record makers as the local scan."""
    display = os.fsdecode(row["display"])
    evidence = tuple(Evidence.from_dict(d) for d in row["evidence"] or ()) if row["has_evidence"] else None
    origin = None
    if row.get("archive") is not None:
        key = None if row["key"] is None else os.fsdecode(row["key"])
        origin = Origin(os.fsdecode(row["archive"]), os.fsdecode(row["member"]), row["member_index"], key)
    if row["kind"] == "image":
        scores = {k[len("score_"):]: v for k, v in row.items() if k.startswith("score_")}
        facts = ImageFacts(row["width"], row["height"], row["format"], (tuple(row["box"]),))
        return judge.image(display, row["sha256"], evidence, facts, (scores,), origin)
    if row["kind"] == "failure":
        return error_result(display, row["code"], row["message"], row["sha256"], evidence, origin)
    return skipped_result(display, row["code"], origin)
