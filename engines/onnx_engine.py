"""ONNX Runtime on CPU: the default engine. Imports neither torch nor transformers.

The graph comes from :mod:`codescan.engines.export` and is stored beside the bundle, keyed by
everything that makes it valid (bundle digest, precision, graph version), so a changed bundle
can never reuse a stale file. It is verified against its record (:mod:`codescan.engines.derived`)
at every load and rebuilt when it fails: the session is created from the bytes that were hashed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from codescan.engines import derived
from codescan.engines.export import GRAPH_VERSION, INPUT, OUTPUT, build_encoder_graph

from codescan.weights.bundle import Bundle

OrtPrecision = Literal["fp32", "int8"]


def graph_path(bundle: Bundle, precision: OrtPrecision) -> Path:
    return bundle.path / "engines" / f"onnx-{precision}-g{GRAPH_VERSION}-{bundle.digest[:16]}.onnx"


def _model_key(precision: OrtPrecision) -> dict[str, str | int]:
    return {"engine": "onnxruntime", "precision": precision, "graph_version": GRAPH_VERSION}


def load_model(bundle: Bundle, precision: OrtPrecision) -> bytes:
    """The ONNX graph for this bundle and precision, as its record vouches for it: stored, or
    (missing, changed, unrecorded) built again and stored."""
    path, key = graph_path(bundle, precision), _model_key(precision)
    model = derived.read(bundle, path, key)
    if model is None:
        model = build_model(bundle, precision)
        derived.write(bundle, path, model, key)
    return model


def build_model(bundle: Bundle, precision: OrtPrecision) -> bytes:
    fp32 = build_encoder_graph(bundle.encoder_state(), bundle.encoder_config, "fp32")
    if precision == "fp32":
        return fp32.SerializeToString()
    # int8: dynamic quantisation of the linear layers (weights int8 with one scale per output
    # channel, activations quantised per batch at run time; VNNI where present). The first and
    # last blocks stay in float: they carry the widest activation ranges, and quantising them
    # too cost most of the accuracy (test bundle: cosine min 0.9989 → 0.9995 with them kept).
    from onnxruntime.quantization import QuantType, quantize_dynamic

    last = bundle.encoder_config.depth - 1
    keep = [n.name for n in fp32.graph.node if n.op_type == "MatMul" and n.name.startswith(("b0_", f"b{last}_"))]
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        src.write_bytes(fp32.SerializeToString())
        with _root_logging_off():
            quantize_dynamic(
                src, dst, weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"], per_channel=True, nodes_to_exclude=keep
            )
        return dst.read_bytes()


@contextlib.contextmanager
def _root_logging_off() -> Iterator[None]:
    """onnxruntime's quantiser logs advice for model authors ("Please consider to run
    pre-processing before quantization") through the root logger, which a user of codescan can do
    nothing about. Off while it runs; a NullHandler keeps `logging.warning` from installing a
    stderr handler on the root logger for good (its basicConfig when the root has none)."""
    root = logging.getLogger()
    null = logging.NullHandler()
    root.addHandler(null)
    previous = root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)
        root.removeHandler(null)


class OnnxEngine:
    name = "onnxruntime"
    device = "cpu"

    def __init__(self, bundle: Bundle, precision: OrtPrecision = "fp32", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.precision = precision
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or os.cpu_count() or 1
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Spinning threads would steal the cores the decode workers need between batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(load_model(bundle, precision), opts, providers=["CPUExecutionProvider"])

    def embed(self, crops: np.ndarray) -> np.ndarray:  # (B, 224, 224, 3) uint8 -> (B, D) float32
        return self.session.run([OUTPUT], {INPUT: np.ascontiguousarray(crops, dtype=np.uint8)})[0]


def create(
    bundle: Bundle, precision: str, threads: int | None = None, warn: Callable[[str], None] | None = None
) -> OnnxEngine:
    """The registry's factory."""
    return OnnxEngine(bundle, precision, threads)  # type: ignore[arg-type]
