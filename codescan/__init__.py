"""codescan: tells which images are AI-generated, with the CoDE encoder (ECCV 2024).

The documented API is ``from codescan import Scanner, ScanConfig``. They are imported on first
use: the decode workers and the forkserver import ``codescan`` too, and must not load the
scanner, the engines or the output code to do so.
"""

from typing import TYPE_CHECKING, Any

from .core.version import __version__

if TYPE_CHECKING:
    from .scan.pipeline import Scanner
    from .scan.plan import ScanConfig

__all__ = ["ScanConfig", "Scanner", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Scanner":
        from .scan.pipeline import Scanner

        return Scanner
    if name == "ScanConfig":
        from .scan.plan import ScanConfig

        return ScanConfig
    raise AttributeError(f"module 'codescan' has no attribute {name!r}")
