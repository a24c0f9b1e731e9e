"""Deprecated alias, kept for one release: ``codescan.pipeline`` moved to ``codescan.scan.pipeline``.

Import ``from codescan import Scanner, ScanConfig`` instead.
"""

import warnings

from .scan.pipeline import FILES_PER_WORKER, Scanner, feed_sizes
from .scan.plan import ScanConfig

warnings.warn(
    "codescan.pipeline is deprecated: use `from codescan import Scanner, ScanConfig`", DeprecationWarning, stacklevel=2
)

__all__ = ["FILES_PER_WORKER", "ScanConfig", "Scanner", "feed_sizes"]
