"""The Ray cluster a scan runs on: joining or starting it, its token, the private session
folder, and Ray's own output kept off the terminal."""

from __future__ import annotations

import atexit
import contextlib
import os
import secrets
import shutil
import stat
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from codescan.core.fsutil import private_folder_problem, swappable_path_problem

if TYPE_CHECKING:

    pass


TOKEN_AUTH_RAY = (2, 52)  # the first Ray with token authentication


class PrivateInstanceError(ValueError):
    """`--ray local` cannot be made private here; the message says why (one line)."""


@dataclass(frozen=True)
class RayOptions:
    address: str = "local"  # "local": a private instance on this machine; "auto" or host:port / ray://…
    workers: int | None = None  # decode actors; default: the cluster's CPUs (local: the CPUs Ray may use)


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
    from codescan.weights.store import store_root

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
    from codescan.weights.store import ensure_store

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
    if not os.path.isabs(parent):
        return "not an absolute path"
    real = os.path.realpath(parent)
    return (private_folder_problem(real) if private else None) or swappable_path_problem(real)


def _private_folder_in(parent: str, prefix: str) -> str:
    """A fresh 0700 folder in `parent`, checked once made (OSError if it is not private)."""
    folder = tempfile.mkdtemp(prefix=prefix, dir=os.path.realpath(parent))
    why = private_folder_problem(folder)
    if why is not None:
        os.rmdir(folder)
        raise OSError(f"{folder} is {why}")
    return folder
