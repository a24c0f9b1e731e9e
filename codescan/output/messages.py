"""One-line messages for people, on stderr: errors, warnings, notes.

Every message passes through :func:`codescan.core.textsafe.printable`, because most of them quote
something a file controls (a path, a pickle's class name, a metadata field): no raw control,
escape or bidi character ever reaches the terminal. Writing never fails the program: with
stderr closed (``2>&-``) or gone, a message is dropped, never raised.
"""

from __future__ import annotations

import os
import sys

from codescan.core.records import Summary
from codescan.core.textsafe import printable


def _write(line: str) -> None:
    stream = sys.stderr
    if stream is None:
        return
    try:
        stream.write(line + "\n")
        stream.flush()
    except (OSError, ValueError):
        pass


def error(message: str) -> None:
    _write(f"codescan: error: {printable(message)}")


def warn(message: str) -> None:
    _write(f"codescan: warning: {printable(message)}")


def note(message: str) -> None:
    _write(f"codescan: {printable(message)}")


def info(message: str) -> None:
    """A plain line (summaries, "installed ..."): still escaped, no prefix."""
    _write(printable(message))


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def summary(summary: Summary, scanned: int, interrupted: bool) -> None:
    """The human summary; the rate counts only the files scanned by this run (not resumed ones)."""
    rate = scanned / summary.seconds if summary.seconds > 0 else 0.0
    extra = (summary.combined_fake or 0) - summary.fake
    flagged = f" (+{extra} by evidence)" if extra > 0 else ""
    info(
        f"{'interrupted: ' if interrupted else ''}{plural(summary.files, 'file')}: {summary.real} real, "
        f"{summary.fake} fake{flagged}, {plural(summary.errors, 'error')}, {summary.skipped} skipped "
        f"in {summary.seconds:.1f}s ({rate:.1f} files/s)"
    )
    if not interrupted and summary.real + summary.fake + summary.errors == 0:
        note("no images found" + (f" ({plural(summary.skipped, 'other file')} skipped)" if summary.files else ""))


def ensure_standard_fds() -> bool:
    """Open /dev/null on any of fds 0-2 that is closed; True if stdout was closed.

    With fd 2 closed, the next file codescan opens (the output, a cache) would get number 2, and
    whatever a C library prints to "stderr" would land in it. Holding the slot with /dev/null
    keeps those bytes out of the data; a closed stdout is reported by the caller instead of
    letting the data vanish.
    """
    stdout_closed = False
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            stdout_closed |= fd == 1
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115 - lives as long as the process
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)  # noqa: SIM115
    return stdout_closed
