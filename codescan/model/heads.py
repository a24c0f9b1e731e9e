"""The three CoDE heads as plain array math on embeddings.

Every score is oriented the same way, higher = more likely AI-generated, and a file is
``fake`` when its score is strictly above the head's threshold. With threshold 0 this
reproduces scikit-learn's ``predict`` of the official estimators:

- linear: logistic decision function ``x·w + b`` (class 1 = fake).
- knn: max cosine similarity to the fake bank minus max to the real bank (1-NN, cosine).
- ocsvm: minus the one-class SVM decision function; the SVM was fit on real images only and
  scikit-learn's +1 (inlier) means real.

Computed in float64 (libsvm's precision), a batch at once, in a form whose result for one row
does not depend on the other rows: the linear head's dot product is an elementwise product that
numpy sums along the feature axis row by row, and the kNN and SVM products against their stored
rows are one BLAS call per row of one fixed shape, (1, D) × (D, N), which numpy's stacked matmul
loops over in C. One (B, D) × (D, N) product would be faster still, but BLAS blocks it by B, so
a file's score would change in its last bits with the files batched beside it (up to 4e-14 in
tests) and a resumed scan would differ from an uninterrupted one. The tests check the
invariance on this BLAS for 1, 7 and 64 rows, any position and any memory alignment.

The cost per file grows with what a head stores: D multiply-adds for the linear head, bank × D
for the kNN head, support vectors × D for the one-class SVM (D = 192). scikit-learn computes a
float32-fit linear head and the cosine kNN in float32, so verdicts within ~5e-7 of the threshold
may differ from its ``predict``; such scores carry no meaningful verdict anyway.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from codescan.core.records import HEAD_NAMES, HeadChoice, HeadName

# Part of the scan cache's model key: a change of the arithmetic that moves any score's bits
# (2: a batch at once, row-invariant, instead of one Python-level dot product per row) retires stored verdicts.
SCORING_VERSION = 2


def row_dots(x: np.ndarray, bank_t: np.ndarray) -> np.ndarray:  # (B, D), (D, N) -> (B, N)
    """Every row of `x` against every stored row, one BLAS call per row of `x` (see above)."""
    return np.matmul(x[:, None, :], bank_t)[:, 0, :]  # (B, 1, D) @ (D, N) -> (B, 1, N)


@dataclass(frozen=True)
class LinearHead:
    coef: np.ndarray  # (D,) float64
    intercept: float

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        # np.add.reduce is what ndarray.sum runs, the same bits, without its Python-level wrapper
        # (2 µs of a batch's 5 at batch 8); float32 or float16 rows times the float64 coef are
        # products in float64, as with a conversion first (one numpy call fewer).
        return np.add.reduce(emb * self.coef, axis=-1) + self.intercept


def _unit_rows(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


@dataclass(frozen=True)
class KnnHead:
    bank: np.ndarray  # (N, D) training embeddings
    labels: np.ndarray  # (N,) 1 = fake, 0 = real

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels)
        if not (np.any(labels == 1) and np.any(labels == 0)):
            raise ValueError("knn bank needs both real (0) and fake (1) examples")
        unit = _unit_rows(self.bank)
        object.__setattr__(self, "_fake_t", np.ascontiguousarray(unit[labels == 1].T))  # (D, fakes)
        object.__setattr__(self, "_real_t", np.ascontiguousarray(unit[labels == 0].T))  # (D, reals)

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        unit = _unit_rows(np.asarray(emb))  # (B, D)
        return row_dots(unit, self._fake_t).max(axis=1) - row_dots(unit, self._real_t).max(axis=1)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class OcsvmHead:
    support_vectors: np.ndarray  # (S, D)
    dual_coef: np.ndarray  # (S,)
    intercept: float
    gamma: float
    coef0: float
    degree: int
    kernel: Literal["poly"] = "poly"

    def __post_init__(self) -> None:
        svs = np.asarray(self.support_vectors, dtype=np.float64)
        object.__setattr__(self, "_svs_t", np.ascontiguousarray(svs.T))  # (D, S), once, not per batch

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        x = np.asarray(emb, dtype=np.float64)
        k = (self.gamma * row_dots(x, self._svs_t) + self.coef0) ** self.degree  # (B, S)  # type: ignore[attr-defined]
        return -((k * self.dual_coef).sum(axis=-1) + self.intercept)  # libsvm: sum_i a_i K(sv_i, x) - rho


Head = LinearHead | KnnHead | OcsvmHead


def finite(value: Any, what: str) -> float:
    """``value`` as a float when it is a finite number, else ValueError naming ``what``.

    Every threshold and head parameter goes through here, wherever it comes from (`--threshold`,
    bundle.json, heads.safetensors, a head pickle, calibrate): with a NaN threshold ``score > t``
    is never true (every file "real"), ±inf makes every file one class, and neither is JSON.
    A bool or a string ("nan") is not a number here, even where float() would take it.
    """
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) is bool or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is a {type(value).__name__}, not a number")
    try:
        number = float(value)
    except OverflowError:  # an int past float's range
        number = math.inf
    if not math.isfinite(number):
        raise ValueError(f"{what} is {number!r}: only finite numbers are accepted")
    return number


def head_parameters(head: Head) -> dict[str, Any]:
    """Every number a head computes its score from, by the name an error message gives it."""
    if isinstance(head, LinearHead):
        return {"coef": head.coef, "intercept": head.intercept}
    if isinstance(head, KnnHead):
        return {"bank": head.bank, "labels": head.labels}
    return {
        "support_vectors": head.support_vectors, "dual_coef": head.dual_coef, "intercept": head.intercept,
        "gamma": head.gamma, "coef0": head.coef0, "degree": head.degree,
    }


def require_finite_head(name: str, head: Head) -> Head:
    """The head itself, or ValueError (one line) when any of its numbers is NaN or infinite."""
    for what, value in head_parameters(head).items():
        array = np.asarray(value)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name} head: {what} is not numeric (dtype {array.dtype.str}); refused")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"{name} head: {what} holds a non-finite value (NaN or infinity); refused")
    return head


@dataclass(frozen=True)
class HeadSet:
    heads: dict[HeadName, Head]
    thresholds: dict[HeadName, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, value in self.thresholds.items():
            finite(value, f"the {name} threshold")

    def names(self) -> list[HeadName]:
        return [n for n in HEAD_NAMES if n in self.heads]

    def select(self, choice: HeadChoice, bundle: str) -> list[HeadName]:
        """The heads `--head` asks for, in canonical order; ValueError names what the bundle has."""
        names = self.names()
        if not names:
            raise ValueError(f"bundle {bundle!r} has no heads")
        if choice == "all":
            return names
        if choice not in names:
            raise ValueError(f"bundle {bundle!r} has no {choice!r} head (has: {', '.join(names)})")
        return [choice]

    def threshold(self, name: HeadName) -> float:
        return float(self.thresholds.get(name, 0.0))

    def score_rows(self, emb: np.ndarray, names: Sequence[HeadName] | None = None) -> np.ndarray:
        """(B, D) embeddings -> (B, H) float64 scores, one column per head of `names` (default:
        every head, in `names()` order).

        With `scores` (which takes one head's column directly), the one scoring path: scan, Ray, eval,
        calibrate and the gate all score here."""
        x = np.asarray(emb, dtype=np.float64)
        names = self.names() if names is None else names
        out = np.empty((len(x), len(names)))  # (B, H), filled column by column: np.stack costs more than a head
        for j, name in enumerate(names):
            out[:, j] = self.heads[name].score(x)
        return out

    def scores(self, emb: np.ndarray, names: Sequence[HeadName] | None = None) -> list[dict[str, float]]:
        """Each embedding's scores by the heads of `names` (default: every head): (B, D) -> B dicts,
        head name -> score. A head's score for a row is the same whichever heads run beside it."""
        names = self.names() if names is None else names
        if len(names) == 1:  # a scan's usual case, one judged head and no cache: its column, no (B, 1) matrix
            (name,) = names
            return [{name: score} for score in self.heads[name].score(emb).tolist()]
        return [dict(zip(names, row)) for row in self.score_rows(emb, names).tolist()]


def over_boxes(boxes: Sequence[Mapping[str, float]], heads: Sequence[HeadName]) -> tuple[dict[HeadName, float], int]:
    """A file's score per head from its boxes' (`--crops 5`), and the box that set the first head's.

    The maximum, as in the paper's five-crop evaluation: one box that looks generated is enough.
    The one max-over-crops, for scan and eval alike; the first box wins a tie (the centre)."""
    combined = {n: max(box[n] for box in boxes) for n in heads}
    deciding = max(range(len(boxes)), key=lambda i: boxes[i][heads[0]])
    return combined, deciding


def save_heads(heads: dict[HeadName, Head], path: Path) -> None:
    from safetensors.numpy import save_file

    tensors: dict[str, np.ndarray] = {}
    for name, head in heads.items():
        require_finite_head(name, head)
        if isinstance(head, LinearHead):
            tensors[f"{name}.coef"] = head.coef.astype(np.float64)
            tensors[f"{name}.intercept"] = np.array([head.intercept], dtype=np.float64)
        elif isinstance(head, KnnHead):
            tensors[f"{name}.bank"] = np.ascontiguousarray(head.bank)
            tensors[f"{name}.labels"] = np.asarray(head.labels, dtype=np.int64)
        else:
            tensors[f"{name}.support_vectors"] = np.ascontiguousarray(head.support_vectors)
            tensors[f"{name}.dual_coef"] = head.dual_coef.astype(np.float64)
            tensors[f"{name}.params"] = np.array([head.intercept, head.gamma, head.coef0, head.degree], dtype=np.float64)
    kinds = {name: type(head).__name__ for name, head in heads.items()}
    save_file(tensors, str(path), metadata={"heads": ",".join(f"{n}={k}" for n, k in kinds.items())})


def load_heads(data: bytes, source: str) -> dict[HeadName, Head]:
    """The heads in a heads.safetensors file's bytes: the caller hashes the same bytes first, so
    what is checked is what is parsed (`source` names the file in messages)."""
    from safetensors.numpy import load

    t = load(data)
    meta = _safetensors_metadata(data)
    for key, array in t.items():  # before any is read into a head: int(NaN) would say nothing useful
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"{source}: {key} holds a non-finite value (NaN or infinity); refused")
    out: dict[HeadName, Head] = {}
    for entry in filter(None, meta.get("heads", "").split(",")):
        name, kind = entry.split("=", 1)
        if name not in HEAD_NAMES:
            raise ValueError(f"{source}: unknown head {name!r}")
        if kind == "LinearHead":
            out[name] = LinearHead(coef=t[f"{name}.coef"], intercept=float(t[f"{name}.intercept"][0]))  # type: ignore[index]
        elif kind == "KnnHead":
            out[name] = KnnHead(bank=t[f"{name}.bank"], labels=t[f"{name}.labels"])  # type: ignore[index]
        elif kind == "OcsvmHead":
            intercept, gamma, coef0, degree = t[f"{name}.params"].tolist()
            out[name] = OcsvmHead(  # type: ignore[index]
                support_vectors=t[f"{name}.support_vectors"],
                dual_coef=t[f"{name}.dual_coef"],
                intercept=intercept,
                gamma=gamma,
                coef0=coef0,
                degree=int(degree),
            )
        else:
            raise ValueError(f"{source}: unknown head kind {kind!r}")
        require_finite_head(name, out[name])  # type: ignore[index]
    return out


def _safetensors_metadata(data: bytes) -> dict[str, str]:
    """The header's ``__metadata__``: safetensors reads it only through a file (safe_open), and
    the bytes have already been read and hashed. Called after `load` accepted the same bytes, so
    the header is known to be well formed."""
    size = int.from_bytes(data[:8], "little")
    meta = json.loads(data[8 : 8 + size]).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
