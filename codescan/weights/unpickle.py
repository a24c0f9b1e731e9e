"""Read the official scikit-learn head pickles without executing them.

A pickle is a program: ``joblib.load`` on a downloaded file runs whatever callable it names,
and even an allow-list of "harmless" numpy and joblib classes is not enough when the library
code behind them is run (joblib 1.5 reads a wrapper whose dtype says "object" with a nested
plain ``pickle.load``; numpy's ``dtype.__setstate__`` rewrites a shared descriptor's itemsize
under arrays that already use it). So nothing here delegates to numpy's or joblib's
unpickling code:

- ``find_class`` hands out inert placeholders and a handful of our own constructor
  functions; no class or function of another library is ever returned to the pickle.
- BUILD is ours: an estimator placeholder takes one dict of plain ``str`` keys, once; a joblib
  array wrapper, a numpy array or a dtype takes the exact state numpy/joblib write, validated
  field by field; anything else is refused. No ``__setstate__`` and no ``setattr`` run.
- Arrays are made fresh from validated bytes: a real dtype instance of a plain numeric or
  string kind, built from its type string (never mutated afterwards), an item count times
  itemsize equal to the bytes supplied, a size within :class:`HeadLimits` checked before the
  allocation; never an object path.
- Decompression (zlib, gzip, bz2, xz, lzma: joblib's formats) is ours too, streamed, and the
  bytes it may produce are capped, absolutely and relative to the file's size, before anything
  is allocated; the opcode count is capped as well.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from codescan.model.sklearn_heads import (
    EstimatorState,
    JoblibArray,
    KNeighborsClassifierState,
    LogisticRegressionState,
    OneClassSVMState,
    PendingArray,
    UnsafePickleError,
    _show,
)
from codescan.weights.inflate import (
    CappedStream,
    LimitExceeded,
    UnsupportedCompression,
    open_capped,
)

GiB = 1 << 30
MiB = 1 << 20


@dataclass(frozen=True)
class HeadLimits:
    """Caps on what one head file may make the reader allocate (docs/security.md lists them).

    The defaults sit far above any real head (CoDE's kNN bank is a few MB), and each can be
    raised through its ``CODESCAN_HEAD_*`` environment variable.
    """

    max_bytes: int = 4 * GiB  # decompressed bytes in all
    max_array_bytes: int = 2 * GiB  # one array (a kNN bank)
    max_ratio: int = 200  # decompressed : compressed size, once past ratio_floor
    ratio_floor: int = 64 * MiB
    max_ops: int = 1_000_000  # pickle opcodes: real heads use a few hundred

    @classmethod
    def from_env(cls, env: dict[str, str] | os._Environ[str] = os.environ) -> HeadLimits:
        names = {
            "max_bytes": "CODESCAN_HEAD_MAX_BYTES",
            "max_array_bytes": "CODESCAN_HEAD_MAX_ARRAY_BYTES",
            "max_ratio": "CODESCAN_HEAD_MAX_RATIO",
        }
        values: dict[str, int] = {}
        for attr, var in names.items():
            raw = env.get(var)
            if raw:
                try:
                    values[attr] = int(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not a whole number of bytes") from None
        return cls(**values)


def _refuse(message: str) -> UnsafePickleError:
    return UnsafePickleError(f"refused {message}")


def open_head_stream(fh: BinaryIO, size: int, limits: HeadLimits) -> CappedStream:
    return open_capped(fh, size, limits.max_bytes, limits.max_ratio, limits.ratio_floor)


# ----------------------------------------------------------------------------------------------
# Inert placeholders: what find_class hands out instead of real classes


_ESTIMATORS: dict[tuple[str, str], type[EstimatorState]] = {}
for _module in ("sklearn.linear_model._logistic", "sklearn.linear_model.logistic"):
    _ESTIMATORS[(_module, "LogisticRegression")] = LogisticRegressionState
for _module in ("sklearn.neighbors._classification", "sklearn.neighbors.classification"):
    _ESTIMATORS[(_module, "KNeighborsClassifier")] = KNeighborsClassifierState
for _module in ("sklearn.svm._classes", "sklearn.svm.classes"):
    _ESTIMATORS[(_module, "OneClassSVM")] = OneClassSVMState


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` where pickles name it as a class argument; never callable."""


NDARRAY = _NdarrayClass()


@dataclass
class PendingDType:
    """A dtype named by a pickle: its type string, optional BUILD state, and the one real dtype
    made from them at first use. It cannot change afterwards."""

    typestr: str
    state: tuple[Any, ...] | None = None
    final: np.dtype | None = field(default=None, repr=False)

    def resolve(self) -> np.dtype:
        if self.final is None:
            self.final = _make_dtype(self.typestr, self.state)
        return self.final


# Plain numbers and byte/unicode strings; no objects, records, subarrays, datetimes or voids.
_TYPESTR = re.compile(r"^[<>|=]?(b1|[iu][1248]|f[248]|[SU][1-9][0-9]{0,8})$")
_ARRAY_KINDS = "biufSU"
_MAX_NDIM = 32


def _make_dtype(typestr: str, state: tuple[Any, ...] | None) -> np.dtype:
    """A fresh dtype from an allowed type string; a BUILD state may only restate its defaults."""
    base = np.dtype(typestr)
    if state is None:
        return base
    if len(state) == 9 and state[0] == 4 and state[8] is None:
        state = (3, *state[1:8])
    if len(state) != 8 or state[0] != 3:
        raise _refuse(f"a dtype state of an unknown form ({_show(state)})")
    _, order, subarray, names, fields, elsize, alignment, flags = state
    if subarray is not None or names is not None or fields is not None:
        raise _refuse(f"dtype {typestr}: fields and subarrays are not allowed")
    if elsize not in (-1, base.itemsize) or alignment not in (-1, base.alignment) or flags != base.flags:
        raise _refuse(f"dtype {typestr}: its state rewrites itemsize, alignment or flags ({_show(state)})")
    if order not in ("<", ">", "|", "="):
        raise _refuse(f"dtype {typestr}: byte order {_show(order)}")
    if base.byteorder == "|":
        if order != "|":
            raise _refuse(f"dtype {typestr}: byte order {_show(order)}")
        return base
    return base.newbyteorder(order)


def _as_dtype(value: Any) -> np.dtype:
    if not isinstance(value, PendingDType):
        raise _refuse(f"an array whose dtype is {_show(type(value).__name__)}, not a numpy dtype")
    return value.resolve()


def _shape(value: Any) -> tuple[int, ...]:
    if (
        not isinstance(value, tuple)
        or len(value) > _MAX_NDIM
        or not all(type(d) is int and d >= 0 for d in value)
    ):
        raise _refuse(f"an array shape {_show(value)}")
    return value


def _nbytes(shape: tuple[int, ...], dtype: np.dtype, limits: HeadLimits) -> int:
    count = 1
    for d in shape:
        count *= d  # Python ints: no overflow
    nbytes = count * dtype.itemsize
    if nbytes > limits.max_array_bytes:
        raise _refuse(
            f"an array of {nbytes:,} bytes (limit {limits.max_array_bytes:,}; raise CODESCAN_HEAD_MAX_ARRAY_BYTES)"
        )
    return nbytes


def _array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, limits: HeadLimits) -> np.ndarray:
    if isinstance(raw, memoryview):
        raw = raw.tobytes()
    if not isinstance(raw, (bytes, bytearray)):
        raise _refuse(f"array data of type {_show(type(raw).__name__)}")
    if len(raw) != _nbytes(shape, dtype, limits):
        raise _refuse(f"array data of {len(raw):,} bytes for shape {_show(shape)} of {dtype}")
    flat = np.frombuffer(raw, dtype=dtype).copy()  # owned memory, never a view of pickle bytes
    return _finish(flat, shape, fortran)


def _finish(flat: np.ndarray, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    array = flat.reshape(shape[::-1]).transpose() if fortran else flat.reshape(shape)
    if array.dtype.byteorder not in ("=", "|"):
        array = array.astype(array.dtype.newbyteorder("="))
    array.flags.writeable = False
    return array


# The only callables a pickle may REDUCE, each validating its arguments.


def _dtype_ctor(typestr: Any, align: Any = False, copy: Any = True) -> PendingDType:
    if not isinstance(typestr, str) or not _TYPESTR.match(typestr) or type(align) is not bool or type(copy) is not bool:
        raise _refuse(f"dtype {_show(typestr)}: only plain numbers and strings are allowed")
    return PendingDType(typestr)


def _reconstruct(cls: Any, shape: Any, typecode: Any) -> PendingArray:
    if cls is not NDARRAY or shape != (0,) or typecode != b"b":
        raise _refuse("a numpy _reconstruct call other than numpy's own array pickle")
    return PendingArray()


def _latin1_encode(text: Any, encoding: str = "utf-8") -> bytes:
    """Protocol-2 pickles rebuild bytes as _codecs.encode(str, 'latin1'); allow only that."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise _refuse("_codecs.encode other than latin1 on a string")
    return text.encode("latin1")


def _empty_bytes(*args: Any) -> bytes:
    """Protocol-2 pickles write b"" as bytes(); nothing else."""
    if args:
        raise _refuse("a bytes(...) call with arguments")
    return b""


class RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its dispatch table is ours to own
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, stream: CappedStream, limits: HeadLimits) -> None:
        super().__init__(stream)
        self.stream = stream
        self.limits = limits
        self.ops = 0

        def scalar(dtype: Any, data: Any) -> np.generic:
            dt = _as_dtype(dtype)
            if dt.kind not in "biuf" or not isinstance(data, (bytes, bytearray)) or len(data) != dt.itemsize:
                raise _refuse(f"a numpy scalar of {dt} from {_show(type(data).__name__)}")
            return np.frombuffer(data, dtype=dt)[0]

        def frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
            if order not in ("C", "F"):
                raise _refuse(f"array order {_show(order)}")
            return _array_from_bytes(buf, _as_dtype(dtype), _shape(shape), order == "F", limits)

        self.callables: dict[tuple[str, str], Callable[..., Any]] = {
            ("numpy", "dtype"): _dtype_ctor,
            ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy.core.multiarray", "scalar"): scalar,
            ("numpy._core.multiarray", "scalar"): scalar,
            ("numpy.core.numeric", "_frombuffer"): frombuffer,
            ("numpy._core.numeric", "_frombuffer"): frombuffer,
            ("_codecs", "encode"): _latin1_encode,
            ("builtins", "bytes"): _empty_bytes,
            ("__builtin__", "bytes"): _empty_bytes,
        }
        self._callable_ids = {id(f) for f in self.callables.values()}

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name)
        if key in _ESTIMATORS:
            return _ESTIMATORS[key]
        if key == ("numpy", "ndarray"):
            return NDARRAY
        if key == ("joblib.numpy_pickle", "NumpyArrayWrapper"):
            return JoblibArray
        if key in self.callables:
            return self.callables[key]
        raise _refuse(f"to load {_show(module)}.{_show(name)}: not an allowed scikit-learn head or numpy array")

    # Every opcode is counted: a flood of tiny objects is bounded like a flood of bytes.
    def _count(self) -> None:
        self.ops += 1
        if self.ops > self.limits.max_ops:
            raise _refuse(f"a pickle of more than {self.limits.max_ops:,} opcodes")

    def load_reduce(self) -> None:
        self._count()
        args = self.stack.pop()
        func = self.stack[-1]
        if id(func) not in self._callable_ids or not isinstance(args, tuple):
            raise _refuse(f"a call of {_show(getattr(func, '__name__', type(func).__name__))}")
        self.stack[-1] = func(*args)

    def _new(self, cls: Any, args: Any, kwargs: Any = None) -> None:
        self._count()
        if not (isinstance(cls, type) and issubclass(cls, (EstimatorState, JoblibArray))) or args != () or kwargs:
            raise _refuse(f"creating {_show(getattr(cls, '__name__', type(cls).__name__))} here")
        self.append(cls())

    def load_newobj(self) -> None:
        args = self.stack.pop()
        self._new(self.stack.pop(), args)

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        self._new(self.stack.pop(), args, kwargs)

    def load_bytearray8(self) -> None:
        """pickle's own version allocates the declared length before reading: read (and charge) first."""
        (size,) = struct.unpack("<Q", self.read(8))
        data = self.read(size)
        if len(data) != size:
            raise pickle.UnpicklingError("BYTEARRAY8 data cut short")
        self.append(bytearray(data))

    def load_inst_or_obj(self) -> None:
        raise _refuse("the INST/OBJ opcodes (not used by scikit-learn or joblib)")

    def load_build(self) -> None:
        self._count()
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, EstimatorState):
            inst.fields = self._estimator_state(inst, state)
        elif isinstance(inst, JoblibArray):
            self.stack[-1] = inst.array = self._joblib_array(inst, state)
        elif isinstance(inst, PendingArray):
            inst.array = self._numpy_array(inst, state)
        elif isinstance(inst, PendingDType):
            if inst.state is not None or inst.final is not None:
                raise _refuse(f"dtype {inst.typestr}: a second BUILD, after it was set or used")
            if not isinstance(state, tuple):
                raise _refuse(f"dtype {inst.typestr}: state {_show(type(state).__name__)}")
            inst.state = state
            inst.resolve()  # validated now, frozen from here on
        else:
            raise _refuse(f"BUILD of {_show(type(inst).__name__)}")

    @staticmethod
    def _str_dict(state: Any, what: str) -> dict[str, Any]:
        if type(state) is not dict or not all(type(k) is str for k in state):
            raise _refuse(f"{what}: its state must be a dict with plain string keys")
        return state

    def _estimator_state(self, inst: EstimatorState, state: Any) -> dict[str, Any]:
        if inst.fields is not None:
            raise _refuse(f"{inst.sklearn_class}: a second BUILD")
        return dict(self._str_dict(state, inst.sklearn_class))

    def _joblib_array(self, inst: JoblibArray, state: Any) -> np.ndarray:
        """joblib's layout: the wrapper's dict, then (optional padding and) the raw array bytes."""
        if inst.array is not None:
            raise _refuse("joblib array wrapper: a second BUILD")
        spec = self._str_dict(state, "joblib array wrapper")
        allowed = {"subclass", "shape", "order", "dtype", "allow_mmap", "numpy_array_alignment_bytes"}
        if not {"subclass", "shape", "order", "dtype"} <= spec.keys() <= allowed:
            raise _refuse(f"joblib array wrapper with fields {_show(sorted(spec))}")
        if spec["subclass"] is not NDARRAY or spec["order"] not in ("C", "F"):
            raise _refuse("joblib array wrapper: an ndarray subclass or an unknown order")
        dtype = _as_dtype(spec["dtype"])
        if dtype.kind not in _ARRAY_KINDS:
            raise _refuse(f"joblib array of dtype {dtype}")
        shape = _shape(spec["shape"])
        nbytes = _nbytes(shape, dtype, self.limits)
        alignment = spec.get("numpy_array_alignment_bytes")
        if alignment is not None:
            if type(alignment) is not int or not 0 < alignment <= 4096:
                raise _refuse(f"joblib array alignment {_show(alignment)}")
            pad = self.stream.read(1)
            if pad and pad[0]:
                self.stream.read(pad[0])
        flat = np.empty(nbytes // dtype.itemsize, dtype=dtype)  # within the caps checked just above
        if self.stream.readinto(memoryview(flat.view(np.uint8))) != nbytes:
            raise _refuse("a joblib array whose data is cut short")
        return _finish(flat, shape, spec["order"] == "F")

    def _numpy_array(self, inst: PendingArray, state: Any) -> np.ndarray:
        if inst.array is not None:
            raise _refuse("numpy array: a second BUILD")
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if not isinstance(state, tuple) or len(state) != 4 or type(state[2]) is not bool:
            raise _refuse(f"a numpy array state of an unknown form ({_show(type(state).__name__)})")
        shape, dtype, fortran, raw = state
        dt = _as_dtype(dtype)
        if dt.kind not in _ARRAY_KINDS:
            raise _refuse(f"numpy array of dtype {dt}")
        return _array_from_bytes(raw, dt, _shape(shape), fortran, self.limits)

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BYTEARRAY8[0]] = load_bytearray8
    dispatch[pickle.INST[0]] = load_inst_or_obj
    dispatch[pickle.OBJ[0]] = load_inst_or_obj
    dispatch[pickle.BUILD[0]] = load_build


def _counted(op: Callable[[RestrictedUnpickler], None]) -> Callable[[RestrictedUnpickler], None]:
    def run(self: RestrictedUnpickler) -> None:
        self._count()
        op(self)

    return run


for _code, _op in list(RestrictedUnpickler.dispatch.items()):
    if _op not in (RestrictedUnpickler.load_reduce, RestrictedUnpickler.load_newobj, RestrictedUnpickler.load_newobj_ex, RestrictedUnpickler.load_build):
        RestrictedUnpickler.dispatch[_code] = _counted(_op)


def restricted_load(path: Path, limits: HeadLimits | None = None) -> Any:
    """Read one head file (plain pickle or joblib, any of joblib's compressions) into inert objects."""
    limits = limits or HeadLimits.from_env()
    with open(path, "rb") as fh:
        try:
            stream = open_head_stream(fh, os.fstat(fh.fileno()).st_size, limits)
            return RestrictedUnpickler(stream, limits).load()
        except UnsafePickleError:
            raise
        except (LimitExceeded, UnsupportedCompression) as exc:
            raise _refuse(f"a head that {exc}" if isinstance(exc, LimitExceeded) else f"this head: {exc}") from None
        except MemoryError:
            raise _refuse("a head that needs more memory than it is allowed") from None
        except Exception as exc:  # noqa: BLE001 - any other failure of a hostile file means "unreadable"
            raise ValueError(f"{path.name}: not a readable head pickle ({type(exc).__name__}: {_show(str(exc))})") from None


# ----------------------------------------------------------------------------------------------
# Estimator state -> head


