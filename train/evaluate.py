"""`codescan eval`: score a labelled set with a bundle's heads and measure them, overall and per generator.

Files go through the scanner's own decoder and an engine (via :mod:`.embed`), so the numbers
describe what `codescan scan` would answer on those files, with the bundle's thresholds.
A detector is only as good as its worst generator, so every metric is also reported per
generator: that generator's fakes against all reals (the reals are shared; nothing else is
fair to a generator with few images).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from codescan.engines.protocol import Engine, EngineName, Precision
from codescan.engines.registry import create_engine
from codescan.train.data import Label, Sample, load_samples
from codescan.train.embed import Embedded, embed_files
from codescan.train.metrics import BinaryMetrics, binary_metrics

from codescan.core import defaults
from codescan.core.records import (
    CropCount,
    ErrorCode,
    HeadChoice,
    HeadName,
)
from codescan.core.version import __version__
from codescan.decoding.decode import DecodeLimits
from codescan.model.heads import HeadSet, over_boxes
from codescan.weights.bundle import load_bundle

EVAL_SCHEMA_VERSION = 1

Progress = Callable[[int, int], None]  # (files embedded so far, files in the data set)


class EvalError(ValueError):
    """The data cannot be evaluated (nothing decodes)."""


@dataclass(frozen=True)
class EvalConfig:
    data: Path
    weights: str = "code"
    head: HeadChoice = "all"
    crops: CropCount = defaults.CROPS
    engine: EngineName = defaults.ENGINE
    precision: Precision = defaults.PRECISION
    batch_size: int | None = None
    limits: DecodeLimits = field(default_factory=DecodeLimits)


@dataclass(frozen=True, slots=True)
class Undecodable:
    path: str
    label: Label
    generator: str
    error_code: ErrorCode
    error: str


@dataclass
class Scored:
    """Per-file scores of the files that decoded, and what produced them."""

    samples: list[Sample]
    scores: dict[HeadName, np.ndarray]  # (N,) per head, higher = more likely fake
    thresholds: dict[HeadName, float]
    undecodable: list[Undecodable]
    run: dict[str, Any]  # data, weights, engine, device, precision, crops

    @property
    def is_fake(self) -> np.ndarray:
        return np.array([s.is_fake for s in self.samples], dtype=bool)

    def generators(self) -> list[str]:
        return sorted({s.generator for s in self.samples if s.is_fake})

    def subset(self, generator: str) -> np.ndarray:
        """Mask of all reals plus the fakes of `generator`."""
        return np.array([not s.is_fake or s.generator == generator for s in self.samples], dtype=bool)


def _embed(config: EvalConfig, samples: list[Sample], engine: Engine, progress: Progress | None) -> Embedded:
    done = 0

    def on_batch(n: int) -> None:
        nonlocal done
        done += n
        if progress is not None:
            progress(done, len(samples))

    paths = [s.path for s in samples]
    return embed_files(paths, engine, batch_size=config.batch_size, limits=config.limits, on_batch=on_batch, crops=config.crops)


def file_scores(heads: HeadSet, names: list[HeadName], emb: np.ndarray) -> dict[HeadName, np.ndarray]:
    """Each file's score per head from (N, D) or (N, crops, D) embeddings, made as scan makes it:
    the heads' scores per box (`HeadSet.scores`), then the maximum over boxes (`over_boxes`)."""
    boxes = emb.reshape(len(emb), -1, emb.shape[-1])  # (N, K, D)
    k = boxes.shape[1]
    rows = heads.scores(boxes.reshape(-1, boxes.shape[-1]))  # N·K dicts
    combined = [over_boxes(rows[i * k : (i + 1) * k], names)[0] for i in range(len(boxes))]
    return {n: np.array([c[n] for c in combined], dtype=np.float64) for n in names}


def score_samples(config: EvalConfig, progress: Progress | None = None) -> Scored:
    samples = load_samples(config.data)
    bundle = load_bundle(config.weights)
    heads = bundle.head_set()
    names = heads.select(config.head, config.weights)
    engine = create_engine(bundle, config.engine, config.precision)
    embedded = _embed(config, samples, engine, progress)
    if len(embedded.index) == 0:
        raise EvalError(f"none of the {len(samples)} images in {config.data} could be decoded")
    undecodable = [
        Undecodable(str(samples[i].path), samples[i].label, samples[i].generator, f.code, f.message)
        for i, f in sorted(embedded.failures.items())
    ]
    scores = file_scores(heads, names, embedded.emb)
    for name, values in scores.items():
        bad = int((~np.isfinite(values)).sum())
        if bad:  # a NaN would count as "real" in every metric below: no metrics rather than wrong ones
            raise EvalError(f"head {name} scored {bad} image(s) NaN or infinite (an fp16 overflow?); no metrics computed")
    return Scored(
        samples=[samples[i] for i in embedded.index],
        scores=scores,
        thresholds={n: heads.threshold(n) for n in names},
        undecodable=undecodable,
        run={
            "data": str(config.data),
            "weights": {"name": bundle.name, "sha256": bundle.digest, "revision": bundle.revision},
            "engine": engine.name,
            "device": engine.device,
            "precision": engine.precision,
            "crops": config.crops,
        },
    )



@dataclass(frozen=True)
class HeadReport:
    threshold: float
    overall: BinaryMetrics
    generators: dict[str, BinaryMetrics]  # that generator's fakes vs all reals

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "overall": self.overall.to_dict(),
            "generators": {g: m.to_dict() for g, m in self.generators.items()},
        }


@dataclass(frozen=True)
class EvalReport:
    run: dict[str, Any]
    counts: dict[str, int]  # files, scored, real, fake, undecodable
    heads: dict[HeadName, HeadReport]
    undecodable: list[Undecodable]

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": EVAL_SCHEMA_VERSION,
            "codescan": __version__,
            **self.run,
            "counts": self.counts,
            "heads": {n: h.to_dict() for n, h in self.heads.items()},
            "undecodable": [asdict(u) for u in self.undecodable],
        }


def build_report(scored: Scored) -> EvalReport:
    is_fake = scored.is_fake
    heads: dict[HeadName, HeadReport] = {}
    for name, scores in scored.scores.items():
        t = scored.thresholds[name]
        per_generator = {}
        for g in scored.generators():
            mask = scored.subset(g)
            per_generator[g] = binary_metrics(is_fake[mask], scores[mask], t)
        heads[name] = HeadReport(threshold=t, overall=binary_metrics(is_fake, scores, t), generators=per_generator)
    n_fake = int(is_fake.sum())
    counts = {
        "files": len(scored.samples) + len(scored.undecodable),
        "scored": len(scored.samples),
        "real": len(scored.samples) - n_fake,
        "fake": n_fake,
        "undecodable": len(scored.undecodable),
    }
    return EvalReport(run=scored.run, counts=counts, heads=heads, undecodable=scored.undecodable)
