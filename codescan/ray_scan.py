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
environment holds, with a random token kept in the store, readable by this user only. Joining
a cluster (`auto`, an address) changes nothing there: securing it is the cluster's business.
"""

from __future__ import annotations

import functools
import os
import secrets
import stat
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .decode import DecodeFailure
from .examine import ExamineConfig, Examined, Skipped
from .judge import Judge
from .records import Evidence, Header, Result, error_result, skipped_result
from .sources import entries as list_entries
from .walk import Entry

if TYPE_CHECKING:
    import pyarrow as pa

    from .plan import ScanPlan

CROP_SHAPE = (224, 224, 3)
TOKEN_AUTH_RAY = (2, 52)  # the first Ray with token authentication


class PrivateInstanceError(ValueError):
    """`--ray local` cannot be made private here; the message says why (one line)."""


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": a private instance on this machine; "auto" or host:port / ray://…
    workers: int | None = None  # decode actors; default: the cluster's CPUs (local: the CPUs Ray may use)
    embedders: int | None = None  # embed actors; default: one per GPU, else one per decode actor
    batch_size: int | None = None  # None: the plan's batch size for the resolved device


class DecodeStage:
    """Ray actor: files → crops, evidence and typed failures, through codescan's own decode pool."""

    def __init__(self, config: ExamineConfig, timeout: float) -> None:
        from .workers import DecodePool

        self.pool = DecodePool(workers=1, config=config, timeout=timeout, window=8)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        items = [
            Entry(os.fsdecode(bytes(p)), bytes(p), (code, message) if code else None, bool(u))
            for p, u, code, message in zip(batch["path"], batch["uri"], batch["error_code"], batch["error"])
        ]  # display is the absolute path here; records use the "display" column
        import pyarrow as pa

        schema = _decoded_schema()
        columns: dict[str, list[Any]] = {name: [] for name in schema.names}
        columns["seq"] = [int(x) for x in batch["seq"]]
        columns["display"] = [bytes(d) for d in batch["display"]]
        for _, o in self.pool.outcomes(iter(items)):
            row = _decoded_row(o)
            for name in schema.names[2:]:
                columns[name].append(row.get(name))
        # An Arrow table with a fixed schema, not a dict of numpy arrays: Ray's guessing would
        # turn equal-length byte strings into tensors.
        return pa.Table.from_pydict(columns, schema=schema)


class EmbedStage:
    """Ray actor: crops → every head's score. Without `shards` the rows go back to the driver;
    with it the actor makes the records itself and writes them, one shard per run of
    consecutive files, and only statuses go back."""

    def __init__(
        self,
        home: str,
        weights: str,
        engine: str,
        precision: str,
        threads: int | None,
        judge: Judge,
        shards: str | None = None,
    ) -> None:
        os.environ["CODESCAN_HOME"] = home
        from codescan.engines.registry import create_engine

        from .weights import load_bundle

        bundle = load_bundle(weights)
        self.heads = bundle.head_set()
        self.engine = create_engine(bundle, engine, precision, threads)  # type: ignore[arg-type]
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
        records = [record(self.judge, row) for row in rows]
        seqs = [row["seq"] for row in rows]
        _write_shards(Path(self.shards), seqs, records)
        return pa.table(
            {
                "seq": pa.array(seqs, pa.int64()),
                "status": pa.array([r.status for r in records], pa.string()),
                "combined": pa.array([r.combined for r in records], pa.string()),
            }
        )


def _write_shards(folder: Path, seqs: list[int], records: list[Result]) -> None:
    """One shard per run of consecutive listing numbers: the shards, in name order, are the
    local scan's result lines."""
    from .reporters import write_shard

    order = sorted(range(len(seqs)), key=seqs.__getitem__)
    run: list[int] = []
    for k, i in enumerate(order):
        run.append(i)
        if k == len(order) - 1 or seqs[order[k + 1]] != seqs[i] + 1:
            write_shard(folder, seqs[run[0]], [records[j] for j in run])
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
        [("seq", pa.int64()), ("display", pa.binary()), ("crop", pa.binary()), ("kind", pa.string()),
         ("width", pa.int64()), ("height", pa.int64()), ("box", pa.list_(pa.int64())), ("format", pa.string()),
         ("sha256", pa.string()), ("code", pa.string()), ("message", pa.string()), ("evidence", pa.list_(evidence)),
         ("has_evidence", pa.bool_())]
    )


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
        width, height, box, fmt = o.size_box_format
        row |= {"kind": "image", "crop": o.decoded.crop.tobytes(), "width": width, "height": height,
                "box": list(box), "format": fmt, "sha256": o.sha256.hex()}
    elif isinstance(o, DecodeFailure):
        row |= {"kind": "failure", "code": o.code, "message": o.message, "sha256": o.sha256}
    else:
        row["kind"] = "skipped"
    return row


def record(judge: Judge, row: dict[str, Any]) -> Result:
    """A typed row back into its record: the same Judge and record makers as the local scan."""
    display = os.fsdecode(row["display"])
    evidence = tuple(Evidence.from_dict(d) for d in row["evidence"] or ()) if row["has_evidence"] else None
    if row["kind"] == "image":
        scores = {k[len("score_"):]: v for k, v in row.items() if k.startswith("score_")}
        box = tuple(row["box"])
        return judge.image(display, row["sha256"], evidence, (row["width"], row["height"], box, row["format"]), scores)
    if row["kind"] == "failure":
        return error_result(display, row["code"], row["message"], row["sha256"], evidence)
    return skipped_result(display)


def connect(options: RayOptions, num_cpus: int | None = None) -> None:
    """Join or start Ray with its own chatter off (stderr is codescan's); CODESCAN_DEBUG=1 keeps it."""
    import ray
    import ray.data

    if os.environ.get("CODESCAN_DEBUG") != "1":
        import logging
        import warnings

        warnings.filterwarnings("ignore", module=r"ray(\.|$)")
        for name in ("ray", "ray.data"):
            logging.getLogger(name).setLevel(logging.ERROR)

    if ray.is_initialized():
        return
    from .weights import store_root

    if options.address == "local":
        require_token_auth(ray.__version__)
        private_instance_env(auth_token(store_root() / "ray" / "auth_token"))
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    # Ray starts its workers in the driver's working directory and puts it first on their
    # sys.path: run from a source checkout, they would import its codescan/ instead of the
    # installed package. They start in a folder of the store instead (paths are sent absolute).
    here, neutral = os.getcwd(), store_root() / "ray"
    neutral.mkdir(parents=True, exist_ok=True)
    os.chdir(neutral)
    try:
        if options.address == "local":
            ray.init(num_cpus=num_cpus, **quiet)  # type: ignore[arg-type]
        else:
            ray.init(address=options.address, **quiet)  # type: ignore[arg-type]
    finally:
        os.chdir(here)


def require_token_auth(version: str) -> None:
    """Older Rays ignore RAY_AUTH_MODE: their private instance would take anyone's tasks."""
    try:
        major_minor = tuple(int(part) for part in version.split(".")[:2])
    except ValueError:
        major_minor = (0, 0)
    if major_minor < TOKEN_AUTH_RAY:
        raise PrivateInstanceError(
            f"--ray local needs Ray >= {'.'.join(map(str, TOKEN_AUTH_RAY))} for token authentication "
            f"(Ray {version} is installed): pip install 'codescan[ray]'"
        )


def private_instance_env(token: Path) -> None:
    """Set before ray.init: the daemons and workers it starts inherit the environment, so they
    all require and send this token. A RAY_AUTH_TOKEN of the user's would take precedence over
    the file; the private instance has no use for it. Ray read its configuration (the auth
    mode included) when it was imported, so the driver's copy is read again, as Ray itself does
    when it turns token authentication on."""
    import ray

    os.environ.pop("RAY_AUTH_TOKEN", None)
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token)
    ray._config.initialize("")


def auth_token(path: Path) -> Path:
    """`path`, holding a random token only this user can read: kept when it is such a file,
    created (or replaced) otherwise. Kept across runs, so that concurrent local scans, whose
    workers read the file whenever they start, never see it change under them."""
    if _holds_private_token(path):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".token.", dir=path.parent)  # mode 0600 from its creation
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
        if os.path.lexists(path):
            os.replace(tmp, path)  # not private: nobody may go on using it
        else:
            try:
                os.link(tmp, path)  # whole or absent; a concurrent first run's token wins
            except FileExistsError:
                pass
    finally:
        Path(tmp).unlink(missing_ok=True)  # gone already where it replaced the old file
    if not _holds_private_token(path):
        raise PrivateInstanceError(f"cannot keep the Ray token private: {path} is not a file only you can read")
    return path


def _holds_private_token(path: Path) -> bool:
    """A regular file (a link is not followed, a FIFO not waited on) of this user that nobody
    else can read or write, holding a token. Checked on the open file, so it cannot be swapped
    between the check and the read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return False
        token = fh.read(1024).strip()
    return len(token) >= 32 and token.isalnum()


def _rows(
    plan: ScanPlan, resolved: Resolved, listed: list[Entry], options: RayOptions, shards: Path | None,
    skip: Collection[str] = (),
) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows, in no particular order; `listed` numbers the files."""
    import ray

    from .weights import store_root

    cfg = plan.config
    todo = [
        {
            "seq": i,
            "path": e.path if e.uri else os.path.abspath(e.path),  # workers do not share our working directory
            "display": os.fsencode(e.display),
            "uri": e.uri,
            "error_code": e.error[0] if e.error else "",
            "error": e.error[1] if e.error else "",
        }
        for i, e in enumerate(listed)
        if e.display not in skip
    ]
    if not todo:
        return iter(())
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = options.workers or cpus
    embedders = options.embedders or (gpus if resolved.on_gpu else workers)
    # CPU share per actor: decode and embed actors together fill the CPUs Ray reports.
    share = min(1.0, cpus / (workers + (0 if resolved.on_gpu else embedders)))
    batch = options.batch_size or plan.batch_size(resolved.device)
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # stderr belongs to codescan's own progress

    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // batch, 4096)))
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "config": ExamineConfig(limits=cfg.limits, evidence=cfg.evidence, cache=cfg.cache),
            "timeout": cfg.decode_timeout,
        },
        batch_size=batch,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=share,
    )
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "home": str(store_root()),
            "weights": plan.bundle.name,
            "engine": resolved.engine,
            "precision": resolved.precision,
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


@dataclass(frozen=True)
class Resolved:
    """The engine the workers will run, resolved where it will run."""

    engine: str
    precision: str
    device: str

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def _probe(home: str, weights: str, engine: str, precision: str) -> Resolved:
    """Runs on a GPU worker: what `auto` (or the engine asked for) resolves to there."""
    os.environ["CODESCAN_HOME"] = home
    from codescan.engines.registry import choose
    from codescan.engines.specs import spec

    from .weights import load_bundle

    name, prec = choose(load_bundle(weights), engine, precision)
    if not spec(name).gpu:
        return Resolved(name, prec, "cpu")
    import torch

    return Resolved(name, prec, f"cuda:{torch.cuda.current_device()}")


def resolve_engine(plan: ScanPlan, options: RayOptions) -> Resolved:
    """Decided by the cluster, never by the driver's own hardware: a CPU-only head node (the
    usual cluster) asks a GPU worker what the engine resolves to there; without GPUs in the
    cluster the CPU engines are chosen here. Nothing is built on the driver."""
    import ray

    from codescan.engines.registry import choose
    from codescan.engines.specs import spec

    from .weights import store_root

    connect(options, num_cpus=options.workers)
    wants_gpu = plan.engine == "auto" or spec(plan.engine).gpu
    if wants_gpu and int(ray.cluster_resources().get("GPU", 0)) > 0:
        probe = ray.remote(num_gpus=1, num_cpus=0)(_probe)
        return ray.get(probe.remote(str(store_root()), plan.bundle.name, plan.engine, plan.precision))
    name, prec = choose(plan.bundle, plan.engine, plan.precision)
    return Resolved(name, prec, "cpu")


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

    @property
    def resolved(self) -> Resolved:
        if self._resolved is None:
            self._resolved = resolve_engine(self.plan, self.options)
        return self._resolved

    def header(self) -> Header:
        r = self.resolved
        return self.plan.header(r.engine, r.device, r.precision)

    def scan(self, arguments: Iterable[str | bytes], skip: Collection[str] = ()) -> Iterator[Result | Counted]:
        walk = self.plan.config.walk
        if self.shards is not None:
            listed = list(list_entries(arguments, walk))  # numbered before skipping: stable names
            for row in _rows(self.plan, self.resolved, listed, self.options, shards=self.shards, skip=skip):
                yield Counted(row["status"], row["combined"])
            return
        listed = [e for e in list_entries(arguments, walk) if e.display not in skip]
        rows = _rows(self.plan, self.resolved, listed, self.options, shards=None)
        waiting: dict[int, dict[str, Any]] = {}  # rows that arrived before their turn
        for seq in range(len(listed)):
            while seq not in waiting:
                row = next(rows)
                waiting[int(row["seq"])] = row
            yield record(self.plan.judge, waiting.pop(seq))
