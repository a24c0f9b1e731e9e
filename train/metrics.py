"""Detection metrics in numpy, defined exactly as scikit-learn defines them.

scikit-learn is a test dependency only, so evaluation cannot call it; tests compare every
function here with ``sklearn.metrics`` on random scores with ties. Fake is the positive class
and scores are oriented higher = more likely fake, as every head's are.

Metrics that need a class the data lacks are ``None`` (``null`` in JSON) rather than NaN:
NaN is not JSON, and a silent 0 or 1 would read as a result.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from codescan.core.records import is_fake as verdict_is_fake


@dataclass(frozen=True, slots=True)
class RocCurve:
    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray  # first is +inf: nothing predicted fake


@dataclass(frozen=True, slots=True)
class Confusion:
    """Positive = fake: tn real judged real, fp real judged fake, fn fake judged real, tp fake judged fake."""

    tn: int
    fp: int
    fn: int
    tp: int


@dataclass(frozen=True, slots=True)
class BinaryMetrics:
    n_real: int
    n_fake: int
    real_accuracy: float | None
    fake_accuracy: float | None
    balanced_accuracy: float | None
    auc: float | None
    ap: float | None
    confusion: Confusion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _counts_at_thresholds(is_fake: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positives, true positives, threshold) at each distinct score, highest first.

    Tied scores move together: a threshold cannot separate them, which is what makes tied
    pairs count half in the AUC, as in scikit-learn.
    """
    order = np.argsort(-scores, kind="mergesort")
    s = scores[order]
    y = is_fake[order].astype(np.int64)
    last_of_run = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(y)[last_of_run]
    fps = last_of_run + 1 - tps
    return fps, tps, s[last_of_run]


def _check(is_fake: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(is_fake, dtype=bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"{len(y)} labels but {len(s)} scores")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite")
    return y, s


def roc_curve(is_fake: np.ndarray, scores: np.ndarray) -> RocCurve:
    """The ROC curve over every distinct threshold (sklearn's ``drop_intermediate=False``)."""
    y, s = _check(is_fake, scores)
    n_fake, n_real = int(y.sum()), int((~y).sum())
    if n_fake == 0 or n_real == 0:
        raise ValueError("a ROC curve needs both real and fake samples")
    fps, tps, thr = _counts_at_thresholds(y, s)
    return RocCurve(
        fpr=np.r_[0.0, fps / n_real],
        tpr=np.r_[0.0, tps / n_fake],
        thresholds=np.r_[np.inf, thr],
    )


def roc_auc(is_fake: np.ndarray, scores: np.ndarray) -> float | None:
    y, s = _check(is_fake, scores)
    if y.all() or not y.any():
        return None
    c = roc_curve(y, s)
    return float(np.sum(np.diff(c.fpr) * (c.tpr[1:] + c.tpr[:-1]) / 2.0))


def average_precision(is_fake: np.ndarray, scores: np.ndarray) -> float | None:
    """Σ (Rₙ − Rₙ₋₁)·Pₙ over distinct thresholds: a step integral, no interpolation (sklearn's definition)."""
    y, s = _check(is_fake, scores)
    n_fake = int(y.sum())
    if n_fake == 0:
        return None
    fps, tps, _ = _counts_at_thresholds(y, s)
    precision = tps / (tps + fps)
    recall = tps / n_fake
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion(is_fake: np.ndarray, predicted_fake: np.ndarray) -> Confusion:
    y = np.asarray(is_fake, dtype=bool).ravel()
    p = np.asarray(predicted_fake, dtype=bool).ravel()
    return Confusion(
        tn=int(np.sum(~y & ~p)),
        fp=int(np.sum(~y & p)),
        fn=int(np.sum(y & ~p)),
        tp=int(np.sum(y & p)),
    )


def binary_metrics(is_fake: np.ndarray, scores: np.ndarray, threshold: float) -> BinaryMetrics:
    """Everything `codescan eval` reports for one set of samples, with scan's verdict rule."""
    y, s = _check(is_fake, scores)
    cm = confusion(y, verdict_is_fake(s, threshold))
    n_real, n_fake = cm.tn + cm.fp, cm.fn + cm.tp
    real_acc = cm.tn / n_real if n_real else None
    fake_acc = cm.tp / n_fake if n_fake else None
    balanced = (real_acc + fake_acc) / 2 if real_acc is not None and fake_acc is not None else None
    return BinaryMetrics(
        n_real=n_real,
        n_fake=n_fake,
        real_accuracy=real_acc,
        fake_accuracy=fake_acc,
        balanced_accuracy=balanced,
        auc=roc_auc(y, s),
        ap=average_precision(y, s),
        confusion=cm,
    )
