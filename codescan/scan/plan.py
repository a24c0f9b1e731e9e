"""A scan's plan: every choice made once, from the options and the bundle, then only read.

Two steps, as ripgrep splits its arguments: :func:`check_options` applies every rule between
options (no file read, so a bad combination fails before stdin, the weights or the model are
touched), then :meth:`ScanPlan.resolve` loads the bundle and decides the heads, thresholds
and cache. The plan then builds what both executors and the CLI read: the examine config each
decode worker gets, the cache file and keys, the batch size on a device, the header and the
reporter; `codescan.scan.executors` builds the executor it names. Nothing downstream chooses again.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from codescan.core import defaults
from codescan.core.records import EvidenceLevel, HeadChoice, Header, HeadName
from codescan.core.version import __version__
from codescan.decoding.decode import DecodeLimits
from codescan.inputs.walk import WalkOptions
from codescan.model.preprocess import CropCount
from codescan.output.reporters import Format
from codescan.scan.judge import Judge

if TYPE_CHECKING:
    from codescan.decoding.cache import CacheSpec
    from codescan.decoding.examine import ExamineConfig
    from codescan.model.heads import HeadSet
    from codescan.output.reporters import Reporter
    from codescan.scan.ray_cluster import RayOptions
    from codescan.weights.bundle import Bundle


def measuring_config(limits: DecodeLimits = DecodeLimits(), crops: CropCount = defaults.CROPS) -> ExamineConfig:
    """What a decode worker does for `eval`, `calibrate`, `gate` and training's embedding pass: the
    scan's examination, limits and crop plan, without evidence or the scan cache (they measure the
    model, so every file is decoded and none is judged by its metadata)."""
    from codescan.decoding.examine import ExamineConfig

    return ExamineConfig(limits=limits, evidence="none", cache=None, crops=crops)


def batch_size_for(device: str, asked: int | None = None) -> int:
    """`--batch-size`, else the default for the engine's device: scan, eval and calibrate alike."""
    return asked or (defaults.GPU_BATCH if device.startswith("cuda") else defaults.CPU_BATCH)


@dataclass(frozen=True)
class OutputConfig:
    """Where the records go (`-o`, `--format`, `--resume`, `--shards`, `--report`): after
    :func:`check_options`, `format` is decided and `target` is the file written (`-`: stdout)."""

    target: str = "-"
    format: Format | None = None  # None: from the target's suffix, else JSONL
    resume: str | None = None
    shards: str | None = None
    report: str | None = None


def check_options(
    config: ScanConfig, output: OutputConfig | None = None, ray: RayOptions | None = None
) -> tuple[ScanConfig, OutputConfig | None]:
    """Every rule between options, and the choices they leave: the output format and target, and
    the scan cache's file (the store's by default, none under Ray: it is one machine's).

    Reads no file and is idempotent (the plan applies it again); ValueError says which options clash."""
    import importlib.util

    if ray is not None:
        if config.crops != 1:
            raise ValueError("--crops 5 is not available with --ray yet: its rows carry one crop per file")
        if importlib.util.find_spec("ray") is None:
            raise ValueError("--ray needs the ray extra: pip install 'codescan[ray]'")
        config = replace(config, cache=False)
    elif config.cache is True:
        from codescan.decoding.cache import default_path

        config = replace(config, cache=str(default_path()))
    if output is not None:
        output = _output_rules(output, ray is not None)
    return config, output


def _output_rules(output: OutputConfig, distributed: bool) -> OutputConfig:
    from codescan.output.reporters import FORMATS, guess_format

    target, fmt = output.target, output.format
    if output.resume is not None:
        if target not in ("-", output.resume) or (fmt or "jsonl") != "jsonl":
            raise ValueError("--resume FILE writes JSONL to FILE itself; drop -o/--format")
        target, fmt = output.resume, "jsonl"
    fmt = fmt or guess_format(target) or "jsonl"
    if fmt not in FORMATS:
        raise ValueError(f"--format: choose from {', '.join(FORMATS)}")
    if fmt == "parquet":
        import importlib.util

        if target == "-":
            raise ValueError("--format parquet writes a file: give -o FILE.parquet")
        if importlib.util.find_spec("pyarrow") is None:
            raise ValueError("--format parquet needs pyarrow: pip install 'codescan[parquet]'")
    if output.shards is not None and (not distributed or output.resume is not None or target != "-" or fmt != "jsonl"):
        raise ValueError("--shards DIR needs --ray and replaces -o/--format/--resume")
    if output.report is not None and ((target == "-" and output.shards is None) or fmt == "csv"):
        raise ValueError("--report reads the verdicts back: give -o FILE as JSONL, JSON or Parquet (or --resume FILE, --shards DIR)")
    return replace(output, target=target, format=fmt)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ScanPlan:
    bundle: Bundle
    config: ScanConfig  # after check_options: `cache` is a file or False
    heads: HeadSet  # every head of the bundle, read once
    judge: Judge
    engine: str  # as asked: "auto" or a registry name; resolved where the engine runs
    precision: str
    output: OutputConfig | None = None  # None: the caller consumes the results itself (the API)
    ray: RayOptions | None = None  # None: the local executor

    @classmethod
    def resolve(
        cls,
        weights: str | None,
        engine: str,
        precision: str,
        config: ScanConfig,
        output: OutputConfig | None = None,
        ray: RayOptions | None = None,
    ) -> ScanPlan:
        """The options' rules first (:func:`check_options`), then the bundle and its heads."""
        from codescan.weights.bundle import load_bundle
        from codescan.weights.store import chosen_name

        config, output = check_options(config, output, ray)
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
        return cls(
            bundle=bundle, config=config, heads=heads, judge=judge, engine=engine, precision=precision, output=output, ray=ray
        )

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
        from codescan.model.heads import SCORING_VERSION
        from codescan.model.preprocess import PREPROCESS_VERSION

        if not isinstance(self.config.cache, str):
            return None
        model = f"{self.bundle.digest}/p{PREPROCESS_VERSION}/s{SCORING_VERSION}/{engine}/{precision}"
        if self.config.crops != 1:  # one-crop keys predate --crops and keep their form
            model += f"/crops{self.config.crops}"
        evidence = None if self.config.evidence == "none" else f"{self.config.evidence}/v{EVIDENCE_VERSION}"
        return CacheSpec(path=self.config.cache, model=model, evidence=evidence, heads=tuple(self.heads.names()), crops=self.config.crops)

    def batch_size(self, device: str) -> int:
        return batch_size_for(device, self.config.batch_size)

    def reporter(self) -> Reporter:
        """The output writer the options ask for (the CLI's; API callers take the results themselves)."""
        from pathlib import Path

        from codescan.output.reporters import ShardsReporter, make_reporter

        out = self.output
        assert out is not None and out.format is not None, "resolved without output options"
        if out.shards is not None:
            return ShardsReporter(Path(out.shards))
        return make_reporter(
            out.format, out.target, self.shown_heads, evidence=self.config.evidence != "none", resuming=out.resume is not None
        )

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
    head: HeadChoice = defaults.HEAD
    thresholds: dict[HeadName, float] = field(default_factory=dict)  # overrides of the bundle's
    batch_size: int | None = None  # None: the plan's default for the engine's device (codescan.scan.plan)
    decode_workers: int = field(default_factory=defaults.decode_workers)
    decode_timeout: float = defaults.DECODE_TIMEOUT  # seconds per file, enforced by killing the worker
    limits: DecodeLimits = DecodeLimits()
    walk: WalkOptions = WalkOptions()
    evidence: EvidenceLevel = defaults.EVIDENCE
    cache: str | bool = False  # the SQLite scan cache: a file, True for the store's, False for none
    crops: CropCount = defaults.CROPS  # boxes judged per image: the centre (the reference), or centre + corners
