"""The reduced-precision gate: measured per bundle, recorded beside it, read by `auto`.

A reduced precision (int8, bf16) is only chosen automatically for a bundle after it has been
compared with fp32 on a labelled folder: every image's embedding cosine ≥ 0.999 and, for
each head, ≥ 99.5% identical verdicts. Results live in ``<bundle>/gates.json``, tied to the
bundle digest so they die with the weights they were measured on, and written with a record
(:mod:`codescan.engines.derived`) like every derived file. Unlike a graph, gate results cannot
be rebuilt without the labelled folder, so a gates.json that fails its record is refused, with
one line, wherever it would be consulted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import derived

if TYPE_CHECKING:
    from codescan.weights import Bundle

MIN_COSINE = 0.999
MIN_AGREEMENT = 0.995
CANDIDATES: tuple[tuple[str, str], ...] = (("onnxruntime", "int8"), ("torch", "bf16"))
GATES_KEY = {"contents": "gate results"}


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


def gates_path(bundle: Bundle) -> Path:
    return bundle.path / "gates.json"


def passed_gates(bundle: Bundle) -> set[tuple[str, str]]:
    remedy = f"re-run `codescan gate DIR --weights {bundle.name}`, or delete it to scan in fp32"
    data = derived.read_or_refuse(bundle, gates_path(bundle), GATES_KEY, remedy)
    try:
        records = json.loads(data or b"{}")
    except ValueError:
        return set()
    return {
        (r["engine"], r["precision"])
        for r in records.get("results", [])
        if r.get("passed") is True and r.get("digest") == bundle.digest
    }


def store_gates(bundle: Bundle, document: dict[str, Any]) -> Path:
    """gates.json with its record: only results codescan wrote can make `auto` pick a reduced precision."""
    path = gates_path(bundle)
    derived.write(bundle, path, (json.dumps(document, indent=2) + "\n").encode(), GATES_KEY)
    return path


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


def run_gate(bundle: Bundle, crops: np.ndarray, candidates: Iterable[tuple[str, str]] = CANDIDATES) -> list[GateResult]:
    """Embed `crops` (N, 224, 224, 3) with fp32 and each installed candidate; record the results."""
    from .base import create_engine, installed

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
