"""The command line: option declarations, the scan command and the other commands. The top layer:
may import everything, and training only through codescan.train.commands (a lazy import, so a
scan never loads training code)."""

import os

# Before anything imports numpy: OpenBLAS reads it once, at load. The scanning process's numpy work
# comes in small pieces (a batch's heads), and OpenBLAS's idle threads spin for a while after
# numpy loads: 57 ms of CPU in the 0.3 s after the import on the 2-core development VM, at the
# start of every scan, beside the decode workers. A value the user set is kept.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .entry import app, main

__all__ = ["app", "main"]
