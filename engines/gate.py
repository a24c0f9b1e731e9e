"""The reduced-precision gate, measured per bundle: what `codescan gate` runs.

A reduced precision (int8, bf16, fp16) is only chosen automatically for a bundle after it has
been compared with fp32 on a labelled folder: every image's embedding cosine ≥ 0.999 and, for
each head, ≥ 99.5% identical verdicts. The results are stored in ``<bundle>/gates.json``
(:mod:`codescan.engines.gates_file`), which is what `auto` reads.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np

from .gates_file import store_gates
from .registry import create_engine, installed
from .specs import GATE_CANDIDATES

if TYPE_CHECKING:
    from codescan.weights import Bundle

MIN_COSINE = 0.999
MIN_AGREEMENT = 0.995


@dataclass(frozen=True)
class GateResult:
    engine: str
    precision: str
    digest: str
    images: int
    cosine_min: float
    cosine_mean: float
    agreement: dict[str, float]  # head -> fraction of identical verdicts
    passed: bool


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (N, D), (N, D) -> (N,)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def compare(bundle: Bundle, engine: str, precision: str, ref: np.ndarray, emb: np.ndarray) -> GateResult:
    heads = bundle.head_set()
    cos = cosine(ref, emb)
    agreement = {}
    for name in heads.names():
        a = [v.status for v in heads.judge(name, ref)]
        b = [v.status for v in heads.judge(name, emb)]
        agreement[name] = float(np.mean([x == y for x, y in zip(a, b)]))
    passed = bool(cos.min() >= MIN_COSINE and all(v >= MIN_AGREEMENT for v in agreement.values()))
    return GateResult(engine, precision, bundle.digest, len(cos), float(cos.min()), float(cos.mean()), agreement, passed)


def run_gate(
    bundle: Bundle, crops: np.ndarray, candidates: Iterable[tuple[str, str]] = GATE_CANDIDATES
) -> list[GateResult]:
    """Embed `crops` (N, 224, 224, 3) with fp32 and each installed candidate; record the results."""
    def embed_all(engine) -> np.ndarray:
        return np.concatenate([engine.embed(crops[i : i + 64]) for i in range(0, len(crops), 64)])

    ref_engine = "torch" if installed("torch") else "onnxruntime"
    ref = embed_all(create_engine(bundle, ref_engine, "fp32"))  # type: ignore[arg-type]
    results = [
        compare(bundle, name, prec, ref, embed_all(create_engine(bundle, name, prec)))  # type: ignore[arg-type]
        for name, prec in candidates
        if installed(name)
    ]
    store_gates(bundle, {"reference": f"{ref_engine}:fp32", "results": [asdict(r) for r in results]})
    return results
