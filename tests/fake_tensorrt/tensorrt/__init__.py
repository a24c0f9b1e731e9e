"""A stand-in for the ``tensorrt`` package, for tests on machines without a GPU or TensorRT.

It implements the small part of the TensorRT 10.x / 11.x Python API that codescan uses, with
the same names and call signatures, and checks each call the way a real build or run would fail
(or the way codescan's contract requires): the network must be strongly typed, the parser must
get a parseable ONNX model, the profile must cover the network's dynamic input, shapes must lie
inside the profile, and both tensor addresses must be set before ``execute_async_v3``. Every
call is appended to ``CALLS``; every build to ``BUILDS``.

Nothing here touches a GPU. "Inference" reads the uint8 crops at the input address and writes
:func:`fake_embedding` of them at the output address through ctypes, so tests must hand it host
memory (CPU torch tensors) and should register those buffers in ``valid_ranges`` so that a wrong
address fails an assertion instead of crashing the interpreter. ``submit`` lets a test queue the
work on its own fake stream instead of running it at once.

``configure(version, strongly_typed_flag=True)`` switches between a 10.x surface (BuilderFlag.FP16
exists; a network must be created with the STRONGLY_TYPED flag) and an 11.x surface (no FP16
flag; every network is strongly typed; the flag may be present-but-ignored or absent).
"""

from __future__ import annotations

import ctypes
import enum
import hashlib
import json
from typing import Any, Callable

import numpy as np

__version__ = "10.13.3.9"
CALLS: list[tuple] = []
BUILDS: list[dict[str, Any]] = []
submit: Callable[[int, Callable[[], None]], None] | None = None
valid_ranges: list[tuple[int, int]] | None = None

_MAGIC = b"FAKE-TRT-PLAN\0"
# ONNX ops the real onnx-tensorrt parser supports that codescan's graph may use.
SUPPORTED_OPS = {
    "Add", "Cast", "Concat", "Conv", "Div", "Erf", "Expand", "Gather", "Identity", "LayerNormalization",
    "MatMul", "Mul", "Reshape", "Shape", "Softmax", "Sub", "Transpose", "Gelu", "Slice", "Squeeze", "Unsqueeze",
}


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    INT64 = 8


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0
    DLA_MANAGED_SRAM = 1
    DLA_LOCAL_DRAM = 2
    DLA_GLOBAL_DRAM = 3
    TACTIC_DRAM = 4


class _Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


class Logger:
    Severity = _Severity
    INTERNAL_ERROR = _Severity.INTERNAL_ERROR
    ERROR = _Severity.ERROR
    WARNING = _Severity.WARNING
    INFO = _Severity.INFO
    VERBOSE = _Severity.VERBOSE

    def __init__(self, min_severity: _Severity = _Severity.WARNING) -> None:
        self.min_severity = min_severity


NetworkDefinitionCreationFlag: Any = None
BuilderFlag: Any = None


def _major() -> int:
    return int(__version__.split(".")[0])


def configure(version: str = "10.13.3.9", strongly_typed_flag: bool = True) -> None:
    """Pretend to be TensorRT `version`; 11.x may keep (ignored) or drop the STRONGLY_TYPED flag."""
    global __version__, NetworkDefinitionCreationFlag, BuilderFlag
    __version__ = version
    if _major() < 11:
        flags = {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}
        builder = {"FP16": 0, "INT8": 1, "DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 5, "TF32": 7, "BF16": 17}
    else:
        flags = {"STRONGLY_TYPED": 1} if strongly_typed_flag else {}
        flags["PREFER_JIT_PYTHON_PLUGINS"] = 3
        builder = {"DEBUG": 2, "GPU_FALLBACK": 3, "REFIT": 5, "TF32": 7}
    NetworkDefinitionCreationFlag = enum.IntEnum("NetworkDefinitionCreationFlag", flags)
    BuilderFlag = enum.IntEnum("BuilderFlag", builder)


def reset() -> None:
    global submit, valid_ranges
    CALLS.clear()
    BUILDS.clear()
    submit = None
    valid_ranges = None
    configure()


configure()


def fake_embedding(crops: np.ndarray, dim: int) -> np.ndarray:
    """What the fake engine computes: the first dim-1 bytes of each crop, then (sum mod 9973)."""
    flat = crops.reshape(len(crops), -1)
    out = np.zeros((len(crops), dim), np.float32)
    out[:, : dim - 1] = flat[:, : dim - 1]
    out[:, dim - 1] = flat.sum(1, dtype=np.int64) % 9973
    return out


# ------------------------------------------------------------------------------------- build side


class _Tensor:
    def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...]) -> None:
        self.name, self.dtype, self.shape = name, dtype, shape


class INetworkDefinition:
    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.inputs: list[_Tensor] = []
        self.outputs: list[_Tensor] = []
        self.onnx_sha256: str | None = None

    @property
    def strongly_typed(self) -> bool:
        flag = getattr(NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        if _major() >= 11:
            return True  # always, whatever the flags say
        return flag is not None and bool(self.flags & (1 << int(flag)))

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, i: int) -> _Tensor:
        return self.inputs[i]

    @property
    def num_outputs(self) -> int:
        return len(self.outputs)

    def get_output(self, i: int) -> _Tensor:
        return self.outputs[i]


class _ParserError:
    def __init__(self, text: str) -> None:
        self.text = text

    def desc(self) -> str:
        return self.text

    def __str__(self) -> str:
        return self.text


class OnnxParser:
    def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
        assert isinstance(network, INetworkDefinition) and isinstance(logger, Logger)
        self.network = network
        self.errors: list[_ParserError] = []
        CALLS.append(("OnnxParser",))

    @property
    def num_errors(self) -> int:
        return len(self.errors)

    def get_error(self, i: int) -> _ParserError:
        return self.errors[i]

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        data = bytes(model)
        CALLS.append(("parse", hashlib.sha256(data).hexdigest()))
        try:
            proto = onnx.load_from_string(data)
        except Exception as exc:  # noqa: BLE001
            self.errors.append(_ParserError(f"ModelImporter: cannot parse the model ({exc})"))
            return False
        unsupported = sorted({n.op_type for n in proto.graph.node} - SUPPORTED_OPS)
        if unsupported:
            self.errors.append(_ParserError(f"no importer registered for op(s) {unsupported}"))
            return False
        types = {onnx.TensorProto.UINT8: DataType.UINT8, onnx.TensorProto.FLOAT: DataType.FLOAT, onnx.TensorProto.FLOAT16: DataType.HALF}
        inits = {i.name for i in proto.graph.initializer}

        def tensor(vi) -> _Tensor:
            t = vi.type.tensor_type
            dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim)
            return _Tensor(vi.name, types[t.elem_type], dims)

        self.network.inputs = [tensor(vi) for vi in proto.graph.input if vi.name not in inits]
        self.network.outputs = [tensor(vi) for vi in proto.graph.output]
        self.network.onnx_sha256 = hashlib.sha256(data).hexdigest()
        return True


class IOptimizationProfile:
    def __init__(self) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:  # noqa: A002 - TensorRT's names
        shapes = (tuple(min), tuple(opt), tuple(max))
        assert len({len(s) for s in shapes}) == 1, f"profile shapes of different rank: {shapes}"
        assert all(a <= b <= c for a, b, c in zip(*shapes)), f"profile needs min <= opt <= max: {shapes}"
        CALLS.append(("set_shape", input, *shapes))
        self.shapes[input] = shapes


class IBuilderConfig:
    def __init__(self) -> None:
        self.pool_limits: dict[MemoryPoolType, int] = {}
        self.flags: set[int] = {int(BuilderFlag.TF32)}  # on by default, as in TensorRT
        self.profiles: list[IOptimizationProfile] = []

    def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
        assert isinstance(pool, MemoryPoolType) and int(pool_size) > 0
        CALLS.append(("set_memory_pool_limit", pool, int(pool_size)))
        self.pool_limits[pool] = int(pool_size)

    def set_flag(self, flag: Any) -> None:
        CALLS.append(("set_flag", flag.name))
        self.flags.add(int(flag))

    def clear_flag(self, flag: Any) -> None:
        CALLS.append(("clear_flag", flag.name))
        self.flags.discard(int(flag))

    def get_flag(self, flag: Any) -> bool:
        return int(flag) in self.flags

    def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
        self.profiles.append(profile)
        return len(self.profiles) - 1


class Builder:
    def __init__(self, logger: Logger) -> None:
        assert isinstance(logger, Logger)
        CALLS.append(("Builder",))

    def create_network(self, flags: int = 0) -> INetworkDefinition:
        CALLS.append(("create_network", int(flags)))
        return INetworkDefinition(int(flags))

    def create_builder_config(self) -> IBuilderConfig:
        return IBuilderConfig()

    def create_optimization_profile(self) -> IOptimizationProfile:
        return IOptimizationProfile()

    def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> bytes | None:
        assert network.onnx_sha256 is not None, "build before a successful parse"
        assert network.strongly_typed, "network was not created strongly typed"
        fp16 = getattr(BuilderFlag, "FP16", None)
        assert fp16 is None or int(fp16) not in config.flags, "FP16 builder flag set on a strongly typed network"
        assert len(config.profiles) == 1, f"expected one optimisation profile, got {len(config.profiles)}"
        profile = config.profiles[0]
        for t in network.inputs:
            if -1 in t.shape:
                assert t.name in profile.shapes, f"dynamic input {t.name!r} has no profile"
            if t.name in profile.shapes:
                for shape in profile.shapes[t.name]:
                    assert len(shape) == len(t.shape) and all(d == -1 or d == s for d, s in zip(t.shape, shape)), (
                        f"profile {shape} does not fit input {t.name} {t.shape}"
                    )
        assert set(profile.shapes) <= {t.name for t in network.inputs}, f"profile names unknown inputs {set(profile.shapes)}"
        header = {
            "version": __version__,
            "onnx_sha256": network.onnx_sha256,
            "inputs": [[t.name, int(t.dtype), list(t.shape)] for t in network.inputs],
            "outputs": [[t.name, int(t.dtype), list(t.shape)] for t in network.outputs],
            "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()},
        }
        BUILDS.append(
            {
                **header,
                "network_flags": network.flags,
                "strongly_typed": network.strongly_typed,
                "pool_limits": {p.name: v for p, v in config.pool_limits.items()},
                "builder_flags": sorted(BuilderFlag(f).name for f in config.flags),
            }
        )
        CALLS.append(("build_serialized_network",))
        return _MAGIC + json.dumps(header).encode()


# --------------------------------------------------------------------------------------- run side


class Runtime:
    def __init__(self, logger: Logger) -> None:
        assert isinstance(logger, Logger)

    def deserialize_cuda_engine(self, serialized_engine: Any) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        CALLS.append(("deserialize_cuda_engine", hashlib.sha256(data).hexdigest()))
        if not data.startswith(_MAGIC):
            return None  # TensorRT logs an error and returns None
        header = json.loads(data[len(_MAGIC) :])
        if header["version"] != __version__:
            return None  # plans only load in the TensorRT version that built them
        return ICudaEngine(header)


class ICudaEngine:
    def __init__(self, header: dict[str, Any]) -> None:
        self.io = [(n, TensorIOMode.INPUT, DataType(d), tuple(s)) for n, d, s in header["inputs"]]
        self.io += [(n, TensorIOMode.OUTPUT, DataType(d), tuple(s)) for n, d, s in header["outputs"]]
        self.profile = {k: tuple(tuple(s) for s in v) for k, v in header["profile"].items()}

    def _get(self, name: str) -> tuple:
        for t in self.io:
            if t[0] == name:
                return t
        raise KeyError(name)

    @property
    def num_io_tensors(self) -> int:
        return len(self.io)

    def get_tensor_name(self, index: int) -> str:
        return self.io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        try:
            return self._get(name)[1]
        except KeyError:
            return TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._get(name)[2]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return self._get(name)[3]

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        assert profile_index == 0
        return list(self.profile[name])

    def create_execution_context(self) -> IExecutionContext:
        CALLS.append(("create_execution_context",))
        return IExecutionContext(self)


_ITEMSIZE = {DataType.UINT8: 1, DataType.FLOAT: 4, DataType.HALF: 2}
_CTYPE = {DataType.UINT8: (ctypes.c_uint8, np.uint8), DataType.FLOAT: (ctypes.c_float, np.float32)}


def _view(address: int, dtype: DataType, shape: tuple[int, ...]) -> np.ndarray:
    ctype, nptype = _CTYPE[dtype]
    count = int(np.prod(shape))
    return np.ctypeslib.as_array((ctype * count).from_address(address)).view(nptype).reshape(shape)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.addresses: dict[str, int] = {}

    def set_input_shape(self, name: str, shape: Any) -> bool:
        shape = tuple(int(d) for d in shape)
        CALLS.append(("set_input_shape", name, shape))
        if self.engine.get_tensor_mode(name) != TensorIOMode.INPUT:
            return False
        lo, _, hi = self.engine.profile[name]
        if len(shape) != len(lo) or not all(a <= d <= b for a, d, b in zip(lo, shape, hi)):
            return False  # outside the optimisation profile
        self.shapes[name] = shape
        return True

    def set_tensor_address(self, name: str, memory: int) -> bool:
        CALLS.append(("set_tensor_address", name, int(memory)))
        if self.engine.get_tensor_mode(name) == TensorIOMode.NONE or not memory:
            return False
        self.addresses[name] = int(memory)
        return True

    def _output_shape(self, name: str) -> tuple[int, ...]:
        batch = next(iter(self.shapes.values()))[0]
        return tuple(batch if d == -1 else d for d in self.engine.get_tensor_shape(name))

    def execute_async_v3(self, stream_handle: int) -> bool:
        io = self.engine.io
        for name, mode, _, _ in io:
            assert name in self.addresses, f"execute_async_v3 before set_tensor_address({name!r})"
            assert mode != TensorIOMode.INPUT or name in self.shapes, f"execute_async_v3 before set_input_shape({name!r})"
        # Shapes and addresses are captured at enqueue time, as TensorRT does.
        bound = {
            name: (self.addresses[name], dtype, self.shapes[name] if mode == TensorIOMode.INPUT else self._output_shape(name))
            for name, mode, dtype, _ in io
        }
        for name, (address, dtype, shape) in bound.items():
            nbytes = int(np.prod(shape)) * _ITEMSIZE[dtype]
            if valid_ranges is not None:
                assert any(a <= address and address + nbytes <= a + n for a, n in valid_ranges), (
                    f"{name!r}: address {address:#x} (+{nbytes} bytes) is not inside a buffer the device allocated"
                )
        CALLS.append(("execute_async_v3", int(stream_handle), {n: b[0] for n, b in bound.items()}))
        inputs = [n for n, m, _, _ in io if m == TensorIOMode.INPUT]
        outputs = [n for n, m, _, _ in io if m == TensorIOMode.OUTPUT]

        def run() -> None:
            crops = _view(*bound[inputs[0]])
            result = _view(*bound[outputs[0]])
            result[...] = fake_embedding(crops, result.shape[1])

        if submit is None:
            run()
        else:
            submit(int(stream_handle), run)
        return True
