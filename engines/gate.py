"""The reduced-precision gate, measured per bundle: what `codescan gate` runs.

A reduced precision (int8, bf16, fp16) is only chosen automatically for a bundle after it has
been compared with fp32 on a folder of images, under three rules: every image's embedding
cosine ≥ 0.999; for each head, ≥ 99.5% identical verdicts; and for each head the sample must
*show* agreement of at least 99% at 95% confidence (the one-sided Clopper–Pearson lower bound of
the agreement rate). The last rule is the sample-size rule: with no flip at all it needs 299
images, so 20 images that agree say only that agreement is above ~86%, and pass nothing. The
results are stored in ``<bundle>/gates.json`` (:mod:`codescan.engines.gates_file`), which is
what `auto` reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import numpy as np
from codescan.engines.gates_file import GATE_RULE, store_gates
from codescan.engines.registry import create_engine, installed
from codescan.engines.specs import GATE_CANDIDATES

from codescan.core.records import status_for

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

MIN_COSINE = 0.999
MIN_AGREEMENT = 0.995
MIN_AGREEMENT_BOUND = 0.99  # the agreement the sample must show, at CONFIDENCE
CONFIDENCE = 0.95


def agreement_lower_bound(agree: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper–Pearson lower bound of a binomial rate: the p at which `agree` or more
    successes in `n` would happen with probability 1 − confidence (Beta(α; agree, n − agree + 1)).

    Bisection on the exact binomial tail, summed over the flips (few, in any gate that can pass),
    so the scanner needs no scipy.
    """
    if n <= 0 or agree <= 0:
        return 0.0
    alpha = 1.0 - confidence
    flips = n - agree

    def tail(p: float) -> float:  # P(at least `agree` of n agree | rate p) = P(at most `flips` flip)
        q = 1.0 - p
        if q <= 0.0:
            return 1.0
        logs = [
            math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) + j * math.log(q) + (n - j) * math.log(p)
            for j in range(flips + 1)
        ]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    low, high = 0.0, 1.0  # tail(p) grows with p: find where it crosses alpha
    for _ in range(60):
        mid = (low + high) / 2
        if mid <= 0.0 or tail(mid) < alpha:
            low = mid
        else:
            high = mid
    return low


def images_needed(flips: int = 0, bound: float = MIN_AGREEMENT_BOUND, confidence: float = CONFIDENCE) -> int:
    """The smallest sample whose agreement bound reaches `bound` with `flips` flips (299 with none)."""
    n = max(flips + 1, math.ceil(math.log(1 - confidence) / math.log(bound)))
    while agreement_lower_bound(n - flips, n, confidence) < bound:
        n += 1
    return n


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
    agreement_bound: dict[str, float] = field(default_factory=dict)  # head -> 95% lower bound of the agreement rate
    flips: dict[str, int] = field(default_factory=dict)  # head -> verdicts that differ from fp32
    reasons: list[str] = field(default_factory=list)  # why it did not pass; empty when it did
    rule: int = GATE_RULE  # gates.json results of an older rule never pass (gates_file.passed_gates)
    measured: str = ""  # UTC date of the measurement, as the scans that use it say


def judge_gate(cosine_min: float, flips: Mapping[str, int], images: int) -> tuple[bool, list[str]]:
    """The three rules, for `codescan gate` and the GPU check alike: (passed, why not)."""
    reasons = []
    if not cosine_min >= MIN_COSINE:
        reasons.append(f"an image's embedding cosine is {cosine_min:.6f} < {MIN_COSINE}")
    for head, flipped in flips.items():
        agreement = (images - flipped) / images if images else 0.0
        if agreement < MIN_AGREEMENT:
            reasons.append(f"{head}: {agreement:.2%} identical verdicts < {MIN_AGREEMENT:.1%}")
        elif (bound := agreement_lower_bound(images - flipped, images)) < MIN_AGREEMENT_BOUND:
            reasons.append(
                f"{head}: {images} images with {flipped} flipped verdict{'s' * (flipped != 1)} show agreement above "
                f"{bound:.1%} only (95% confidence); {MIN_AGREEMENT_BOUND:.0%} "
                f"needs at least {images_needed(flipped)} images with that many flips ({images_needed(0)} if none flip)"
            )
    return not reasons, reasons


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:  # (N, D), (N, D) -> (N,)
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def compare(bundle: Bundle, engine: str, precision: str, ref: np.ndarray, emb: np.ndarray) -> GateResult:
    heads = bundle.head_set()
    cos = cosine(ref, emb)
    flips = {}
    ref_scores, scores = heads.score_rows(ref), heads.score_rows(emb)  # (N, H) each
    for col, name in enumerate(heads.names()):
        t = heads.threshold(name)
        a = [status_for(s, t) for s in ref_scores[:, col].tolist()]
        b = [status_for(s, t) for s in scores[:, col].tolist()]
        flips[name] = sum(x != y for x, y in zip(a, b))
    n = len(cos)
    passed, reasons = judge_gate(float(cos.min()), flips, n)
    # An fp16 overflow gives a NaN cosine: it fails the rule above, and is stored as -1 (strict JSON).
    low, mean = (float(np.nan_to_num(x, nan=-1.0, posinf=-1.0, neginf=-1.0)) for x in (cos.min(), cos.mean()))
    return GateResult(
        engine, precision, bundle.digest, n, low, mean,
        agreement={h: (n - f) / n for h, f in flips.items()},
        passed=passed,
        agreement_bound={h: agreement_lower_bound(n - f, n) for h, f in flips.items()},
        flips=flips,
        reasons=reasons,
        measured=datetime.now(timezone.utc).date().isoformat(),
    )


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
