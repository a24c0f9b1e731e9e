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

import atexit
import contextlib
import functools
import os
import sys
import pickle
import secrets
import shutil
import stat
import tempfile
from collections import deque
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .decode import DecodeFailure
from .examine import ExamineConfig, Examined, ImageFacts, Skipped
from .judge import Judge
from .records import Evidence, Header, Ident, Origin, Result, error_result, skipped_result
from .pinned import Pin
from .walk import Entry, WalkOptions

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


class DecodeStage:
    """Ray actor: units → crops, evidence and typed failures, through codescan's own decode pool.

    Each output row carries (`seq`, `sub`): the unit's listing number and the record's place in
    it (0 for a file, the member index for a member), and `last` on the unit's final row (an
    archive ends with a row of kind `end`), so the driver can restore the order without knowing
    in advance how many members an archive holds.
    """

    CHUNK = 64

    def __init__(self, config: ExamineConfig, timeout: float, walk: WalkOptions) -> None:
        from .feed import DecodePool

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
        from .sources import expand

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


def _write_shards(folder: Path, rows: list[dict[str, Any]], made: list[Result | None]) -> None:
    """One shard per run of rows that follow each other in listing order: the shards, in name
    order, are the local scan's result lines. A run goes on within a unit, and from a unit's last
    row to the next unit; a shard is named by its first (seq, sub), stable across retries and
    resumed jobs."""
    from .reporters import write_shard

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

    session: PrivateSession | None = None
    if options.address == "local":
        require_token_auth(ray.__version__)
        private_instance_env(auth_token(store_root() / "ray" / "auth_token"))
        session = PrivateSession.create()  # Ray's folders: never its shared /tmp/ray
    if os.environ.get("CODESCAN_DEBUG") != "1":
        _stderr_into(driver_log())
    quiet = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    # Ray starts its workers in the driver's working directory and puts it first on their
    # sys.path: run from a source checkout, they would import its codescan/ instead of the
    # installed package. They start in a folder of the store instead (paths are sent absolute).
    here, neutral = os.getcwd(), store_root() / "ray"
    neutral.mkdir(parents=True, exist_ok=True)
    os.chdir(neutral)
    try:
        if session is not None:
            with session.while_ray_starts():
                ray.init(num_cpus=num_cpus, **session.init_options(), **quiet)  # type: ignore[arg-type]
        else:
            ray.init(address=options.address, **quiet)  # type: ignore[arg-type]
    finally:
        os.chdir(here)


def driver_log() -> Path:
    """Where Ray's own lines of this process go (the store is the user's, 0700): one file, the
    last Ray scan's, named on stderr when that scan fails."""
    from .weights import ensure_store

    return ensure_store() / "ray" / "driver.log"


def _stderr_into(log: Path) -> None:
    """Ray's C++ core logs into this process's fd 2 (`core_worker.cc:… Task … failed`), past any
    Python logging setting, breaking the progress line and trailing the summary. For the rest of
    the process fd 2 is that log file, and Python's own stderr (codescan's messages, the progress
    line) a copy of the terminal's descriptor taken first."""
    log.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if sys.stderr is not None:
        sys.stderr.flush()
    terminal = os.dup(2)
    sys.stderr = open(terminal, "w", encoding=getattr(sys.stderr, "encoding", None) or "utf-8", errors="backslashreplace", closefd=True)  # noqa: SIM115 - lives as long as the process
    target = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    os.dup2(target, 2)
    os.close(target)


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


# Ray's Unix sockets (at most 107 bytes on Linux) lie in <session folder>/r/session_<date>_<pid>/sockets/.
SOCKET_PATH_MAX = 107
_SOCKET_TAIL = len("/r/session_2025-01-01_00-00-00_000000_4194304/sockets/plasma_store")  # a 7-digit pid at most
FALLBACK_PARENT = "/tmp"  # when $XDG_RUNTIME_DIR is unset or unsuitable: short, and sticky
_WORKER_SHIM = '''"""codescan's private Ray instance: Ray's default worker, except that the folders it
creates inside the private session folder stay 0700 (Ray makes them 0777)."""
import os
import runpy
import sys

import ray._common.utils as _utils

_FOLDER, _WORKER = {folder!r}, {worker!r}
_shared = _utils.try_make_directory_shared


def _keep_private(path):
    real = os.path.realpath(path)
    if real == _FOLDER or real.startswith(_FOLDER + os.sep):
        os.chmod(path, 0o700)
    else:
        _shared(path)


_utils.try_make_directory_shared = _keep_private
sys.path[0] = os.path.dirname(_WORKER)
runpy.run_path(_WORKER, run_name="__main__")
'''


class PrivateSession:
    """A fresh folder (0700) of this user's, on a path nobody else can change, holding every
    folder of the `--ray local` instance: Ray's temp folder `r/` (session, logs, sockets,
    runtime environments), the spilled objects `spill/` (pickles Ray loads back) and, where Ray
    puts the object store's memory-mapped files in /dev/shm, a 0700 folder of its own there.
    In $XDG_RUNTIME_DIR when that is this user's alone, else in /tmp/codescan-ray-UID (0700,
    kept), else in /tmp. Removed, best-effort, when the scan process exits, once Ray has shut down."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.extra: list[str] = []  # private folders made elsewhere (the object store's, in /dev/shm)
        atexit.register(self.close)  # registered after `import ray`: runs before Ray's own exit hook

    @classmethod
    def create(cls) -> PrivateSession:
        """PrivateInstanceError (one line) if no such folder can be made."""
        xdg = os.environ.get("XDG_RUNTIME_DIR")
        parents = ([(xdg, "codescan-", True)] if xdg else []) + _shared_parents(FALLBACK_PARENT)
        folder, refused = _private_folder(parents, _SOCKET_TAIL)
        if folder is not None:
            return cls(folder)
        if xdg:
            refused[0] = "$XDG_RUNTIME_DIR " + refused[0]
        raise PrivateInstanceError(
            "--ray local needs a private folder for Ray's session, sockets and spilled objects, and none "
            f"could be made ({'; '.join(refused)}); set XDG_RUNTIME_DIR to a short folder only you can use"
        )

    def holds(self, path: str) -> bool:
        real = os.path.realpath(path)
        return any(real == f or real.startswith(f + os.sep) for f in [self.folder, *self.extra])

    def init_options(self) -> dict[str, str]:
        spill = os.path.join(self.folder, "spill")
        os.makedirs(spill, mode=0o700, exist_ok=True)
        return {"_temp_dir": os.path.join(self.folder, "r"), "object_spilling_directory": spill}

    @contextlib.contextmanager
    def while_ray_starts(self) -> Iterator[None]:
        """Ray makes every folder it creates 0777 (for other users' Rays on the machine), in the
        driver and again in each worker it starts: inside this folder they stay 0700, here and
        in the workers (a shim runs Ray's default worker). Ray puts the object store's files in
        /dev/shm (or, when that is too small, in its temp folder): in /dev/shm they go into a
        private folder of ours. A Ray without these hooks keeps its defaults, still inside this
        0700 folder (and /dev/shm's files are Ray's private, unlinked ones)."""
        import inspect

        from ray._common import utils as common
        from ray._private import services

        shared = getattr(common, "try_make_directory_shared", None)
        plasma_store_config = getattr(services, "determine_plasma_store_config", None)
        start_raylet = getattr(services, "start_raylet", None)

        def keep_private(path: str) -> None:
            if self.holds(path):
                os.chmod(path, 0o700)
            else:
                shared(path)  # type: ignore[misc]

        def private_plasma(*args: Any, **kwargs: Any) -> Any:
            directory, *rest = plasma_store_config(*args, **kwargs)  # type: ignore[misc]
            if not self.holds(directory):
                folder, _ = _private_folder(_shared_parents(directory))
                directory = folder or os.path.join(self.folder, "r")
                if folder is not None:
                    self.extra.append(folder)
            return (directory, *rest)

        def private_workers(*args: Any, **kwargs: Any) -> Any:
            bound = inspect.signature(start_raylet).bind(*args, **kwargs)  # type: ignore[arg-type]
            if "worker_path" in bound.arguments:
                bound.arguments["worker_path"] = self._worker_shim(bound.arguments["worker_path"])
            return start_raylet(*bound.args, **bound.kwargs)  # type: ignore[misc]

        patches = [
            (common, "try_make_directory_shared", shared, keep_private),
            (services, "determine_plasma_store_config", plasma_store_config, private_plasma),
            (services, "start_raylet", start_raylet, private_workers),
        ]
        patches = [p for p in patches if callable(p[2])]
        for module, name, _, hook in patches:
            setattr(module, name, hook)
        try:
            yield
        finally:
            for module, name, original, _ in patches:
                setattr(module, name, original)

    def _worker_shim(self, worker: str) -> str:
        path = os.path.join(self.folder, "worker.py")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(_WORKER_SHIM.format(folder=os.path.realpath(self.folder), worker=worker))
        return path

    def close(self) -> None:
        try:
            import ray

            ray.shutdown()
        finally:
            for folder in [self.folder, *self.extra]:
                shutil.rmtree(folder, ignore_errors=True)


def _shared_parents(shared: str) -> list[tuple[str, str, bool]]:
    """Where to make a private folder in a folder every user may write (/tmp, /dev/shm): in
    SHARED/codescan-ray-UID (0700, made once and kept, so that a private folder stays on the path
    of every session), or in SHARED itself where someone else made that one first."""
    return [(os.path.join(shared, f"codescan-ray-{os.geteuid()}"), "", True), (shared, "codescan-", False)]


def _private_folder(parents: list[tuple[str, str, bool]], tail: int = 0) -> tuple[str | None, list[str]]:
    """A fresh 0700 folder in the first of `parents` (folder, prefix of the name, whether the
    folder itself must be this user's alone) where one can be made safely, with room for `tail`
    more bytes of path; else None, and why each was refused."""
    refused = []
    for parent, prefix, private in parents:
        try:
            if prefix == "":  # SHARED/codescan-ray-UID: made here the first time
                with contextlib.suppress(FileExistsError):
                    os.mkdir(parent, 0o700)
            why = _parent_problem(parent, private)
            if why is None and len(os.fsencode(os.path.join(os.path.realpath(parent), prefix))) + 8 + tail > SOCKET_PATH_MAX:  # mkdtemp: 8 characters
                why = f"too long for Ray's socket paths ({SOCKET_PATH_MAX} bytes at most)"
            if why is None:
                return _private_folder_in(parent, prefix), refused
        except OSError as exc:
            why = exc.strerror or str(exc)
        refused.append(f"{parent}: {why}")
    return None, refused


def _parent_problem(parent: str, private: bool) -> str | None:
    """Why a private folder made in `parent` would not be safe, or None. `private`: `parent`
    itself must be this user's alone (no group or other access)."""
    from .fsutil import private_folder_problem, swappable_path_problem

    if not os.path.isabs(parent):
        return "not an absolute path"
    real = os.path.realpath(parent)
    return (private_folder_problem(real) if private else None) or swappable_path_problem(real)


def _private_folder_in(parent: str, prefix: str) -> str:
    """A fresh 0700 folder in `parent`, checked once made (OSError if it is not private)."""
    from .fsutil import private_folder_problem

    folder = tempfile.mkdtemp(prefix=prefix, dir=os.path.realpath(parent))
    why = private_folder_problem(folder)
    if why is not None:
        os.rmdir(folder)
        raise OSError(f"{folder} is {why}")
    return folder


def _rows(
    plan: ScanPlan, resolved: Resolved, units: list[Unit | None], options: RayOptions, shards: Path | None
) -> Iterator[dict[str, Any]]:
    """The pipeline's output rows, in no particular order; a unit's `seq` is its place in `units`."""
    import ray

    from .weights import store_root

    cfg = plan.config
    batch = options.batch_size or plan.batch_size(resolved.device)
    todo = [{"units": pickle.dumps(task)} for task in _tasks(units, batch)]
    if not todo:
        return iter(())
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = max(1, int(resources.get("CPU", 1)))
    workers = options.workers or cpus
    embedders = options.embedders or (gpus if resolved.on_gpu else workers)
    # CPU share per actor: decode and embed actors together fill the CPUs Ray reports.
    share = min(1.0, cpus / (workers + (0 if resolved.on_gpu else embedders)))
    context = ray.data.DataContext.get_current()
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False  # stderr belongs to codescan's own progress

    ds = ray.data.from_items(todo, override_num_blocks=max(1, min(len(todo), 4096)))
    ds = ds.map_batches(
        DecodeStage,
        fn_constructor_kwargs={
            "config": ExamineConfig(limits=cfg.limits, evidence=cfg.evidence, cache=cfg.cache),
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
        self.log = driver_log()  # where Ray's own lines go (connect): named by the CLI if the scan fails

    @property
    def resolved(self) -> Resolved:
        if self._resolved is None:
            self._resolved = resolve_engine(self.plan, self.options)
        return self._resolved

    def header(self) -> Header:
        r = self.resolved
        return self.plan.header(r.engine, r.device, r.precision)

    def scan(self, arguments: Iterable[str | bytes], skip: Collection[Ident] = ()) -> Iterator[Result | Counted]:
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
            for row in sorted(waiting.pop(seq), key=lambda r: r["sub"]):
                if row["kind"] == "end":
                    continue
                yield Counted(row["status"], row["combined"]) if self.shards is not None else record(self.plan.judge, row)


def _units(arguments: Iterable[str | bytes], walk: WalkOptions, skip: Collection[Ident]) -> list[Unit | None]:
    """The inputs as tasks, in listing order, archives unopened; None for a file already done."""
    from .sources import units as list_units

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
