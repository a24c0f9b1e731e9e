"""TensorRT on a CUDA GPU: an engine file built once per GPU from the bundle's ONNX graph, then stored.

Building the engine file (what TensorRT calls a plan: strongly typed from the bundle's ONNX
graph, one optimisation profile) and storing it beside the bundle under a key of everything its
validity depends on is :mod:`codescan.engines.tensorrt_build`; this module loads and runs it.

Run. An engine runner with two slots (pinned host input, device input, device output, pinned host
output, two events each) and two streams: while the engine runs batch i on the compute stream,
the copy stream uploads batch i+1 from the other pinned buffer. That happens inside one
``embed`` call, and across calls through ``submit``/``collect`` (up to two batches in flight),
which the scan pipeline uses to queue batch i+1 before it waits for batch i. All CUDA work goes through a
small :class:`Device` interface (torch CUDA tensors, streams and events in production), so the
TensorRT call sequence can be exercised in tests without a GPU.

Nothing here imports tensorrt or torch at module import time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from codescan.engines.export import INPUT, OUTPUT
from codescan.engines.protocol import EngineError
from codescan.engines.tensorrt_build import (
    DEFAULT_MAX_BATCH,
    DEFAULT_WORKSPACE,
    INSTALL_HINT,
    Device,
    EngineFileError,
    EngineFileInfo,
    _log_stderr,
    ensure_engine_file,
    import_tensorrt,
)

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle


# --------------------------------------------------------------------------------------- device


class CudaDevice:
    """torch CUDA memory, streams and events (no pycuda): the production Device."""

    def __init__(self, index: int | None = None) -> None:
        try:
            import torch
        except ImportError:
            raise EngineError(f"the TensorRT engine needs torch for its CUDA buffers: {INSTALL_HINT}") from None
        if not torch.cuda.is_available():
            raise EngineError("no CUDA GPU is available here (torch.cuda.is_available() is False)")
        self._torch = torch
        self.index = torch.cuda.current_device() if index is None else index
        torch.cuda.set_device(self.index)  # TensorRT deserialises and runs on the current device
        torch.cuda.init()
        self._dev = torch.device("cuda", self.index)
        self.name = f"cuda:{self.index}"

    def describe(self) -> tuple[str, str]:
        props = self._torch.cuda.get_device_properties(self._dev)
        return str(props.name), f"{props.major}.{props.minor}"

    def empty(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self._torch.empty(shape, dtype=getattr(self._torch, dtype), device=self._dev)

    def pinned(self, shape: tuple[int, ...], dtype: str) -> Any:
        return self._torch.empty(shape, dtype=getattr(self._torch, dtype), pin_memory=True)

    def stream(self) -> Any:
        return self._torch.cuda.Stream(device=self._dev)

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def event(self) -> Any:
        return self._torch.cuda.Event()

    def copy_async(self, dst: Any, src: Any, stream: Any) -> None:
        with self._torch.cuda.stream(stream):
            dst.copy_(src, non_blocking=True)

    def record(self, event: Any, stream: Any) -> None:
        event.record(stream)

    def wait(self, stream: Any, event: Any) -> None:
        stream.wait_event(event)

    def synchronize(self, event: Any) -> None:
        event.synchronize()


def default_device() -> Device:
    return CudaDevice()


# ------------------------------------------------------------------------------------------ run


@dataclass
class _Slot:
    host_in: Any  # pinned (max_batch, H, W, 3) uint8
    dev_in: Any  # device (max_batch, H, W, 3) uint8
    dev_out: Any  # device (max_batch, D) float32
    host_out: Any  # pinned (max_batch, D) float32
    uploaded: Any  # event: host_in -> dev_in copy finished
    finished: Any  # event: inference and dev_out -> host_out copy finished


@dataclass(eq=False)
class _Ticket:
    """One submitted batch: the slot it occupies until its result is copied out of host_out."""

    slot: _Slot | None
    n: int
    result: np.ndarray | None = None
    collected: bool = False


class EngineRunner:
    """Deserialises an engine file and runs it, double buffered, through a Device."""

    def __init__(self, trt: Any, serialized: bytes, device: Device, max_batch: int, embed_dim: int, img_size: int = 224) -> None:
        self.trt, self.device = trt, device
        self.max_batch, self.embed_dim, self.img_size = max_batch, embed_dim, img_size
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(serialized)
        if self.engine is None:
            raise EngineFileError("TensorRT could not deserialize the stored engine file")
        self._check_io()
        self.context = self.engine.create_execution_context()
        if self.context is None:
            raise EngineError("TensorRT could not create an execution context (out of GPU memory?)")
        shape_in = (max_batch, img_size, img_size, 3)
        shape_out = (max_batch, embed_dim)
        self.slots = [
            _Slot(
                host_in=device.pinned(shape_in, "uint8"),
                dev_in=device.empty(shape_in, "uint8"),
                dev_out=device.empty(shape_out, "float32"),
                host_out=device.pinned(shape_out, "float32"),
                uploaded=device.event(),
                finished=device.event(),
            )
            for _ in range(2)
        ]
        self.copy_stream = device.stream()
        self.compute_stream = device.stream()
        self._next = 0  # the slot the next submit() uses
        self._inflight: list[_Ticket] = []  # submitted, result still in its slot (at most 2)

    def _check_io(self) -> None:
        trt, engine = self.trt, self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        expected = {INPUT: (trt.TensorIOMode.INPUT, trt.DataType.UINT8), OUTPUT: (trt.TensorIOMode.OUTPUT, trt.DataType.FLOAT)}
        if sorted(names) != sorted(expected):
            raise EngineFileError(f"engine file has I/O tensors {names}, expected {sorted(expected)}")
        for name, (mode, dtype) in expected.items():
            if engine.get_tensor_mode(name) != mode or engine.get_tensor_dtype(name) != dtype:
                raise EngineFileError(f"engine file tensor {name!r} has the wrong direction or type")
        out_shape = tuple(engine.get_tensor_shape(OUTPUT))
        if len(out_shape) != 2 or out_shape[1] != self.embed_dim:
            raise EngineFileError(f"engine file output shape {out_shape} does not end in {self.embed_dim}")

    def submit(self, crops: np.ndarray) -> _Ticket:
        """Enqueue one batch (upload, inference, download) and return at once; see collect().

        Batches alternate between the two slots, so batch i+1's upload is queued while batch i
        computes. A third submit reuses the oldest batch's slot, so that batch's result is first
        copied out (a host wait on it only). Empty or larger-than-max_batch inputs run through
        embed() here, synchronously.
        """
        crops = np.asarray(crops, dtype=np.uint8)
        if len(crops) == 0 or len(crops) > self.max_batch:
            return _Ticket(None, len(crops), result=self.embed(crops))
        slot = self.slots[self._next]
        for ticket in [t for t in self._inflight if t.slot is slot]:
            self._materialize(ticket)
        self._enqueue(slot, crops)
        self._next ^= 1
        ticket = _Ticket(slot, len(crops))
        self._inflight.append(ticket)
        return ticket

    def collect(self, ticket: _Ticket) -> np.ndarray:
        """The (B, D) float32 embeddings of a submitted batch; waits for that batch only."""
        if ticket.collected:
            raise EngineError("a TensorRT batch was collected twice")
        if ticket.result is None:
            self._materialize(ticket)
        result, ticket.result, ticket.collected = ticket.result, None, True
        return result  # type: ignore[return-value]

    def _materialize(self, ticket: _Ticket) -> None:
        """Wait for the ticket's batch, copy its result out of the slot and free the slot."""
        slot = ticket.slot
        assert slot is not None
        self.device.synchronize(slot.finished)
        ticket.result = np.array(slot.host_out[: ticket.n].numpy(), dtype=np.float32, copy=True)
        ticket.slot = None
        self._inflight.remove(ticket)

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, D) float32
        crops = np.asarray(crops, dtype=np.uint8)
        for ticket in list(self._inflight):  # embed uses both slots: free them first
            self._materialize(ticket)
        out = np.empty((len(crops), self.embed_dim), np.float32)
        pending: tuple[_Slot, int, int] | None = None
        for i, lo in enumerate(range(0, len(crops), self.max_batch)):
            hi = min(lo + self.max_batch, len(crops))
            slot = self.slots[i % 2]
            # Enqueue chunk i (its upload overlaps chunk i-1's inference), then collect chunk i-1.
            self._enqueue(slot, crops[lo:hi])
            if pending is not None:
                self._collect(*pending, out)
            pending = (slot, lo, hi)
        if pending is not None:
            self._collect(*pending, out)
        return out

    def _enqueue(self, slot: _Slot, chunk: np.ndarray) -> None:
        d, ctx, n = self.device, self.context, len(chunk)
        d.synchronize(slot.uploaded)  # the last upload from this pinned buffer has finished
        np.copyto(slot.host_in[:n].numpy(), chunk)
        d.wait(self.copy_stream, slot.finished)  # the last inference has finished reading dev_in
        d.copy_async(slot.dev_in[:n], slot.host_in[:n], self.copy_stream)
        d.record(slot.uploaded, self.copy_stream)
        d.wait(self.compute_stream, slot.uploaded)
        if not ctx.set_input_shape(INPUT, (n, self.img_size, self.img_size, 3)):
            raise EngineError(f"TensorRT rejected input shape ({n}, {self.img_size}, {self.img_size}, 3)")
        if not ctx.set_tensor_address(INPUT, slot.dev_in.data_ptr()):
            raise EngineError("TensorRT rejected the input buffer address")
        if not ctx.set_tensor_address(OUTPUT, slot.dev_out.data_ptr()):
            raise EngineError("TensorRT rejected the output buffer address")
        if not ctx.execute_async_v3(d.handle(self.compute_stream)):
            raise EngineError("TensorRT failed to enqueue inference")
        d.copy_async(slot.host_out[:n], slot.dev_out[:n], self.compute_stream)
        d.record(slot.finished, self.compute_stream)

    def _collect(self, slot: _Slot, lo: int, hi: int, out: np.ndarray) -> None:
        self.device.synchronize(slot.finished)
        out[lo:hi] = slot.host_out[: hi - lo].numpy()


# --------------------------------------------------------------------------------------- engine


def load_runner(
    bundle: Bundle,
    precision: str = "fp16",
    max_batch: int | None = None,
    *,
    device: Device | None = None,
    trt: Any = None,
    workspace: int = DEFAULT_WORKSPACE,
    log: Callable[[str], None] = _log_stderr,
) -> tuple[EngineRunner, EngineFileInfo]:
    """A runner on the stored (or freshly built) engine file; one this TensorRT refuses is rebuilt once.

    Deserialising is the only proof that an engine file works on this GPU, so `compile` goes through
    here too before it reports success. `trt` and `device` default to the real module and GPU 0.
    """
    trt = trt if trt is not None else import_tensorrt()
    device = device if device is not None else default_device()
    cfg = bundle.encoder_config
    serialized, info = ensure_engine_file(bundle, precision, max_batch, trt, device, workspace, log=log)
    n = info.key["profile"]["max"][0]
    try:
        return EngineRunner(trt, serialized, device, n, cfg.embed_dim, cfg.img_size), info
    except EngineFileError as exc:
        log(f"stored TensorRT engine file unusable ({exc}); rebuilding")
        serialized, info = ensure_engine_file(bundle, precision, n, trt, device, workspace, rebuild=True, log=log)
        return EngineRunner(trt, serialized, device, n, cfg.embed_dim, cfg.img_size), info


class TensorRTEngine:
    """The Engine protocol on TensorRT: an engine file stored per GPU, a double-buffered runner."""

    name = "tensorrt"

    def __init__(
        self,
        bundle: Bundle,
        precision: str = "fp16",
        max_batch: int | None = None,
        *,
        device: Device | None = None,
        trt: Any = None,
        workspace: int = DEFAULT_WORKSPACE,
        log: Callable[[str], None] = _log_stderr,
    ) -> None:
        self.precision = precision
        self.runner, self.file = load_runner(
            bundle, precision, max_batch, device=device, trt=trt, workspace=workspace, log=log
        )
        self.device = self.runner.device.name

    def embed(self, crops: np.ndarray) -> np.ndarray:
        return self.runner.embed(crops)

    def submit(self, crops: np.ndarray) -> Any:
        """Queue a batch (≤ max batch overlaps; see EngineRunner.submit); collect() returns it."""
        return self.runner.submit(crops)

    def collect(self, handle: Any) -> np.ndarray:
        return self.runner.collect(handle)


def compile_engine(
    bundle: Bundle,
    precision: str = "fp16",
    max_batch: int = DEFAULT_MAX_BATCH,
    *,
    device: Device | None = None,
    trt: Any = None,
    workspace: int = DEFAULT_WORKSPACE,
    log: Callable[[str], None] = _log_stderr,
) -> EngineFileInfo:
    """`codescan compile`: export, build and store the engine file (a no-op when a valid one is stored)."""
    return load_runner(bundle, precision, max_batch, device=device, trt=trt, workspace=workspace, log=log)[1]


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> TensorRTEngine:
    """The registry's factory (threads: not used, the GPU does the work). `warn` takes what is said
    while the engine file is built or rebuilt: the scan's own warning line, not a print of ours."""
    return TensorRTEngine(bundle, precision, log=warn or _log_stderr)
