"""Build the CoDE encoder as an ONNX graph straight from the bundle's numpy weights.

Shared by ONNX Runtime and TensorRT. Written with onnx.helper rather than traced through
torch: the scanner's CPU path then never imports torch, and each op's precision is explicit.
The graph takes the uint8 crops the decoders produce, (B, 224, 224, 3), does ToTensor +
Normalize itself (same ops, same order as torchvision) and returns the CLS embedding after
the final LayerNorm, (B, D) float32.

``fp16`` stores the matrix weights in half precision and runs the matrix products in half,
while LayerNorm, softmax, GELU and the residual stream stay float32: that is what "fp16
expressed in the graph" means for strongly typed TensorRT builds, which take types from the
graph instead of a builder flag.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from codescan.model.encoder import EncoderConfig
from codescan.model.preprocess import IMAGENET_MEAN, IMAGENET_STD

GraphPrecision = Literal["fp32", "fp16"]
OPSET = 17
GRAPH_VERSION = 3  # bump when the graph changes: derived graphs and engine files are keyed by it
INPUT = "crops"
OUTPUT = "embeddings"


@dataclass
class _Builder:
    precision: GraphPrecision

    def __post_init__(self) -> None:
        from onnx import TensorProto, helper, numpy_helper

        self.T, self.h, self.nh = TensorProto, helper, numpy_helper
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def name(self, stem: str) -> str:
        self._n += 1
        return f"{stem}_{self._n}"

    def const(self, stem: str, value: np.ndarray) -> str:
        n = self.name(stem)
        self.inits.append(self.nh.from_array(np.array(value, order="C"), n))  # keeps 0-d scalars 0-d
        return n

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        out = self.name(stem or op_type.lower())
        self.nodes.append(self.h.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    def cast(self, x: str, to: int) -> str:
        return self.op("Cast", [x], "cast", to=to)

    def linear(self, x: str, weight: np.ndarray, bias: np.ndarray, stem: str) -> str:
        """x @ W^T + b; in fp16 mode the product runs in half and comes back as float32."""
        if self.precision == "fp16":
            w = self.const(f"{stem}_w", weight.T.astype(np.float16))
            b = self.const(f"{stem}_b", bias.astype(np.float16))
            y = self.op("Add", [self.op("MatMul", [self.cast(x, self.T.FLOAT16), w]), b])
            return self.cast(y, self.T.FLOAT)
        w = self.const(f"{stem}_w", weight.T.astype(np.float32))
        b = self.const(f"{stem}_b", bias.astype(np.float32))
        return self.op("Add", [self.op("MatMul", [x, w], f"{stem}_matmul"), b], stem)

    def layer_norm(self, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, stem: str) -> str:
        w = self.const(f"{stem}_g", weight.astype(np.float32))
        b = self.const(f"{stem}_b", bias.astype(np.float32))
        return self.op("LayerNormalization", [x, w, b], stem, axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        # Exact (erf) GELU as timm's nn.GELU, spelled x * (1 + erf(x / sqrt2)) * 0.5: the form
        # ONNX Runtime's GeluFusion recognises (and fuses with the preceding bias add).
        sqrt2 = self.const("sqrt2", np.array(math.sqrt(2.0), np.float32))
        one = self.const("one", np.array(1.0, np.float32))
        half = self.const("half", np.array(0.5, np.float32))
        erf = self.op("Erf", [self.op("Div", [x, sqrt2])])
        return self.op("Mul", [self.op("Mul", [x, self.op("Add", [erf, one])]), half], "gelu")


def build_encoder_graph(state: dict[str, np.ndarray], cfg: EncoderConfig, precision: GraphPrecision = "fp32"):
    """The ONNX ModelProto of the encoder, from timm-named weights (see codescan.model.encoder)."""
    from onnx import checker, helper

    g = _Builder(precision)
    T = g.T
    D = cfg.embed_dim
    tokens = (cfg.img_size // cfg.patch_size) ** 2 + 1
    x = _tokens(g, state, cfg)  # (B*197, D)
    shapes = _BlockShapes(
        scale=g.const("attn_scale", np.array((D // cfg.num_heads) ** -0.5, np.float32)),
        merge=g.const("shape_merge", np.array([-1, D], np.int64)),
        heads=g.const("shape_qkv", np.array([-1, tokens, 3, cfg.num_heads, D // cfg.num_heads], np.int64)),
    )
    for i in range(cfg.depth):
        x = _block(g, x, state, cfg, i, shapes)

    # LayerNorm is per token, so normalising only the CLS token gives the same embedding.
    x = g.op("Reshape", [x, g.const("shape_bnd", np.array([-1, tokens, D], np.int64))])
    cls_out = g.op("Gather", [x, g.const("cls_idx", np.array(0, np.int64))], axis=1)  # (B, D)
    out = g.layer_norm(cls_out, state["norm.weight"], state["norm.bias"], cfg.layer_norm_eps, "final_ln")
    g.nodes.append(helper.make_node("Identity", [out], [OUTPUT]))

    graph = helper.make_graph(
        g.nodes,
        f"code_encoder_{precision}",
        [helper.make_tensor_value_info(INPUT, T.UINT8, ["batch", cfg.img_size, cfg.img_size, 3])],
        [helper.make_tensor_value_info(OUTPUT, T.FLOAT, ["batch", D])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="codescan")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.10 and TensorRT 10
    checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class _BlockShapes:
    """Constants every transformer block shares (one initializer each, not one per block)."""

    scale: str  # 1 / sqrt(head dim)
    merge: str  # (B, N, H, hd) -> (B*N, D)
    heads: str  # (B*N, 3D) -> (B, N, 3, H, hd)


def _tokens(g: _Builder, state: dict[str, np.ndarray], cfg: EncoderConfig) -> str:
    """uint8 pixels → the residual stream as a (B*197, D) matrix: every linear layer after it is
    a plain 2-D MatMul + bias, which runtimes fuse into one GEMM."""
    T, D = g.T, cfg.embed_dim
    grid = cfg.img_size // cfg.patch_size
    # ToTensor + Normalize, in torchvision's order: x / 255, then (x - mean) / std.
    x = g.cast(INPUT, T.FLOAT)  # (B, 224, 224, 3)
    x = g.op("Transpose", [x], perm=[0, 3, 1, 2])  # (B, 3, 224, 224)
    x = g.op("Div", [x, g.const("c255", np.array(255.0, np.float32))])
    x = g.op("Sub", [x, g.const("mean", np.array(IMAGENET_MEAN, np.float32).reshape(1, 3, 1, 1))])
    x = g.op("Div", [x, g.const("std", np.array(IMAGENET_STD, np.float32).reshape(1, 3, 1, 1))])

    # Patch embedding: a stride-16 convolution, then (B, D, 14, 14) -> (B, 196, D).
    conv_w = state["patch_embed.proj.weight"]
    conv_b = state["patch_embed.proj.bias"]
    if g.precision == "fp16":
        x = g.op(
            "Conv",
            [g.cast(x, T.FLOAT16), g.const("patch_w", conv_w.astype(np.float16)), g.const("patch_b", conv_b.astype(np.float16))],
            strides=[cfg.patch_size] * 2,
        )
        x = g.cast(x, T.FLOAT)
    else:
        x = g.op("Conv", [x, g.const("patch_w", conv_w), g.const("patch_b", conv_b)], strides=[cfg.patch_size] * 2)
    x = g.op("Reshape", [x, g.const("shape_bdn", np.array([0, D, grid * grid], np.int64))])
    x = g.op("Transpose", [x], perm=[0, 2, 1])  # (B, 196, D)

    # Prepend the class token (broadcast to the batch) and add position embeddings.
    batch = g.op("Gather", [g.op("Shape", [x]), g.const("zero", np.array([0], np.int64))], axis=0)
    cls_shape = g.op("Concat", [batch, g.const("one_d", np.array([1, D], np.int64))], axis=0)
    cls = g.op("Expand", [g.const("cls_token", state["cls_token"]), cls_shape])
    x = g.op("Concat", [cls, x], axis=1)  # (B, 197, D)
    x = g.op("Add", [x, g.const("pos_embed", state["pos_embed"])])
    return g.op("Reshape", [x, g.const("shape_tokens", np.array([-1, D], np.int64))])


def _block(g: _Builder, x: str, state: dict[str, np.ndarray], cfg: EncoderConfig, i: int, shapes: _BlockShapes) -> str:
    """Transformer block i on the (B*N, D) residual stream."""
    T, p = g.T, f"blocks.{i}."
    # Attention: (B*N, D) -> qkv (3, B, H, N, hd) -> softmax(q k^T / sqrt(hd)) v -> (B*N, D)
    h = g.layer_norm(x, state[p + "norm1.weight"], state[p + "norm1.bias"], cfg.layer_norm_eps, f"b{i}_ln1")
    qkv = g.linear(h, state[p + "attn.qkv.weight"], state[p + "attn.qkv.bias"], f"b{i}_qkv")
    qkv = g.op("Transpose", [g.op("Reshape", [qkv, shapes.heads])], perm=[2, 0, 3, 1, 4])
    q, k, v = (g.op("Gather", [qkv, g.const("idx", np.array(j, np.int64))], axis=0) for j in range(3))
    q = g.op("Mul", [q, shapes.scale])
    kt = g.op("Transpose", [k], perm=[0, 1, 3, 2])
    if g.precision == "fp16":
        logits = g.cast(g.op("MatMul", [g.cast(q, T.FLOAT16), g.cast(kt, T.FLOAT16)]), T.FLOAT)
        attn = g.op("Softmax", [logits], axis=-1)
        ctx = g.cast(g.op("MatMul", [g.cast(attn, T.FLOAT16), g.cast(v, T.FLOAT16)]), T.FLOAT)
    else:
        attn = g.op("Softmax", [g.op("MatMul", [q, kt])], axis=-1)
        ctx = g.op("MatMul", [attn, v])  # (B, H, N, hd)
    ctx = g.op("Reshape", [g.op("Transpose", [ctx], perm=[0, 2, 1, 3]), shapes.merge])  # (B*N, D)
    x = g.op("Add", [x, g.linear(ctx, state[p + "attn.proj.weight"], state[p + "attn.proj.bias"], f"b{i}_proj")])
    # MLP
    h = g.layer_norm(x, state[p + "norm2.weight"], state[p + "norm2.bias"], cfg.layer_norm_eps, f"b{i}_ln2")
    h = g.gelu(g.linear(h, state[p + "mlp.fc1.weight"], state[p + "mlp.fc1.bias"], f"b{i}_fc1"))
    return g.op("Add", [x, g.linear(h, state[p + "mlp.fc2.weight"], state[p + "mlp.fc2.bias"], f"b{i}_fc2")])
