"""The command line: option declarations, the scan command and the other commands. The top layer:
may import everything, and training only through codescan.train.commands (a lazy import, so a
scan never loads training code)."""

from .entry import app, main

__all__ = ["app", "main"]
