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

import json
import os
import secrets
import stat
import tempfile
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .cache import CachedVerdict
from .decode import DecodeFailure
from .examine import ExamineConfig, Examined, Skipped
from .judge import Judge
from .records import Evidence, Result
from .sources import entries as list_entries
from .walk import Entry

if TYPE_CHECKING:
    import pyarrow as pa

    from .pipeline import Scanner

CROP_SHAPE = (224, 224, 3)
TOKEN_AUTH_RAY = (2, 52)  # the first Ray with token authentication


class PrivateInstanceError(ValueError):
    """`--ray local` cannot be made private here; the message says why (one line)."""


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": a private instance on this machine; "auto" or host:port / ray://…
    workers: int | None = None  # decode actors; default: the cluster's CPUs (local: the CPUs Ray may use)
    embedders: int | None = None  # embed actors; default: one per GPU, else one per decode actor
    batch_size: int = 64


class DecodeStage:
    """Ray actor: files → crops, evidence and typed failures, through codescan's own decode pool."""

    def __init__(self, config: ExamineConfig, timeout: float) -> None:
        from .workers import DecodePool

        self.pool = DecodePool(workers=1, config=config, timeout=timeout, window=8)

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        import pyarrow as pa

        items = [
            Entry(os.fsdecode(bytes(p)), bytes(p), (code, message) if code else None, bool(u))
            for p, u, code, message in zip(batch["path"], batch["uri"], batch["error_code"], batch["error"])
        ]  # display is the absolute path here; records use the "display" column
        crops: list[bytes | None] = []
        metas: list[str] = []
        for _, o in self.pool.outcomes(iter(items)):
            crop = None
            if isinstance(o, Examined):
                assert o.decoded is not None  # no cache under Ray
                crop = o.decoded.crop.tobytes()  # (224, 224, 3) uint8
                w, h, box, fmt = o.size_box_format
                meta = {"kind": "image", "width": w, "height": h, "box": box, "format": fmt}
                meta |= {"sha256": o.sha256.hex(), "evidence": _evidence_json(o.evidence)}
            elif isinstance(o, DecodeFailure):
                meta = {"kind": "failure", "code": o.code, "message": o.message, "sha256": o.sha256}
                meta["evidence"] = _evidence_json(o.evidence)
            else:
                meta = {"kind": "skipped"}
            crops.append(crop)
            metas.append(json.dumps(meta))
        # An Arrow table, not a dict of numpy arrays: Ray's guessing would turn equal-length
        # byte strings into tensors.
        return pa.table(
            {
                "seq": pa.array(batch["seq"], pa.int64()),
                "display": pa.array([bytes(d) for d in batch["display"]], pa.binary()),
                "crop": pa.array(crops, pa.binary()),
                "meta": pa.array(metas, pa.string()),
            }
        )


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
        scores: list[str | None] = [None] * len(crops)
        if idx:
            stacked = np.stack([np.frombuffer(crops[i], np.uint8).reshape(CROP_SHAPE) for i in idx])
            emb = self.engine.embed(stacked)  # (B, 224, 224, 3) uint8 -> (B, D)
            for i, per_file in zip(idx, self.heads.scores(emb)):
                scores[i] = json.dumps(per_file)
        if self.shards is None:
            return pa.table({"seq": batch["seq"], "meta": batch["meta"], "scores": pa.array(scores, pa.string())})
        seqs = batch["seq"].to_pylist()
        displays = batch["display"].to_pylist()
        metas = batch["meta"].to_pylist()
        records = [
            self.judge.record(os.fsdecode(display), _outcome(json.loads(meta), score))
            for display, meta, score in zip(displays, metas, scores)
        ]
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


def _evidence_json(evidence: tuple[Evidence, ...] | None) -> list[dict] | None:
    return None if evidence is None else [e.to_dict() for e in evidence]


def _outcome(meta: dict[str, Any], scores: str | None) -> Examined | DecodeFailure | Skipped:
    """A row back as the outcome a local scan would have had, its scores as if from the cache."""
    evidence = None if meta.get("evidence") is None else tuple(Evidence.from_dict(d) for d in meta["evidence"])
    if meta["kind"] == "image":
        assert scores is not None
        verdict = CachedVerdict(meta["width"], meta["height"], meta["format"], tuple(meta["box"]), json.loads(scores))
        return Examined(bytes.fromhex(meta["sha256"]), evidence, False, cached=verdict)
    if meta["kind"] == "failure":
        return DecodeFailure(meta["code"], meta["message"], meta["sha256"], evidence)
    return Skipped()


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
    scanner: Scanner, listed: list[Entry], options: RayOptions, shards: Path | None, skip: Collection[str] = ()
) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows, in no particular order; `listed` numbers the files."""
    import ray

    from .weights import store_root

    cfg = scanner.config
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
    connect(options, num_cpus=options.workers)
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    on_gpu = scanner.engine.device.startswith("cuda")
    workers = options.workers or cpus
    embedders = options.embedders or (gpus if on_gpu and gpus else workers)
    # CPU share per actor: decode and embed actors together fill the CPUs Ray reports.
    share = min(1.0, cpus / (workers + (0 if on_gpu else embedders)))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # stderr belongs to codescan's own progress

    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo) // options.batch_size, 4096)))
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "config": ExamineConfig(limits=cfg.limits, evidence=cfg.evidence, cache=None),
            "timeout": cfg.decode_timeout,
        },
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=share,
    )
    ds = ds.map_batches(
        EmbedStage,
        fn_constructor_kwargs={
            "home": str(store_root()),
            "weights": scanner.bundle.name,
            "engine": scanner.engine.name,
            "precision": scanner.engine.precision,
            "threads": None if on_gpu else max(1, int(share)),
            "judge": scanner.judge,
            "shards": None if shards is None else str(shards.absolute()),
        },
        batch_size=options.batch_size,
        compute=ray.data.ActorPoolStrategy(size=embedders),
        batch_format="pyarrow",
        num_cpus=share,
        num_gpus=1 if on_gpu and gpus else 0,
    )
    return iter(ds.iter_rows())


@dataclass(frozen=True)
class Counted:
    """A record a shard-writing worker made and wrote: the driver only counts it."""

    status: str
    combined: str | None


class RayExecutor:
    """The job's executor on Ray Data: rows come back and are put in listing order, or, with
    `shards`, the workers write the records and only their statuses come back."""

    def __init__(self, scanner: Scanner, options: RayOptions, shards: Path | None = None) -> None:
        self.scanner, self.options, self.shards = scanner, options, shards

    def scan(self, arguments: Iterable[str | bytes], skip: Collection[str] = ()) -> Iterator[Result | Counted]:
        if self.shards is not None:
            listed = list(list_entries(arguments, self.scanner.config.walk))  # numbered before skipping: stable names
            for row in _rows(self.scanner, listed, self.options, shards=self.shards, skip=skip):
                yield Counted(row["status"], row["combined"])
            return
        listed = [e for e in list_entries(arguments, self.scanner.config.walk) if e.display not in skip]
        rows = _rows(self.scanner, listed, self.options, shards=None)
        waiting: dict[int, dict[str, Any]] = {}  # rows that arrived before their turn
        for seq, entry in enumerate(listed):
            while seq not in waiting:
                row = next(rows)
                waiting[int(row["seq"])] = row
            row = waiting.pop(seq)
            yield self.scanner.judge.record(entry.display, _outcome(json.loads(row["meta"]), row["scores"]))
