"""timm ViT on torch (CPU). fp32 reproduces the reference; bf16 runs the blocks under autocast
(AVX-512 BF16 / AMX where present) with normalisation and the input kept in float32."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from codescan.model.encoder import EncoderConfig, load_encoder
from codescan.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

if TYPE_CHECKING:
    from codescan.weights.bundle import Bundle


class TorchEngine:
    name = "torch"

    def __init__(self, config: EncoderConfig, state: dict[str, np.ndarray], precision: str = "fp32") -> None:
        import torch

        self._torch = torch
        self.device = "cpu"
        self.precision = precision
        self.model = load_encoder(state, config)
        self.mean = torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 3, 1, 1)

    def embed(self, crops: np.ndarray) -> np.ndarray:
        torch = self._torch
        with torch.inference_mode():
            x = torch.from_numpy(np.ascontiguousarray(crops))  # (B, H, W, 3) uint8
            # Same ops, same order as ToTensor + Normalize, so fp32 inputs match bit for bit.
            x = x.permute(0, 3, 1, 2).contiguous().to(torch.float32).div(255)  # (B, 3, H, W)
            x = x.sub(self.mean).div(self.std)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                feats = self.model.forward_features(x)  # (B, 1 + N, D), after the final norm
            return feats[:, 0].float().numpy().copy()  # (B, D) CLS token


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> TorchEngine:
    """The registry's factory (threads: torch's own default)."""
    return TorchEngine(bundle.encoder_config, bundle.encoder_state(), precision=precision)
