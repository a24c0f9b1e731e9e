"""The three CoDE heads, fit with scikit-learn on the trained encoder's embeddings.

The estimators are the authors' (logistic regression; 1-NN with cosine distance; one-class SVM
with a poly kernel, gamma "auto", nu 0.1, fit on real images only) and are turned into
codescan's own heads by the converter that also reads the official pickles, so a trained
bundle scores exactly as an imported one. scikit-learn is imported here only: scanning never
needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from codescan.engines.protocol import Engine
from codescan.train.data import Sample
from codescan.train.embed import embed_files
from codescan.train.metrics import binary_metrics
from codescan.train.threshold import ThresholdChoice, choose_threshold

from codescan.core.records import HeadName
from codescan.inputs.read import DecodeFailure
from codescan.model.heads import Head
from codescan.model.sklearn_heads import estimator_to_head


@dataclass(frozen=True)
class EmbeddedSamples:
    emb: np.ndarray  # (N, D) float32
    is_fake: np.ndarray  # (N,) bool
    failures: dict[str, DecodeFailure]  # path -> why it was left out


def embed_samples(samples: Sequence[Sample], engine: Engine, on_batch: Callable[[int], None] | None = None) -> EmbeddedSamples:
    """Through the scanner's decoder and an fp32 engine: the embeddings `scan` will compute."""
    done = embed_files([s.path for s in samples], engine, on_batch=on_batch)
    is_fake = np.array([samples[int(i)].is_fake for i in done.index], dtype=bool)
    failures = {str(samples[i].path): f for i, f in done.failures.items()}
    emb = done.emb if len(done.index) else np.zeros((0, 0), np.float32)
    return EmbeddedSamples(emb=emb, is_fake=is_fake, failures=failures)


def fit_heads(emb: np.ndarray, is_fake: np.ndarray) -> dict[HeadName, Head]:
    """(N, D) embeddings, (N,) labels -> linear, knn, ocsvm heads (class 1 = fake)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.svm import OneClassSVM

    labels = is_fake.astype(np.int64)
    if labels.min() == labels.max():
        raise ValueError("fitting heads needs real and fake training images")
    estimators = [
        LogisticRegression(max_iter=5000).fit(emb, labels),
        KNeighborsClassifier(n_neighbors=1, metric="cosine", algorithm="brute").fit(emb, labels),
        OneClassSVM(kernel="poly", gamma="auto", nu=0.1).fit(emb[labels == 0]),
    ]
    return dict(estimator_to_head(e) for e in estimators)


@dataclass(frozen=True)
class HeadValidation:
    threshold: ThresholdChoice
    n_real: int
    n_fake: int
    balanced_accuracy: float | None  # at the chosen threshold; None without both classes
    accuracy: float | None
    auc: float | None

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "threshold": self.threshold.to_dict()}


def validate(heads: dict[HeadName, Head], val: EmbeddedSamples) -> dict[HeadName, HeadValidation]:
    """Choose every head's threshold on the validation embeddings and measure it there."""
    out: dict[HeadName, HeadValidation] = {}
    for name, head in heads.items():
        scores = head.score(val.emb) if len(val.is_fake) else np.zeros(0)
        choice = choose_threshold(scores, val.is_fake)
        m = binary_metrics(val.is_fake, scores, choice.threshold)
        cm = m.confusion
        out[name] = HeadValidation(
            threshold=choice,
            n_real=m.n_real,
            n_fake=m.n_fake,
            balanced_accuracy=m.balanced_accuracy,
            accuracy=(cm.tn + cm.tp) / len(scores) if len(scores) else None,
            auc=m.auc,
        )
    return out
