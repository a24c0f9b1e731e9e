"""The CoDE encoder: timm's ViT (vit_tiny_patch16_224 for the official weights).

The hub stores the encoder as a transformers ``ViTModel``; :func:`hf_to_timm` renames (and
fuses q/k/v) once at import time, so the runtime needs neither transformers nor torch to read
a bundle. The embedding is the CLS token after the final LayerNorm, as the reference takes
``last_hidden_state[:, 0]`` with the pooler removed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class EncoderConfig:
    img_size: int = 224
    patch_size: int = 16
    embed_dim: int = 192
    depth: int = 12
    num_heads: int = 3
    mlp_dim: int = 768
    layer_norm_eps: float = 1e-12  # transformers' ViTConfig default; official configs may say 1e-6
    timm_name: str = "vit_tiny_patch16_224"

    @classmethod
    def from_hf_config(cls, cfg: dict[str, Any]) -> EncoderConfig:
        if cfg.get("model_type", "vit") != "vit":
            raise ValueError(f"config.json: model_type {cfg.get('model_type')!r} is not a ViT")
        act = cfg.get("hidden_act", "gelu")
        if act != "gelu":
            raise ValueError(f"config.json: hidden_act {act!r} unsupported (timm's ViT uses exact GELU)")
        if not cfg.get("qkv_bias", True):
            raise ValueError("config.json: qkv_bias=false is unsupported")
        if cfg.get("num_channels", 3) != 3:
            raise ValueError("config.json: only 3-channel models are supported")
        return cls(
            img_size=int(cfg.get("image_size", 224)),
            patch_size=int(cfg.get("patch_size", 16)),
            embed_dim=int(cfg["hidden_size"]),
            depth=int(cfg["num_hidden_layers"]),
            num_heads=int(cfg["num_attention_heads"]),
            mlp_dim=int(cfg["intermediate_size"]),
            layer_norm_eps=float(cfg.get("layer_norm_eps", 1e-12)),
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderConfig:
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.(.+)$")
_PER_LAYER = {
    "layernorm_before": "norm1",
    "attention.output.dense": "attn.proj",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_TOP = {
    "embeddings.cls_token": "cls_token",
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "layernorm.weight": "norm.weight",
    "layernorm.bias": "norm.bias",
}
# Present in ViTModel checkpoints but not part of the embedding (the reference drops the pooler).
_DISCARDED = ("pooler.dense.weight", "pooler.dense.bias")


def hf_to_timm(state: dict[str, np.ndarray], config: EncoderConfig) -> dict[str, np.ndarray]:
    """Rename a transformers ViTModel state dict to timm's, strictly.

    Accepts the bare ViTModel names and the ``vit.``-prefixed names of task models. Any key
    left unused, and any key timm needs but the checkpoint lacks, is an error: a silently
    random layer would still produce confident-looking scores.
    """
    prefixes = {k.split(".", 1)[0] for k in state}
    strip = "vit." if prefixes == {"vit"} or ("vit" in prefixes and "embeddings" not in prefixes) else ""
    src: dict[str, np.ndarray] = {}
    for key, value in state.items():
        if strip and key.startswith(strip):
            key = key[len(strip) :]
        src[key] = value

    out: dict[str, np.ndarray] = {}
    used: set[str] = set()

    def take(name: str) -> np.ndarray:
        if name not in src:
            raise KeyError(f"checkpoint lacks {strip}{name}")
        used.add(name)
        return src[name]

    for hf, timm in _TOP.items():
        out[timm] = take(hf)
    for i in range(config.depth):
        base = f"encoder.layer.{i}."
        for hf, timm in _PER_LAYER.items():
            for kind in ("weight", "bias"):
                out[f"blocks.{i}.{timm}.{kind}"] = take(f"{base}{hf}.{kind}")
        for kind in ("weight", "bias"):
            q, k, v = (take(f"{base}attention.attention.{p}.{kind}") for p in ("query", "key", "value"))
            out[f"blocks.{i}.attn.qkv.{kind}"] = np.concatenate([q, k, v], axis=0)
    for name in _DISCARDED:
        if name in src:
            used.add(name)

    unexpected = sorted(set(src) - used)
    if unexpected:
        shown = ", ".join(strip + k for k in unexpected[:5])
        more = f" (+{len(unexpected) - 5} more)" if len(unexpected) > 5 else ""
        raise KeyError(f"checkpoint has unexpected keys: {shown}{more}")
    _check_shapes(out, config)
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _check_shapes(sd: dict[str, np.ndarray], c: EncoderConfig) -> None:
    tokens = (c.img_size // c.patch_size) ** 2 + 1
    expected = {
        "cls_token": (1, 1, c.embed_dim),
        "pos_embed": (1, tokens, c.embed_dim),
        "patch_embed.proj.weight": (c.embed_dim, 3, c.patch_size, c.patch_size),
        "blocks.0.attn.qkv.weight": (3 * c.embed_dim, c.embed_dim),
        "blocks.0.mlp.fc1.weight": (c.mlp_dim, c.embed_dim),
        "norm.weight": (c.embed_dim,),
    }
    for key, shape in expected.items():
        if tuple(sd[key].shape) != shape:
            raise ValueError(f"{key}: shape {tuple(sd[key].shape)} does not match config {shape}")


def build_encoder(config: EncoderConfig):  # -> timm VisionTransformer
    """An uninitialised timm ViT with the bundle's shape; weights come from load_state_dict."""
    from functools import partial

    import timm
    import torch.nn as nn

    return timm.create_model(
        config.timm_name,
        pretrained=False,
        num_classes=0,
        global_pool="token",
        img_size=config.img_size,
        patch_size=config.patch_size,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.embed_dim,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=config.layer_norm_eps),
        weight_init="skip",
    )


def load_encoder(state: dict[str, np.ndarray], config: EncoderConfig):
    """timm model in eval mode with the bundle's weights loaded strictly."""
    import torch

    model = build_encoder(config)
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, strict=True)
    return model.eval()
