"""`codescan scan --ray`: the same scan as a Ray Data pipeline, for trees one machine cannot finish.

The driver lists the inputs in the scan's documented order (local walk, or pyarrow listing for
s3://, gs://, file:// URIs) and numbers them. Ray Data then runs two actor pools:

- decode (CPU): each actor owns a codescan DecodePool with one killable decode process, so the
  per-file deadline, crash isolation, limits and evidence are exactly those of a local scan;
  a file that kills its decoder is an error record, not a failed task.
- embed (one per GPU, or CPU slots): the bundle's engine and every head's score. Crops leave
  the object store here; only small rows go on.

Records are made by the local scan's own Judge, so each is identical to the local scan's.
Either the driver takes rows back, restores listing order and writes them through the usual
reporters (`scan`), or the embed actors write them as JSONL shards named by listing number and
the driver only counts statuses (`RayExecutor` with `shards`). Ray provides the fault tolerance: actors
are restarted and their tasks retried. The scan cache is per machine and stays off under Ray.

`--ray local` starts a private instance. Ray cannot bind its daemons to loopback only, so they
listen on all interfaces, and what keeps the instance private is Ray's token authentication
(Ray >= 2.52): always on for this instance, whatever RAY_AUTH_MODE / RAY_AUTH_TOKEN the user's
environment holds, with a random token kept in the store, readable by this user only. Its
folders (session, logs, sockets, object store, spilled objects) are never Ray's shared /tmp/ray:
they lie in a fresh 0700 folder (PrivateSession), removed when the scan ends. Joining a cluster
(`auto`, an address) changes nothing there: securing it is the cluster's business.
"""

from __future__ import annotations

import os
import pickle
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from codescan.core.records import (
    Header,
    Ident,
    Result,
)
from codescan.decoding.examine import ExamineConfig
from codescan.engines.registry import Resolved
from codescan.inputs.pinned import Pin
from codescan.inputs.walk import Entry, WalkOptions
from codescan.scan.judge import Judge
from codescan.scan.ray_cluster import RayOptions, connect, driver_log
from codescan.scan.ray_rows import (
    ARCHIVE_RECORD,
    CROP_SHAPE,
    Unit,
    _decoded_row,
    _decoded_table,
    _origin_columns,
    _write_shards,
    record,
)

if TYPE_CHECKING:
    import pyarrow as pa

    from codescan.scan.plan import ScanPlan


class DecodeStage:
    """Ray actor: units → crops, evidence and typed failures, through codescan's own decode pool.

    Each output row carries (`seq`, `sub`): the unit's listing number and the record's place in
    it (0 for a file, the member index for a member), and `last` on the unit's final row (an
    archive ends with a row of kind `end`), so the driver can restore the order without knowing
    in advance how many members an archive holds.
    """

    CHUNK = 64

    def __init__(self, config: ExamineConfig, timeout: float, walk: WalkOptions) -> None:
        from codescan.decoding.feed import DecodePool

        self.pool = DecodePool(workers=1, config=config, timeout=timeout, window=8)
        self.walk = walk

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[pa.Table]:
        """Tables of at most CHUNK rows: one archive can hold far more crops than fit in one block."""
        # Units the driver listed (this job's own objects, as multiprocessing would send them),
        # with absolute paths: the workers do not share the driver's working directory.
        units: list[tuple[int, Unit]] = [unit for x in batch["units"] for unit in pickle.loads(bytes(x))]
        tags: deque[tuple[int, int, bool]] = deque()  # (seq, sub, last) per entry handed to the pool; sub -1: an end row
        rows: list[dict[str, Any]] = []

        def ends() -> None:
            while tags and tags[0][1] < 0:
                seq, _, _ = tags.popleft()
                rows.append({"seq": seq, "sub": ARCHIVE_RECORD + 1, "last": True, "kind": "end", "has_evidence": False})

        for entry, o in self.pool.outcomes(self._entries(units, tags)):
            ends()
            seq, sub, last = tags.popleft()
            rows.append({"seq": seq, "sub": sub, "last": last, "display": os.fsencode(entry.display)}
                        | _decoded_row(o) | _origin_columns(entry.origin))
            if len(rows) >= self.CHUNK:
                yield _decoded_table(rows)
                rows = []
        ends()
        if rows:
            yield _decoded_table(rows)

    def _entries(self, units: list[tuple[int, Unit]], tags: deque[tuple[int, int, bool]]) -> Iterator[Entry]:
        from codescan.inputs.sources import expand

        for seq, unit in units:
            if not unit.archive:
                tags.append((seq, 0, True))
                yield unit.entry
                continue
            for member in expand(unit.entry, self.walk):
                if member.origin is None:  # the archive's own record: its listing failed
                    if unit.done_itself:
                        continue
                    tags.append((seq, ARCHIVE_RECORD, False))
                elif member.origin.member_index in unit.done:
                    continue
                else:
                    tags.append((seq, member.origin.member_index, False))
                yield member
            tags.append((seq, -1, True))


class EmbedStage:
    """Ray actor: crops → every head's score. Without `shards` the rows go back to the driver;
    with it the actor makes the records itself and writes them, one shard per run of
    consecutive files, and only statuses go back."""

    def __init__(
        self,
        home: str,
        weights: str,
        resolved: Resolved,
        threads: int | None,
        judge: Judge,
        shards: str | None = None,
    ) -> None:
        os.environ["CODESCAN_HOME"] = home
        from codescan.engines.registry import build
        from codescan.weights.bundle import load_bundle

        bundle = load_bundle(weights)
        self.heads = bundle.head_set()
        self.engine = build(bundle, resolved.engine, resolved.precision, threads)
        self.judge = judge
        self.shards = shards

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        crops = batch["crop"].to_pylist()
        idx = [i for i, c in enumerate(crops) if c is not None]
        scores: dict[str, list[float | None]] = {name: [None] * len(crops) for name in self.heads.names()}
        if idx:
            stacked = np.stack([np.frombuffer(crops[i], np.uint8).reshape(CROP_SHAPE) for i in idx])
            emb = self.engine.embed(stacked)  # (B, 224, 224, 3) uint8 -> (B, D)
            for i, per_file in zip(idx, self.heads.scores(emb)):
                for name, value in per_file.items():
                    scores[name][i] = value
        scored = batch.drop_columns(["crop"])
        for name, values in scores.items():
            scored = scored.append_column(f"score_{name}", pa.array(values, pa.float64()))
        if self.shards is None:
            return scored
        rows = scored.to_pylist()
        made = [None if row["kind"] == "end" else record(self.judge, row) for row in rows]
        _write_shards(Path(self.shards), rows, made)
        return pa.table(
            {
                "seq": pa.array([row["seq"] for row in rows], pa.int64()),
                "sub": pa.array([row["sub"] for row in rows], pa.int64()),
                "last": pa.array([row["last"] for row in rows], pa.bool_()),
                "kind": pa.array([row["kind"] for row in rows], pa.string()),
                "status": pa.array([r and r.status for r in made], pa.string()),
                "combined": pa.array([r and r.combined for r in made], pa.string()),
            }
        )


def _rows(
    plan: ScanPlan, resolved: Resolved, units: list[Unit | None], options: RayOptions, shards: Path | None
) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows, in no particular order; a unit's `seq` is its place in `units`."""
    import ray

    from codescan.weights.store import store_root

    cfg = plan.config
    batch = plan.batch_size(resolved.device)
    todo = [{"units": pickle.dumps(task)} for task in _tasks(units, batch)]
    if not todo:
        return iter(())
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = options.workers or cpus
    embedders = gpus if resolved.on_gpu else workers  # one per GPU, else one per decode actor
    # CPU share per actor: decode and embed actors together fill the CPUs Ray reports.
    share = min(1.0, cpus / (workers + (0 if resolved.on_gpu else embedders)))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # stderr belongs to codescan's own progress

    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 4096)))
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "config": plan.examine_config(None),  # the scan cache is one machine's: off under Ray (the plan says so too)
            "timeout": cfg.decode_timeout,
            "walk": cfg.walk,
        },
        batch_size=1,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=share,
    )
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "home": str(store_root()),
            "weights": plan.bundle.name,
            "resolved": resolved,
            "threads": None if resolved.on_gpu else max(1, int(share)),
            "judge": plan.judge,
            "shards": None if shards is None else str(shards.absolute()),
        },
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=embedders),
        batch_format="pyarrow",
        num_cpus=share,
        num_gpus=1 if resolved.on_gpu else 0,
    )
    return iter(ds.iter_rows())


def _tasks(units: list[Unit | None], files: int) -> Iterator[list[tuple[int, Unit]]]:
    """Decode tasks: runs of up to `files` consecutive files, and each archive alone (it is
    opened on the worker that reads it, and may hold any number of members)."""
    run: list[tuple[int, Unit]] = []
    for seq, unit in enumerate(units):
        if unit is None:
            continue
        if unit.archive:
            if run:
                yield run
                run = []
            yield [(seq, unit)]
            continue
        run.append((seq, unit))
        if len(run) == files:
            yield run
            run = []
    if run:
        yield run


def _probe(home: str, weights: str, engine: str, precision: str) -> Resolved:
    """Runs on a GPU worker: what `auto` (or the engine asked for) resolves to there."""
    os.environ["CODESCAN_HOME"] = home
    from codescan.engines.registry import resolve
    from codescan.weights.bundle import load_bundle

    return resolve(load_bundle(weights), engine, precision)


def resolve_engine(plan: ScanPlan, options: RayOptions) -> Resolved:
    """Decided by the cluster, never by the driver's own hardware: a CPU-only head node (the
    usual cluster) asks a GPU worker what the engine resolves to there; without GPUs in the
    cluster it is resolved here and must be a CPU engine. Nothing is built on the driver."""
    import ray

    from codescan.engines.protocol import EngineError
    from codescan.engines.registry import resolve
    from codescan.engines.specs import spec
    from codescan.weights.store import store_root

    connect(options, num_cpus=options.workers)
    wants_gpu = plan.engine == "auto" or spec(plan.engine).gpu
    if wants_gpu and int(ray.cluster_resources().get("GPU", 0)) > 0:
        probe = ray.remote(num_gpus=1, num_cpus=0)(_probe)
        return ray.get(probe.remote(str(store_root()), plan.bundle.name, plan.engine, plan.precision))
    resolved = resolve(plan.bundle, plan.engine, plan.precision)
    if resolved.on_gpu:  # this driver has a GPU, the cluster has none: actors asking for one would wait forever
        raise EngineError(
            f"engine {resolved.engine!r} needs a GPU and the Ray cluster has none: "
            "choose a CPU engine (--engine onnxruntime or torch)"
        )
    return resolved


@dataclass(frozen=True)
class Counted:
    """A record a shard-writing worker made and wrote: the driver only counts it."""

    status: str
    combined: str | None


class RayExecutor:
    """The job's executor on Ray Data: rows come back and are put in listing order, or, with
    `shards`, the workers write the records and only their statuses come back."""

    def __init__(self, plan: ScanPlan, options: RayOptions, shards: Path | None = None) -> None:
        self.plan, self.options, self.shards = plan, options, shards
        self._resolved: Resolved | None = None
        self.log = driver_log()  # where Ray's own lines go (connect): named by the CLI if the scan fails

    @property
    def resolved(self) -> Resolved:
        if self._resolved is None:
            self._resolved = resolve_engine(self.plan, self.options)
        return self._resolved

    def header(self) -> Header:
        r = self.resolved
        return self.plan.header(r.engine, r.device, r.precision)

    def batches(self, arguments: Iterable[str | bytes], skip: Collection[Ident] = ()) -> Iterator[list[Result] | list[Counted]]:
        """The outcomes of each unit (a file, or an archive's members), in listing order."""
        units = _units(arguments, self.plan.config.walk, skip)  # numbered before skipping: stable shard names
        rows = _rows(self.plan, self.resolved, units, self.options, shards=self.shards)
        waiting: dict[int, list[dict[str, Any]]] = {}  # rows of units whose turn has not come
        complete: set[int] = set()
        for seq, unit in enumerate(units):
            if unit is None:
                continue
            while seq not in complete:
                row = next(rows)
                waiting.setdefault(int(row["seq"]), []).append(row)
                if row["last"]:
                    complete.add(int(row["seq"]))
            done = [row for row in sorted(waiting.pop(seq), key=lambda r: r["sub"]) if row["kind"] != "end"]
            if self.shards is not None:
                yield [Counted(row["status"], row["combined"]) for row in done]
            else:
                yield [record(self.plan.judge, row) for row in done]


def _units(arguments: Iterable[str | bytes], walk: WalkOptions, skip: Collection[Ident]) -> list[Unit | None]:
    """The inputs as tasks, in listing order, archives unopened; None for a file already done."""
    from codescan.inputs.sources import units as list_units

    members: dict[str, set[int]] = {}
    for ident in skip:
        if isinstance(ident, tuple):
            members.setdefault(ident[0], set()).add(ident[1])
    out: list[Unit | None] = []
    for entry, archive in list_units(arguments, walk):
        # A worker on another node sees another st_dev for the same shared file: only the no-follow
        # part of the pin travels (pinned.Pin), never the listing's identity.
        pin = entry.pin and Pin(entry.pin.beneath)
        local = entry if entry.uri else replace(entry, path=os.path.abspath(entry.path), pin=pin)
        if archive:
            done = frozenset(members.get(entry.display, ()))
            out.append(Unit(local, archive=True, done=done, done_itself=entry.display in skip))
        else:
            out.append(None if entry.ident in skip else Unit(local))
    return out
