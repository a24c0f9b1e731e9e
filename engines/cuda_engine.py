"""timm ViT on a CUDA GPU with torch: the GPU path when TensorRT is not installed.

fp16 runs under ``torch.autocast`` rather than ``model.half()``. Autocast keeps the weights and
the residual stream in float32 and runs convolution, linear layers and attention matmuls in
half, while LayerNorm and softmax stay in float32 (they are on autocast's float32 list). That is
the same split as the fp16 ONNX graph TensorRT builds (see export.py), where ``.half()`` would
also put LayerNorm statistics and every residual addition in half precision and need per-module
exceptions to undo it. (GELU follows its input's type under autocast, so it runs in half here
and in float32 in the graph.)

The crops go host -> pinned buffer -> GPU as uint8 (a quarter of the float32 bytes) and are
normalised on the GPU, in channels-last layout (the permuted NHWC crops already have
channels-last strides, so no copy is made). Optionally the whole normalise + encoder step is
captured as CUDA graphs, one per power-of-two batch bucket up to ``max_batch``, captured on
first use; a smaller batch is padded to its bucket (rows are independent, padding rows are
discarded). Each captured graph is checked once against the eager forward; on any capture
problem or mismatch the engine falls back to eager execution.

``device="cpu"`` exists for tests (no pinned memory, no graphs); torch is imported lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
from codescan.engines.protocol import EngineError
from codescan.engines.specs import ENGINES

from codescan.model.encoder import EncoderConfig, load_encoder
from codescan.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle

DEFAULT_MAX_BATCH = 64
CUDA_PRECISIONS = ENGINES["cuda"].precisions
_GRAPH_CHECK_MIN_COSINE = 0.9999


class CudaEngine:
    name = "cuda"

    def __init__(
        self,
        config: EncoderConfig,
        state: dict[str, np.ndarray],
        precision: str = "fp16",
        *,
        device: str = "cuda",
        max_batch: int = DEFAULT_MAX_BATCH,
        cuda_graphs: bool = True,
    ) -> None:
        import torch

        if precision not in CUDA_PRECISIONS:
            raise EngineError(f"cuda supports precision {' or '.join(CUDA_PRECISIONS)}, not {precision!r}")
        dev = torch.device(device)
        on_gpu = dev.type == "cuda"
        if on_gpu:
            if not torch.cuda.is_available():
                raise EngineError("no CUDA GPU is available here (torch.cuda.is_available() is False)")
            dev = torch.device("cuda", torch.cuda.current_device() if dev.index is None else dev.index)
            if precision == "fp32":
                _disable_tf32(torch)  # fp32 means IEEE fp32: cuDNN would otherwise run the conv in TF32
        self._torch = torch
        self._dev = dev
        self._on_gpu = on_gpu
        self.device = str(dev)
        self.precision = precision
        self.max_batch = max_batch
        self.img_size = config.img_size
        self.embed_dim = config.embed_dim
        model = load_encoder(state, config).requires_grad_(False)
        self.model = model.to(dev, memory_format=torch.channels_last)
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32, device=dev).view(1, 3, 1, 1)
        shape = (max_batch, config.img_size, config.img_size, 3)
        # Page-locked staging buffer for uploads, and the device buffer graphs read from.
        self._host = torch.empty(shape, dtype=torch.uint8, pin_memory=on_gpu)
        self._static_in = torch.empty(shape, dtype=torch.uint8, device=dev)
        self._use_graphs = cuda_graphs and on_gpu
        self._graphs: dict[int, tuple[Any, Any]] = {}  # bucket -> (CUDAGraph, static output)

    def _forward(self, crops: Any) -> Any:  # (n, H, W, 3) uint8 on the device -> (n, D) float32
        torch = self._torch
        # Same ops and order as ToTensor + Normalize; NHWC -> NCHW view has channels-last strides.
        x = crops.permute(0, 3, 1, 2).to(torch.float32).div_(255).sub_(self.mean).div_(self.std)
        with torch.autocast(self._dev.type, dtype=torch.float16, enabled=self.precision == "fp16", cache_enabled=False):
            feats = self.model.forward_features(x)  # (n, 1 + N, D) after the final norm
        return feats[:, 0].float()

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B, H, W, 3) uint8 -> (B, D) float32
        crops = np.asarray(crops, dtype=np.uint8)
        out = np.empty((len(crops), self.embed_dim), np.float32)
        with self._torch.inference_mode():
            for lo in range(0, len(crops), self.max_batch):
                hi = min(lo + self.max_batch, len(crops))
                out[lo:hi] = self._embed_chunk(crops[lo:hi])
        return out

    def _embed_chunk(self, chunk: np.ndarray) -> np.ndarray:
        n = len(chunk)
        # The previous chunk's result was copied back synchronously, so its upload is done and
        # the pinned buffer is free to overwrite.
        np.copyto(self._host[:n].numpy(), chunk)
        self._static_in[:n].copy_(self._host[:n], non_blocking=self._on_gpu)
        graph = self._graph_for(n) if self._use_graphs else None
        if graph is None:
            result = self._forward(self._static_in[:n])
        else:
            graph[0].replay()  # rows n.. of the bucket hold stale crops; their outputs are dropped
            result = graph[1][:n]
        return result.cpu().numpy()

    def _graph_for(self, n: int) -> tuple[Any, Any] | None:
        bucket = min(self.max_batch, 1 << (n - 1).bit_length())
        if bucket not in self._graphs:
            try:
                self._graphs[bucket] = self._capture(bucket)
            except Exception:  # noqa: BLE001 - any capture failure: run eagerly from now on
                self._use_graphs = False
                self._graphs.clear()
                return None
        return self._graphs[bucket]

    def _capture(self, bucket: int) -> tuple[Any, Any]:
        torch = self._torch
        static_in = self._static_in[:bucket]
        saved = static_in.clone()
        side = torch.cuda.Stream(device=self._dev)
        side.wait_stream(torch.cuda.current_stream(self._dev))
        with torch.cuda.stream(side):
            for _ in range(2):  # warm-up outside capture (cuBLAS handles, kernel selection)
                self._forward(static_in)
        torch.cuda.current_stream(self._dev).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self._forward(static_in)
        # Check the graph once against the eager path on fixed random crops.
        probe = torch.randint(0, 256, static_in.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        static_in.copy_(probe.to(self._dev))
        graph.replay()
        replayed = static_out.clone()
        eager = self._forward(static_in)
        cos = torch.nn.functional.cosine_similarity(replayed.double(), eager.double(), dim=1).min().item()
        static_in.copy_(saved)
        if not cos >= _GRAPH_CHECK_MIN_COSINE:
            raise RuntimeError(f"CUDA graph replay differs from eager (cosine {cos})")
        return graph, static_out


def _disable_tf32(torch: Any) -> None:
    try:
        torch.backends.cudnn.conv.fp32_precision = "ieee"
        torch.backends.cuda.matmul.fp32_precision = "ieee"
    except (AttributeError, RuntimeError):  # older torch
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> CudaEngine:
    """The registry's factory (threads: not used, the GPU does the work)."""
    return CudaEngine(bundle.encoder_config, bundle.encoder_state(), precision=precision)
