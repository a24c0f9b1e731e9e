"""A scan's plan: every choice made once, from the options and the bundle, then only read.

Which heads are judged and shown, their thresholds, the batch size on a device, whether the
scan cache is used, which engine was asked for: each is decided here and nowhere else, so the
local pipeline, Ray's actors, the reporters and the header all read the same answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import __version__
from .judge import Judge
from .records import Header, HeadName

if TYPE_CHECKING:
    from .heads import HeadSet
    from .pipeline import ScanConfig
    from .weights import Bundle

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
        """`distributed`: Ray runs the scan, and the scan cache (one machine's) is off."""
        from dataclasses import replace

        from .weights import chosen_name, load_bundle

        weights = chosen_name(weights)

        if config.evidence == "all":
            from .provenance import require_watermark

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
