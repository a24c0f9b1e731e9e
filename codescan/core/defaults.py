"""Every scan option's default, written once.

The dataclass configs (`ScanConfig`, `DecodeLimits`, `EvalConfig`), the engine registry's callers
and the CLI's signatures all read their defaults here, so `codescan scan --help`, the Python API
and eval or calibrate cannot drift apart. Plain values only: the CLI reads them at start-up
without loading anything of the scan.
"""

from __future__ import annotations

import os
from typing import Final, Literal

HEAD: Final = "linear"  # the reference's linear probe
EVIDENCE: Final = "metadata"
CROPS: Final[Literal[1, 5]] = 1  # the reference's centre crop
ENGINE: Final = "auto"
PRECISION: Final = "auto"  # fp32 unless a gate passed for the bundle
MAX_FILESIZE: Final = 256 * 1024 * 1024  # bytes
MAX_PIXELS: Final = 89_478_485  # Pillow's default bomb-warning threshold
DECODE_TIMEOUT: Final = 20.0  # seconds per file, enforced by killing the worker
CPU_BATCH: Final = 8  # crops per engine call on a CPU: small batches overlap decoding best
GPU_BATCH: Final = 64


def decode_workers() -> int:
    """Decode processes: one per CPU, at most 8 (more than one scanning process can feed)."""
    return max(1, min(8, os.cpu_count() or 1))
