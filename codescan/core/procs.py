"""Child processes codescan starts for hostile work: the forkserver, confinement, start and kill."""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import types
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection

ADDRESS_SPACE_LIMIT = 4 << 30  # per worker; a bomb that slips past the pixel check dies here


# Set for the forkserver's launch when the user has not: its children decode, and OpenBLAS's idle
# threads spin for a while after numpy loads (57 ms of CPU in the 0.3 s after the import, measured
# on the 2-core development VM), CPU taken from the decoders at every scan's start.
CHILD_ENVIRONMENT = {"PYTHONSAFEPATH": "1", "OPENBLAS_NUM_THREADS": "1"}


@contextlib.contextmanager
def _child_environment():
    """Start the forkserver with PYTHONSAFEPATH=1 (and one BLAS thread unless told otherwise).

    multiprocessing launches it as ``python -c ...``, which would put the current directory
    first on sys.path: scanning from inside a folder that holds another ``codescan/`` (a
    source checkout, say) would make every worker import that code instead of the installed
    package. The variables only matter for the one launch; the previous values are restored.
    """
    old = {name: os.environ.get(name) for name in CHILD_ENVIRONMENT}
    os.environ["PYTHONSAFEPATH"] = CHILD_ENVIRONMENT["PYTHONSAFEPATH"]
    os.environ.setdefault("OPENBLAS_NUM_THREADS", CHILD_ENVIRONMENT["OPENBLAS_NUM_THREADS"])
    try:
        yield
    finally:
        for name, value in old.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def forkserver() -> mp.context.BaseContext:
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["codescan.decoding.examine", "codescan.inputs.archives"])  # archive readers start warm
    return ctx


def start_process(ctx: mp.context.BaseContext, target, args: tuple) -> mp.process.BaseProcess:
    """A daemon child of the forkserver, started so that Ctrl-C cannot kill it mid-start.

    Ctrl-C reaches the whole process group. Start the forkserver (and through it every child)
    with SIGINT blocked, a mask that survives fork and exec, so neither can die of it mid-start
    with a traceback on the user's stderr; here it stays pending until unblocked. The resource
    tracker goes first: starting it unblocks SIGINT (CPython's own bpo-33613 guard).
    """
    proc = ctx.Process(target=target, args=args, daemon=True)  # type: ignore[attr-defined]
    resource_tracker.ensure_running()
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with _child_environment(), _main_not_reimported():
            proc.start()
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    return proc


@contextlib.contextmanager
def _main_not_reimported():
    """Start a child that does not run the user's script again.

    multiprocessing tells each child to import the parent's ``__main__`` file, for targets
    defined there; ours all live in codescan's modules. A script that scans without the
    ``if __name__ == "__main__":`` guard would otherwise start a scan inside every child, each
    failing with a multiprocessing traceback. While the child's start data is taken, ``__main__``
    is a module with no file, so the child imports nothing of the caller's.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__file__", None) is None:
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def spawn(ctx: mp.context.BaseContext, target, args: tuple) -> tuple[mp.process.BaseProcess, Connection]:
    """A worker child and the parent's end of its pipe (the child's end is passed as args[0])."""
    parent, child = ctx.Pipe(duplex=True)
    proc = start_process(ctx, target, (child, *args))
    child.close()
    return proc, parent


def kill(proc: mp.process.BaseProcess, conn: Connection) -> None:
    """Stop a worker that missed its deadline or crashed: SIGKILL, reap, close its pipe."""
    proc.kill()
    proc.join(timeout=5)
    conn.close()


def confine(memory: int) -> None:
    """In a child that reads hostile bytes: no Ctrl-C of its own, no stderr chatter, bounded memory."""
    import resource
    import warnings

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    # Decoders print straight to fd 2 (libtiff warnings); stderr belongs to the user.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    warnings.simplefilter("ignore")
    try:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    except (ValueError, OSError):
        pass
