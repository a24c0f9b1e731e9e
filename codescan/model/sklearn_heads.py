"""The scikit-learn estimators codescan knows, as the unpickler rebuilds them, and their
conversion into heads: the mapping lives beside the heads, the unpickler only reads bytes."""

from __future__ import annotations

from typing import Any

import numpy as np

from codescan.core.records import HeadName
from codescan.core.textsafe import printable
from codescan.model.heads import Head, KnnHead, LinearHead, OcsvmHead


class UnsafePickleError(ValueError):
    """The pickle asked for something outside the allow-list or the limits; nothing was executed."""


def _show(value: Any) -> str:
    """A pickle-supplied value as it may appear in a message: escaped and short."""
    return printable(repr(value) if not isinstance(value, str) else value, limit=80)


class EstimatorState:
    """Stands for a scikit-learn estimator: a dict of its fitted attributes, set once by BUILD."""

    sklearn_class = ""

    def __init__(self) -> None:
        self.fields: dict[str, Any] | None = None


class LogisticRegressionState(EstimatorState):
    sklearn_class = "LogisticRegression"


class KNeighborsClassifierState(EstimatorState):
    sklearn_class = "KNeighborsClassifier"


class OneClassSVMState(EstimatorState):
    sklearn_class = "OneClassSVM"


def sklearn_class(state: Any) -> str:
    """The scikit-learn class `state` stands for: an inert state from a pickle, or a fitted estimator itself.

    Both give their fitted attributes through :func:`_fields`, so :func:`estimator_to_head`
    converts the official pickles and the heads ``codescan train`` fits with the same code.
    """
    if isinstance(state, EstimatorState):
        return state.sklearn_class
    cls = type(state)
    return cls.__name__ if cls.__module__.startswith("sklearn.") else ""


def _fields(state: Any) -> dict[str, Any]:
    if isinstance(state, EstimatorState):
        if state.fields is None:
            raise ValueError(f"{state.sklearn_class} pickle has no state")
        return state.fields
    return vars(state)


def _attr(state: Any, *names: str) -> Any:
    fields = _fields(state)
    for n in names:
        if n in fields:
            value = fields[n]
            if isinstance(value, (PendingArray, JoblibArray)):
                if value.array is None:
                    raise ValueError(f"{sklearn_class(state)}: {n} has no data")
                return value.array
            return value
    raise ValueError(f"{sklearn_class(state)} pickle lacks {' / '.join(names)}")


def _numbers(value: Any, what: str) -> np.ndarray:
    """A numeric array from an attribute; anything else (placeholders, strings, objects) is a ValueError."""
    array = np.asarray(value)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"{what} is not numeric (dtype {_show(str(array.dtype))})")
    return array.astype(np.float64)


def _binary_classes(state: Any) -> None:
    classes = np.asarray(_attr(state, "classes_"))
    if classes.shape != (2,) or classes.dtype.kind not in "biu" or classes.tolist() != [0, 1]:
        raise ValueError(f"{sklearn_class(state)}: expected classes_ == [0, 1] (1 = fake), got {_show(classes.tolist())}")


def _scalar(state: Any, name: str, kind: type) -> Any:
    value = _attr(state, name)
    if isinstance(value, np.generic):
        value = value.item()
    if type(value) is bool or not isinstance(value, (int, float)) or (kind is int and not float(value).is_integer()):
        raise ValueError(f"{sklearn_class(state)}: {name} is {_show(value)}, expected a number")
    return kind(value)


def estimator_to_head(state: Any) -> tuple[HeadName, Head]:
    """Turn an unpickled estimator state (or a fitted estimator) into a head, checking CoDE's conventions."""
    kind = sklearn_class(state)
    if kind == "LogisticRegression":
        _binary_classes(state)
        coef = _numbers(_attr(state, "coef_"), "coef_")
        intercept = _numbers(_attr(state, "intercept_"), "intercept_").reshape(-1)
        if coef.ndim != 2 or coef.shape[0] != 1 or intercept.shape != (1,):
            raise ValueError(f"LogisticRegression: expected a binary model, coef_ has shape {coef.shape}")
        return "linear", LinearHead(coef=coef[0], intercept=float(intercept[0]))
    if kind == "KNeighborsClassifier":
        _binary_classes(state)
        if _scalar(state, "n_neighbors", int) != 1:
            raise ValueError("KNeighborsClassifier: only n_neighbors=1 is supported")
        metric = _attr(state, "effective_metric_", "metric")
        if metric != "cosine":
            raise ValueError(f"KNeighborsClassifier: only the cosine metric is supported, got {_show(metric)}")
        bank = np.asarray(_attr(state, "_fit_X"))
        y = np.asarray(_attr(state, "_y")).reshape(-1)
        if bank.dtype.kind != "f" or bank.ndim != 2 or y.dtype.kind not in "iu" or y.shape != (bank.shape[0],):
            raise ValueError("KNeighborsClassifier: _fit_X and _y do not form a bank of labelled embeddings")
        if y.size and (y.min() < 0 or y.max() > 1):
            raise ValueError("KNeighborsClassifier: _y indexes past classes_")
        labels = np.asarray(_attr(state, "classes_"))[y].astype(np.int64)
        return "knn", KnnHead(bank=bank, labels=labels)
    if kind == "OneClassSVM":
        kernel = _attr(state, "kernel")
        if kernel != "poly":
            raise ValueError(f"OneClassSVM: only the poly kernel is supported, got {_show(kernel)}")
        dual = _numbers(_attr(state, "_dual_coef_", "dual_coef_"), "dual_coef_").reshape(-1)
        intercept = _numbers(_attr(state, "_intercept_", "intercept_"), "intercept_").reshape(-1)
        svs = np.asarray(_attr(state, "support_vectors_"))
        if svs.dtype.kind != "f" or svs.ndim != 2 or svs.shape[0] != dual.shape[0] or intercept.shape != (1,):
            raise ValueError("OneClassSVM: support vectors and dual coefficients disagree")
        return "ocsvm", OcsvmHead(
            support_vectors=svs,
            dual_coef=dual,
            intercept=float(intercept[0]),
            gamma=_scalar(state, "_gamma", float),
            coef0=_scalar(state, "coef0", float),
            degree=_scalar(state, "degree", int),
        )
    raise UnsafePickleError(f"expected a scikit-learn head, got {_show(type(state).__name__)}")


class JoblibArray:
    """Stands for joblib's NumpyArrayWrapper: BUILD gives its spec, then the array bytes follow."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None


class PendingArray:
    """numpy's ``_reconstruct(ndarray, (0,), b'b')``: an array waiting for its BUILD state."""

    def __init__(self) -> None:
        self.array: np.ndarray | None = None
