"""Run a shell command with a pseudo-terminal as its controlling terminal, as a person would.

`pty.fork` gives the child a new session whose controlling terminal is the pty, so stderr (and
stdin) are a real terminal, a window size can be set, and ``\\x03`` typed into it reaches the
foreground process group as SIGINT through the terminal's line discipline, exactly like Ctrl-C.
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import termios
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class TerminalRun:
    status: int  # the exit code, or -N for a signal
    screen: str  # everything the command wrote to the terminal


def run_in_terminal(
    command: str,
    env: dict[str, str],
    cwd: str,
    cols: int = 80,
    rows: int = 24,
    interrupt_when: Callable[[], bool] | None = None,
    timeout: float = 180.0,
) -> TerminalRun:
    pid, fd = pty.fork()
    if pid == 0:  # the child: set the window size on its own terminal, then become the command
        try:
            fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            os.chdir(cwd)
            os.execvpe("bash", ["bash", "-c", command], env)
        finally:
            os._exit(127)
    out = bytearray()
    interrupted = False
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                raise TimeoutError(f"{command!r} still running after {timeout} s; screen: {out[-2000:]!r}")
            if interrupt_when is not None and not interrupted and interrupt_when():
                os.write(fd, b"\x03")
                interrupted = True
            ready, _, _ = select.select([fd], [], [], 0.05)
            if not ready:
                continue
            try:
                data = os.read(fd, 65536)
            except OSError:  # EIO: the last process holding the terminal has exited
                data = b""
            if not data:
                break
            out += data
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return TerminalRun(os.waitstatus_to_exitcode(status), out.decode("utf-8", "replace"))
