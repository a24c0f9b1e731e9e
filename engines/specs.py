"""Every engine in one table: adding a backend is one new module and one entry here.

Each backend module defines ``create(bundle, precision, threads) -> Engine``; its entry says
which precisions it runs, which Python modules it needs and how to install them, whether it
needs a CUDA GPU, which reduced precisions ``codescan gate`` measures for it, and where each
precision ranks in ``--engine auto``'s preference. Pure data: the backends read their own
precisions here and the registry (:mod:`codescan.engines.registry`) chooses among them, so
neither imports the other. An engine for benchmarks or tests only (never offered to users) is
added at run time with :func:`codescan.engines.registry.register`, not here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from codescan.engines.protocol import EngineError


@dataclass(frozen=True)
class EngineSpec:
    name: str
    module: str  # defines create(bundle, precision, threads) -> Engine
    precisions: tuple[str, ...]
    requires: tuple[str, ...]  # Python modules that must import
    install: str  # what to run when they do not
    gpu: bool  # needs a usable CUDA GPU
    gated: tuple[str, ...]  # reduced precisions `codescan gate` measures
    auto_rank: Mapping[str, int]  # place of each precision in `auto`'s preference, lowest first


SPECS: tuple[EngineSpec, ...] = (
    EngineSpec(
        "onnxruntime", "codescan.engines.onnx_engine", ("fp32", "int8"), ("onnxruntime",),
        "pip install onnxruntime", gpu=False, gated=("int8",), auto_rank={"int8": 4, "fp32": 6},
    ),
    EngineSpec(
        "torch", "codescan.engines.torch_engine", ("fp32", "bf16"), ("timm",),
        "pip install 'codescan[torch]'", gpu=False, gated=("bf16",), auto_rank={"bf16": 5, "fp32": 7},
    ),
    EngineSpec(
        "tensorrt", "codescan.engines.tensorrt_engine", ("fp16", "fp32"), ("tensorrt", "torch"),
        "pip install 'codescan[tensorrt]'", gpu=True, gated=("fp16",), auto_rank={"fp16": 0, "fp32": 1},
    ),
    EngineSpec(
        "cuda", "codescan.engines.cuda_engine", ("fp16", "fp32"), ("timm",),
        "pip install 'codescan[torch]'", gpu=True, gated=("fp16",), auto_rank={"fp16": 2, "fp32": 3},
    ),
)
ENGINES: dict[str, EngineSpec] = {s.name: s for s in SPECS}
ENGINE_NAMES: tuple[str, ...] = ("auto", *ENGINES)
# GPU engines first (TensorRT, then torch CUDA) when a CUDA GPU is usable; then the CPU engines,
# fastest first, as measured on a 2-core AVX-512 CPU (benchmarks/bench_scan.py).
AUTO_ORDER: tuple[tuple[str, str], ...] = tuple(
    (name, prec) for _, name, prec in sorted((r, s.name, p) for s in SPECS for p, r in s.auto_rank.items())
)
GATE_CANDIDATES: tuple[tuple[str, str], ...] = tuple((s.name, p) for s in SPECS for p in s.gated)


def spec(name: str) -> EngineSpec:
    if name not in ENGINES:
        raise EngineError(f"unknown engine {name!r} (choose from {', '.join(ENGINE_NAMES)})")
    return ENGINES[name]
