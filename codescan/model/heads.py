"""The three CoDE heads as plain array math on embeddings.

Every score is oriented the same way, higher = more likely AI-generated, and a file is
``fake`` when its score is strictly above the head's threshold. With threshold 0 this
reproduces scikit-learn's ``predict`` of the official estimators:

- linear: logistic decision function ``x·w + b`` (class 1 = fake).
- knn: max cosine similarity to the fake bank minus max to the real bank (1-NN, cosine).
- ocsvm: minus the one-class SVM decision function; the SVM was fit on real images only and
  scikit-learn's +1 (inlier) means real.

Computed in float64 (libsvm's precision), one embedding at a time: a batched matrix product
rounds differently depending on how many rows share the call, and a file's score must not
depend on which files were batched with it (a resumed scan must equal an uninterrupted one). scikit-learn computes a float32-fit linear head and
the cosine kNN in float32, so verdicts within ~5e-7 of the threshold may differ from its
``predict``; such scores carry no meaningful verdict anyway.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from codescan.core.records import (
    HEAD_NAMES,
    HeadChoice,
    HeadName,
    HeadVerdict,
    status_for,
)


@dataclass(frozen=True)
class LinearHead:
    coef: np.ndarray  # (D,) float64
    intercept: float

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        return _per_row(emb, lambda x: float(np.dot(x, self.coef)) + self.intercept)


def _per_row(emb: np.ndarray, fn) -> np.ndarray:
    """Apply fn to each float64 row: results independent of batch size and batch mates."""
    rows = np.asarray(emb, dtype=np.float64)
    return np.array([fn(row) for row in rows], dtype=np.float64).reshape(len(rows))


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
        object.__setattr__(self, "_fake", unit[labels == 1])
        object.__setattr__(self, "_real", unit[labels == 0])

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        fake, real = self._fake, self._real  # type: ignore[attr-defined]
        return _per_row(_unit_rows(emb), lambda q: float((fake @ q).max() - (real @ q).max()))


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
        object.__setattr__(self, "_svs", np.asarray(self.support_vectors, dtype=np.float64))  # once, not per batch

    def score(self, emb: np.ndarray) -> np.ndarray:  # (B, D) -> (B,)
        svs = self._svs  # type: ignore[attr-defined]

        def one(x: np.ndarray) -> float:
            k = (self.gamma * (svs @ x) + self.coef0) ** self.degree  # (S,)
            return -(float(np.dot(k, self.dual_coef)) + self.intercept)  # libsvm: sum_i a_i K(sv_i, x) - rho

        return _per_row(emb, one)


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

    def scores(self, emb: np.ndarray) -> list[dict[str, float]]:
        """Every head's score for each embedding: (B, D) -> B dicts, head name -> score."""
        per_head = {n: self.heads[n].score(emb) for n in self.names()}  # name -> (B,)
        return [{n: float(s[i]) for n, s in per_head.items()} for i in range(len(emb))]

    def judge(self, name: HeadName, emb: np.ndarray, threshold: float | None = None) -> list[HeadVerdict]:
        if name not in self.heads:
            raise KeyError(f"this bundle has no {name!r} head (has: {', '.join(self.names()) or 'none'})")
        t = self.threshold(name) if threshold is None else threshold
        scores = self.heads[name].score(emb)
        return [HeadVerdict(score=float(s), status=status_for(float(s), t)) for s in scores]


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


def load_heads(path: Path) -> dict[HeadName, Head]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        meta = f.metadata() or {}
        t = {k: f.get_tensor(k) for k in f.keys()}
    for key, array in t.items():  # before any is read into a head: int(NaN) would say nothing useful
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            raise ValueError(f"{path}: {key} holds a non-finite value (NaN or infinity); refused")
    out: dict[HeadName, Head] = {}
    for entry in filter(None, meta.get("heads", "").split(",")):
        name, kind = entry.split("=", 1)
        if name not in HEAD_NAMES:
            raise ValueError(f"{path}: unknown head {name!r}")
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
            raise ValueError(f"{path}: unknown head kind {kind!r}")
        require_finite_head(name, out[name])  # type: ignore[index]
    return out
