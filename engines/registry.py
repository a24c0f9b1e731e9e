"""The choice of engine: what can run here, what `auto` picks, and building the one chosen.

Backends are imported only when built, so choosing one never imports another's heavy runtime,
and no backend imports this module. Reduced precision is used by ``--precision auto`` only
where the bundle records a passed gate (:mod:`codescan.engines.gates_file`): embedding cosine
≥ 0.999 against fp32 and ≥ 99.5% identical verdicts per head on a labelled folder. ``fp32``
always reproduces the reference. On a machine with a usable CUDA GPU, ``auto`` prefers the GPU
engines (TensorRT, else torch CUDA) to every CPU engine; fp16 is their reduced precision and
obeys the same gate rule.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from codescan.engines.gates_file import passed_gates
from codescan.engines.protocol import PRECISIONS, Engine, EngineError
from codescan.engines.specs import AUTO_ORDER, ENGINES, SPECS, EngineSpec, spec

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@functools.cache
def cuda_available() -> bool:
    """A CUDA GPU torch can use. Without NVIDIA device nodes this answers without importing torch."""
    if not _importable("torch") or sys.platform == "darwin":
        return False
    if sys.platform.startswith("linux") and not any(
        os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/dxg")
    ):
        return False
    import torch

    return bool(torch.cuda.is_available())


def installed(name: str) -> bool:
    """The engine can run here: its modules import, and for GPU engines a CUDA GPU is usable."""
    s = spec(name)
    return all(_importable(m) for m in s.requires) and (not s.gpu or cuda_available())


def choose(bundle: Bundle, engine: str, precision: str) -> tuple[str, str]:
    """Resolve auto choices to one (engine, precision) pair, or explain why none fits."""
    order = AUTO_ORDER
    if engine != "auto" and not spec(engine).auto_rank:  # registered at run time: chosen by name only
        order = tuple((engine, p) for p in spec(engine).precisions)
    if precision not in PRECISIONS:
        raise EngineError(f"unknown precision {precision!r} (choose from {', '.join(PRECISIONS)})")
    # Read only when it can matter: an explicit precision never depends on (or trips over) gates.json.
    gates = passed_gates(bundle) if precision == "auto" else set()
    for name, prec in order:
        if engine not in ("auto", name) or precision not in ("auto", prec) or not installed(name):
            continue
        if precision == "auto" and prec != "fp32" and (name, prec) not in gates:
            continue
        return name, prec
    if engine != "auto" and not installed(engine):
        s = spec(engine)
        if not all(_importable(m) for m in s.requires):
            raise EngineError(f"engine {engine!r} is not installed: {s.install}")
        raise EngineError(f"engine {engine!r} needs a CUDA GPU; none is usable here (torch.cuda.is_available() is False)")
    if precision == "fp16" and not any(installed(s.name) for s in SPECS if s.gpu):
        raise EngineError("precision 'fp16' runs on a CUDA GPU only (engines tensorrt, cuda); none is usable here")
    supported = {s.name: s.precisions for s in SPECS}
    raise EngineError(f"no installed engine supports precision {precision!r} (supported: {supported})")


def register(extra: EngineSpec) -> None:
    """Make one more engine buildable by name, in this process only: for benchmarks and tests
    (``benchmarks/null_engine.py``), which need an engine users must never be offered.

    Users cannot reach it: ``codescan scan --engine`` offers the names of :data:`SPECS` only, and a
    registered engine has no ``auto_rank`` and no ``gated`` precision, so ``auto`` never picks it and
    ``codescan gate`` never measures it. Registering the same spec again is harmless.
    """
    if extra.auto_rank or extra.gated:
        raise ValueError(f"engine {extra.name!r}: a registered engine is chosen by name only (no auto_rank, no gated)")
    if ENGINES.get(extra.name, extra) != extra:
        raise ValueError(f"engine {extra.name!r} is already registered, as another engine")
    ENGINES[extra.name] = extra


@dataclass(frozen=True)
class Resolved:
    """An engine choice with nothing left to `auto`: what the header states and what `build` makes.

    Resolved where the engine will run (a Ray scan asks a GPU worker), since `auto` depends on
    that machine's GPU and runtimes."""

    engine: str
    precision: str
    device: str  # "cpu" or "cuda:N"

    @property
    def on_gpu(self) -> bool:
        return self.device.startswith("cuda")


def resolve(bundle: Bundle, engine: str = "auto", precision: str = "auto") -> Resolved:
    """The one resolution of `--engine`, `--precision` and the device, for every executor."""
    name, prec = choose(bundle, engine, precision)
    if not spec(name).gpu:
        return Resolved(name, prec, "cpu")
    import torch

    return Resolved(name, prec, f"cuda:{torch.cuda.current_device()}")


def build(
    bundle: Bundle, name: str, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> Engine:
    """One resolved engine: `threads` caps CPU threads where several engines share a machine (Ray);
    `warn` takes what the engine says while it is made (a TensorRT engine file being rebuilt)."""
    s = spec(name)
    if precision not in s.precisions:
        raise EngineError(f"{name} supports precision {' or '.join(s.precisions)}, not {precision!r}")
    return importlib.import_module(s.module).create(bundle, precision, threads, warn)


def create_engine(bundle: Bundle, engine: str = "auto", precision: str = "auto", threads: int | None = None) -> Engine:
    """Resolve and build in one step, where no one needs the resolution itself (tools, benchmarks)."""
    return build(bundle, *choose(bundle, engine, precision), threads)
