"""Hand-assembled pickles for attack tests: the opcodes an attacker would write, one call each."""

from __future__ import annotations

import pickle
import struct


class Asm:
    def __init__(self, proto: int = 2) -> None:
        self.b = bytearray(b"\x80" + bytes([proto]) if proto >= 2 else b"")

    def raw(self, data: bytes) -> Asm:
        self.b += data
        return self

    def op(self, code: bytes, arg: bytes = b"") -> Asm:
        return self.raw(code + arg)

    def glob(self, module: str, name: str) -> Asm:
        return self.op(pickle.GLOBAL, f"{module}\n{name}\n".encode("latin-1"))

    def int_(self, v: int) -> Asm:
        if 0 <= v < 256:
            return self.op(pickle.BININT1, bytes([v]))
        if -(2**31) <= v < 2**31:
            return self.op(pickle.BININT, struct.pack("<i", v))
        raw = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
        return self.op(pickle.LONG1, bytes([len(raw)]) + raw)

    def str_(self, s: str) -> Asm:
        e = s.encode("utf-8", "surrogatepass")
        return self.op(pickle.BINUNICODE, struct.pack("<I", len(e)) + e)

    def bytes_(self, data: bytes) -> Asm:
        return self.op(pickle.BINBYTES, struct.pack("<I", len(data)) + data)

    def __getattr__(self, name: str):
        codes = {
            "mark": pickle.MARK, "tup": pickle.TUPLE, "tup1": pickle.TUPLE1, "tup2": pickle.TUPLE2,
            "tup3": pickle.TUPLE3, "empty_tup": pickle.EMPTY_TUPLE, "empty_dict": pickle.EMPTY_DICT,
            "empty_list": pickle.EMPTY_LIST, "append": pickle.APPEND, "setitem": pickle.SETITEM,
            "setitems": pickle.SETITEMS, "none": pickle.NONE, "true": pickle.NEWTRUE, "false": pickle.NEWFALSE,
            "reduce": pickle.REDUCE, "build": pickle.BUILD, "newobj": pickle.NEWOBJ, "pop": pickle.POP,
            "stop": pickle.STOP,
        }
        if name not in codes:
            raise AttributeError(name)
        return lambda: self.op(codes[name])

    def put(self, i: int) -> Asm:
        return self.op(pickle.BINPUT, bytes([i]))

    def get(self, i: int) -> Asm:
        return self.op(pickle.BINGET, bytes([i]))

    def dtype(self, spec: str, state: tuple | None = None) -> Asm:
        """numpy.dtype(spec, False, True), then BUILD(state) when given (ints, str and None only)."""
        self.glob("numpy", "dtype").str_(spec).false().true().tup3().reduce()
        if state is not None:
            self.mark()
            for v in state:
                self.none() if v is None else self.str_(v) if isinstance(v, str) else self.int_(v)
            self.tup().build()
        return self

    def array(self, shape: tuple[int, ...], dtype: str, raw: bytes, module: str = "numpy.core.multiarray") -> Asm:
        """numpy's own array pickle: _reconstruct(ndarray, (0,), b'b'), BUILD((1, shape, dtype, False, raw))."""
        self.glob(module, "_reconstruct").glob("numpy", "ndarray").int_(0).tup1().bytes_(b"b").tup3().reduce()
        self.mark().int_(1).mark()
        for d in shape:
            self.int_(d)
        self.tup().dtype(dtype).false().bytes_(raw).tup().build()
        return self

    def estimator(self, module: str = "sklearn.linear_model._logistic", cls: str = "LogisticRegression") -> Asm:
        return self.glob(module, cls).empty_tup().newobj()

    def done(self) -> bytes:
        return bytes(self.stop().b)
