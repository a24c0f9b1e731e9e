"""A scan's plan: every choice made once, from the options and the bundle, then only read.

Which heads are judged and shown, their thresholds, the batch size on a device, whether the
scan cache is used, which engine was asked for: each is decided here and nowhere else, so the
local pipeline, Ray's actors, the reporters and the header all read the same answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from codescan.core.records import EvidenceLevel, HeadChoice, Header, HeadName
from codescan.core.version import __version__
from codescan.decoding.decode import DecodeLimits
from codescan.inputs.walk import WalkOptions
from codescan.model.preprocess import CropCount
from codescan.scan.judge import Judge

if TYPE_CHECKING:
    from codescan.decoding.cache import CacheSpec
    from codescan.decoding.examine import ExamineConfig
    from codescan.model.heads import HeadSet
    from codescan.weights.bundle import Bundle

CPU_BATCH = 8  # small batches overlap decode best on a CPU
GPU_BATCH = 64


@dataclass(frozen=True)
class ScanPlan:
    bundle: Bundle
    config: ScanConfig  # the options as given, with `cache` already off where it cannot be used
    heads: HeadSet  # every head of the bundle, read once
    judge: Judge
    engine: str  # as asked: "auto" or a registry name; resolved where the engine runs
    precision: str

    @classmethod
    def resolve(
        cls, weights: str | None, engine: str, precision: str, config: ScanConfig, distributed: bool = False
    ) -> ScanPlan:
        """`distributed`: Ray runs the scan, and the scan cache (one machine's) is off.

        Cross-option rules are checked here, before the bundle loads: ValueError says which."""
        if distributed and config.crops != 1:
            raise ValueError("--crops 5 is not available with --ray yet: its rows carry one crop per file")
        from dataclasses import replace

        from codescan.weights.bundle import load_bundle
        from codescan.weights.store import chosen_name

        weights = chosen_name(weights)

        if config.evidence == "all":
            from codescan.evidence.provenance import require_watermark

            require_watermark()  # fail now, with the install hint, not in every worker
        bundle = load_bundle(weights)
        heads = bundle.head_set()
        judged = heads.select(config.head, weights)
        for name in config.thresholds:
            if name not in heads.names():
                raise ValueError(f"--threshold for {name!r}, but the bundle has no such head")
        judge = Judge(
            judged=tuple(judged),
            thresholds={n: config.thresholds.get(n, heads.threshold(n)) for n in judged},
            show_all=config.head == "all",
        )
        if distributed:
            config = replace(config, cache=None)
        return cls(bundle=bundle, config=config, heads=heads, judge=judge, engine=engine, precision=precision)

    @property
    def shown_heads(self) -> list[HeadName] | None:
        """The heads every record lists (`--head all`), else None: CSV's extra columns."""
        return list(self.judge.judged) if self.judge.show_all else None

    def examine_config(self, cache: CacheSpec | None) -> ExamineConfig:
        """What each decode worker does with a file, the same for both executors (Ray's rows
        carry the crops its workers cut, so `--crops` reaches them as it reaches local ones)."""
        from codescan.decoding.examine import ExamineConfig

        return ExamineConfig(limits=self.config.limits, evidence=self.config.evidence, cache=cache, crops=self.config.crops)

    def cache_spec(self, engine: str, precision: str) -> CacheSpec | None:
        """The scan cache's file and keys once the engine is resolved, or None when it is off.
        Everything that can change a score is in the model key; evidence has its own."""
        from codescan.decoding.cache import CacheSpec
        from codescan.evidence.metadata import EVIDENCE_VERSION
        from codescan.model.preprocess import PREPROCESS_VERSION

        if self.config.cache is None:
            return None
        model = f"{self.bundle.digest}/p{PREPROCESS_VERSION}/{engine}/{precision}"
        if self.config.crops != 1:
            model += f"/crops{self.config.crops}"
        evidence = None if self.config.evidence == "none" else f"{self.config.evidence}/v{EVIDENCE_VERSION}"
        return CacheSpec(path=self.config.cache, model=model, evidence=evidence, heads=tuple(self.heads.names()), crops=self.config.crops)

    def batch_size(self, device: str) -> int:
        return self.config.batch_size or (GPU_BATCH if device.startswith("cuda") else CPU_BATCH)

    def header(self, engine: str, device: str, precision: str) -> Header:
        """The header of a scan whose engine resolved to `engine` on `device` at `precision`."""
        return Header(
            codescan=__version__,
            weights={"name": self.bundle.name, "sha256": self.bundle.digest, "revision": self.bundle.revision},
            engine=engine,
            device=device,
            precision=precision,
            head=self.config.head,
            thresholds=dict(self.judge.thresholds),
            evidence=self.config.evidence,
            crops=self.config.crops,
        )


@dataclass(frozen=True)
class ScanConfig:
    head: HeadChoice = "linear"
    thresholds: dict[HeadName, float] = field(default_factory=dict)  # overrides of the bundle's
    batch_size: int | None = None  # None: the plan's default for the engine's device (codescan.scan.plan)
    decode_workers: int = max(1, min(8, os.cpu_count() or 1))
    decode_timeout: float = 20.0  # seconds per file, enforced by killing the worker
    limits: DecodeLimits = DecodeLimits()
    walk: WalkOptions = WalkOptions()
    evidence: EvidenceLevel = "metadata"
    cache: str | None = None  # the SQLite scan cache; None: nothing read or stored across scans
    crops: CropCount = 1  # boxes judged per image: the centre (the reference), or centre + corners
