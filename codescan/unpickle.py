"""Read the official scikit-learn head pickles without executing them.

A pickle is a program: ``joblib.load`` on a downloaded file runs whatever callable it names.
:class:`RestrictedUnpickler` resolves only numpy's array/dtype/scalar reconstructors,
joblib's array wrapper and the three estimator classes CoDE ships, and maps those classes to
inert attribute holders, so neither scikit-learn nor any other code is needed or run.
Everything else raises :class:`UnsafePickleError` before it is called.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
from joblib.numpy_pickle import (
    NumpyArrayWrapper,
    NumpyUnpickler,
    _validate_fileobject_and_memmap,
)

from .heads import Head, KnnHead, LinearHead, OcsvmHead
from .records import HeadName


class UnsafePickleError(ValueError):
    """The pickle asked for something outside the allow-list; nothing was executed."""


class EstimatorState:
    """Holds an estimator's __dict__ and nothing else: no methods of the original run."""

    sklearn_class = ""


class LogisticRegressionState(EstimatorState):
    sklearn_class = "LogisticRegression"


class KNeighborsClassifierState(EstimatorState):
    sklearn_class = "KNeighborsClassifier"


class OneClassSVMState(EstimatorState):
    sklearn_class = "OneClassSVM"


_ESTIMATORS: dict[tuple[str, str], type[EstimatorState]] = {}
for _module in ("sklearn.linear_model._logistic", "sklearn.linear_model.logistic"):
    _ESTIMATORS[(_module, "LogisticRegression")] = LogisticRegressionState
for _module in ("sklearn.neighbors._classification", "sklearn.neighbors.classification"):
    _ESTIMATORS[(_module, "KNeighborsClassifier")] = KNeighborsClassifierState
for _module in ("sklearn.svm._classes", "sklearn.svm.classes"):
    _ESTIMATORS[(_module, "OneClassSVM")] = OneClassSVMState


def _plain_dtype(dtype: np.dtype) -> np.dtype:
    """Refuse dtypes whose items hold references (object, StringDType), fields or subarrays.

    Arrays of those can be built or re-shaped by a pickle so that its raw bytes become object
    pointers or reach past the buffer; CoDE's heads only hold plain numbers and strings.
    """
    if dtype.kind in "OT" or dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        raise UnsafePickleError(f"refused dtype {dtype!r}: objects, fields and subarrays are not allowed")
    if dtype.flags != np.dtype(dtype.str).flags:  # dtype.__setstate__ takes its flags from the pickle
        raise UnsafePickleError(f"refused dtype {dtype!r}: forged flags")
    return dtype


def _checked_dtype(*args: Any) -> np.dtype:
    return _plain_dtype(np.dtype(*args))


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles rebuild bytes as _codecs.encode(str, 'latin1'); allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError("refused _codecs.encode other than latin1 on a string")
    return text.encode("latin1")


_NUMPY: dict[tuple[str, str], Any] = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _checked_dtype,
    ("numpy.core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy._core.multiarray", "_reconstruct"): np.ndarray.__reduce__(np.zeros(0))[0],
    ("numpy.core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("numpy._core.multiarray", "scalar"): np.float64(0).__reduce__()[0],
    ("joblib.numpy_pickle", "NumpyArrayWrapper"): NumpyArrayWrapper,
}


class RestrictedUnpickler(NumpyUnpickler):
    dispatch = NumpyUnpickler.dispatch.copy()

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ESTIMATORS:
            return _ESTIMATORS[key]
        if key in _NUMPY:
            return _NUMPY[key]
        if module.startswith("numpy.dtypes") and name.endswith("DType"):
            cls = getattr(np.dtypes, name, None)
            if isinstance(cls, type) and issubclass(cls, np.dtype) and name not in ("ObjectDType", "StringDType"):
                return cls
        raise UnsafePickleError(f"refused to load {module}.{name}: not an allowed scikit-learn head or numpy array")

    def load_build(self) -> None:
        # joblib's wrapper reads object arrays with plain pickle.load: refuse them before it can.
        top = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(top, NumpyArrayWrapper):
            state = self.stack[-1]
            dtype = state.get("dtype") if isinstance(state, dict) else None
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise UnsafePickleError("refused an object-dtype array (it would be read with plain pickle)")
            if state.get("subclass") is not np.ndarray:
                raise UnsafePickleError("refused an ndarray subclass")
        NumpyUnpickler.load_build(self)
        if isinstance(top, np.dtype):
            _plain_dtype(top)  # its __setstate__ may have added fields, a subarray or flags

    dispatch[pickle.BUILD[0]] = load_build

    # numpy.ndarray is admitted as a class for _reconstruct and the wrapper, never to be called:
    # ndarray(shape, dtype, buffer) lays pickle bytes out as array memory, and any admitted class
    # given as its dtype means "object", so those bytes would become object pointers.
    def _refuse_ndarray_call(self, func: Any) -> None:
        if func is np.ndarray:
            raise UnsafePickleError("refused a direct numpy.ndarray(...) call")

    def load_reduce(self) -> None:
        self._refuse_ndarray_call(self.stack[-2] if len(self.stack) >= 2 else None)
        NumpyUnpickler.load_reduce(self)

    def load_newobj(self) -> None:
        self._refuse_ndarray_call(self.stack[-2] if len(self.stack) >= 2 else None)
        NumpyUnpickler.load_newobj(self)

    def load_newobj_ex(self) -> None:
        self._refuse_ndarray_call(self.stack[-3] if len(self.stack) >= 3 else None)
        NumpyUnpickler.load_newobj_ex(self)

    def _instantiate(self, klass: Any, args: Any) -> None:  # INST and OBJ opcodes
        self._refuse_ndarray_call(klass)
        NumpyUnpickler._instantiate(self, klass, args)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex


def restricted_load(path: Path) -> Any:
    """joblib.load's file handling (plain, zlib, gzip, lzma, ... compression) with our unpickler."""
    with open(path, "rb") as fh:
        with _validate_fileobject_and_memmap(fh, str(path), None) as (fobj, _):
            if isinstance(fobj, str):
                raise UnsafePickleError(f"{path}: pre-0.10 joblib format is not supported")
            return RestrictedUnpickler(str(path), fobj, True).load()


def sklearn_class(state: Any) -> str:
    """The scikit-learn class `state` stands for: an inert state from a pickle, or a fitted estimator itself.

    Both keep the fitted attributes in their ``__dict__``, so :func:`estimator_to_head` converts
    the official pickles and the heads ``codescan train`` fits with the same code.
    """
    if isinstance(state, EstimatorState):
        return state.sklearn_class
    cls = type(state)
    return cls.__name__ if cls.__module__.startswith("sklearn.") else ""


def _attr(state: Any, *names: str) -> Any:
    for n in names:
        if n in vars(state):
            return vars(state)[n]
    raise ValueError(f"{sklearn_class(state)} pickle lacks {' / '.join(names)}")


def _binary_classes(state: Any) -> None:
    classes = np.asarray(_attr(state, "classes_"))
    if classes.shape != (2,) or classes.tolist() != [0, 1]:
        raise ValueError(f"{sklearn_class(state)}: expected classes_ == [0, 1] (1 = fake), got {classes.tolist()}")


def estimator_to_head(state: Any) -> tuple[HeadName, Head]:
    """Turn an unpickled estimator state (or a fitted estimator) into a head, checking CoDE's conventions."""
    kind = sklearn_class(state)
    if kind == "LogisticRegression":
        _binary_classes(state)
        coef = np.asarray(_attr(state, "coef_"), dtype=np.float64)
        intercept = np.asarray(_attr(state, "intercept_"), dtype=np.float64).reshape(-1)
        if coef.ndim != 2 or coef.shape[0] != 1 or intercept.shape != (1,):
            raise ValueError(f"LogisticRegression: expected a binary model, coef_ has shape {coef.shape}")
        return "linear", LinearHead(coef=coef[0], intercept=float(intercept[0]))
    if kind == "KNeighborsClassifier":
        _binary_classes(state)
        if int(_attr(state, "n_neighbors")) != 1:
            raise ValueError("KNeighborsClassifier: only n_neighbors=1 is supported")
        metric = _attr(state, "effective_metric_", "metric")
        if metric != "cosine":
            raise ValueError(f"KNeighborsClassifier: only the cosine metric is supported, got {metric!r}")
        classes = np.asarray(_attr(state, "classes_"))
        labels = classes[np.asarray(_attr(state, "_y")).reshape(-1)].astype(np.int64)
        return "knn", KnnHead(bank=np.asarray(_attr(state, "_fit_X")), labels=labels)
    if kind == "OneClassSVM":
        kernel = _attr(state, "kernel")
        if kernel != "poly":
            raise ValueError(f"OneClassSVM: only the poly kernel is supported, got {kernel!r}")
        dual = np.asarray(_attr(state, "_dual_coef_", "dual_coef_"), dtype=np.float64).reshape(-1)
        intercept = np.asarray(_attr(state, "_intercept_", "intercept_"), dtype=np.float64).reshape(-1)
        svs = np.asarray(_attr(state, "support_vectors_"))
        if svs.shape[0] != dual.shape[0] or intercept.shape != (1,):
            raise ValueError("OneClassSVM: support vectors and dual coefficients disagree")
        return "ocsvm", OcsvmHead(
            support_vectors=svs,
            dual_coef=dual,
            intercept=float(intercept[0]),
            gamma=float(_attr(state, "_gamma")),
            coef0=float(_attr(state, "coef0")),
            degree=int(_attr(state, "degree")),
        )
    raise UnsafePickleError(f"expected a scikit-learn head, got {type(state).__name__}")
