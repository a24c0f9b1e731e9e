"""Convert head pickles into ``heads.safetensors`` in a child process with resource limits.

The restricted unpickler (:mod:`codescan.weights.unpickle`) is the defence; this process boundary is
the second wall. A head file is hostile input, read by a pure-Python unpickler on top of
numpy and the decompressors: if some path through them ever crashes (a signal), allocates
without end or spins, the child dies or is killed and the import is refused with one line,
while the CLI, its terminal and the user's store are untouched. The child gets an address
space cap (``RLIMIT_AS``), a CPU-time cap, no core dumps and one BLAS thread; its only output
is a safetensors file (read back by the parent with safetensors, which executes nothing) and
a one-line JSON verdict on stderr. Conversion runs once per import, so the ~0.3 s a child
costs is paid once, never per scan.

Run as ``python -P -m codescan.weights.headconvert OUT FILE...``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Literal

from codescan.core.records import HeadName
from codescan.core.textsafe import printable
from codescan.model.heads import (
    Head,
    load_heads,
    require_finite_head,
    save_heads,
)
from codescan.model.sklearn_heads import UnsafePickleError, estimator_to_head
from codescan.weights.unpickle import HeadLimits, restricted_load

CPU_SECONDS = 300
WALL_SECONDS = 600


class HeadConversionError(Exception):
    def __init__(self, kind: Literal["unsafe", "invalid"], message: str) -> None:
        super().__init__(message)
        self.kind = kind


def convert_files(files: list[Path], limits: HeadLimits) -> dict[HeadName, Head]:
    """The conversion itself (in whichever process runs it)."""
    heads: dict[HeadName, Head] = {}
    origin: dict[str, Path] = {}
    for path in files:
        name, head = estimator_to_head(restricted_load(path, limits))
        try:
            require_finite_head(name, head)  # a NaN coefficient would judge every file "real"
        except ValueError as exc:
            raise ValueError(f"{path.name}: {exc}") from None
        if name in heads:
            raise ValueError(f"two {name} heads: {origin[name].name} and {path.name}; keep one")
        heads[name] = head
        origin[name] = path
    return heads


def address_space_limit(limits: HeadLimits) -> int:
    """Room for every allowed byte three times over (file bytes, array, float64 copy) plus the interpreter."""
    return 3 * limits.max_bytes + (1 << 30)


def _child(out: Path, files: list[Path]) -> int:
    import resource

    limits = HeadLimits.from_env()
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (CPU_SECONDS, CPU_SECONDS))
    cap = address_space_limit(limits)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        save_heads(convert_files(files, limits), out)
    except UnsafePickleError as exc:
        print(json.dumps({"kind": "unsafe", "message": str(exc)}), file=sys.stderr)
        return 3
    except MemoryError:
        print(json.dumps({"kind": "unsafe", "message": "refused a head that needs more memory than allowed"}),
              file=sys.stderr)
        return 3
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file provokes is "cannot read"
        print(json.dumps({"kind": "invalid", "message": str(exc)}), file=sys.stderr)
        return 4
    return 0


def _child_env() -> dict[str, str]:
    """The parent's environment, one BLAS thread, and the codescan this process runs on sys.path."""
    env = dict(os.environ)
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = "1"
    package_parent = str(Path(__file__).resolve().parents[2])  # the folder holding codescan/
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_parent, env.get("PYTHONPATH", "")]))
    return env


def convert_isolated(files: list[Path]) -> dict[HeadName, Head]:
    """Convert `files` in a limited child; HeadConversionError says why not, in one line."""
    with tempfile.TemporaryDirectory(prefix="codescan-heads.") as tmp:
        out = Path(tmp) / "heads.safetensors"
        cmd = [sys.executable, "-P", "-m", "codescan.weights.headconvert", str(out), *map(str, files)]
        try:
            proc = subprocess.run(
                cmd, env=_child_env(), stdin=subprocess.DEVNULL, capture_output=True, timeout=WALL_SECONDS
            )
        except subprocess.TimeoutExpired:
            raise HeadConversionError("unsafe", f"refused: reading the heads took over {WALL_SECONDS} s") from None
        if proc.returncode == 0:
            return load_heads(out.read_bytes(), str(out))
        if proc.returncode < 0:
            sig = signal.Signals(-proc.returncode).name
            raise HeadConversionError("unsafe", f"refused: the head reader died with {sig} (a malformed head file)")
        try:
            verdict = json.loads(proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1])
            kind, message = verdict["kind"], str(verdict["message"])
        except (ValueError, IndexError, KeyError, TypeError):
            tail = printable(proc.stderr.decode("utf-8", "replace").strip()[-300:])
            raise HeadConversionError("invalid", f"the head reader failed (exit {proc.returncode}): {tail}") from None
        raise HeadConversionError("unsafe" if kind == "unsafe" else "invalid", printable(message, limit=400))


if __name__ == "__main__":
    sys.exit(_child(Path(sys.argv[1]), [Path(a) for a in sys.argv[2:]]))
