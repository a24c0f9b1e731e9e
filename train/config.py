"""What a training run was asked to do: one frozen dataclass, stored in every checkpoint.

A resumed run must keep every field (the schedule, the data order and the views all depend on
them), so the checkpoint's copy is compared field by field with the resumed one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

from codescan.train.augment import AugmentConfig
from codescan.train.pool import check_context

from codescan.model.encoder import EncoderConfig

Device = Literal["auto", "cpu", "cuda"]
Views = Literal[3, 4]
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")
SCRATCH = "scratch"


def scratch_encoder() -> EncoderConfig:
    """ViT-Tiny as CoDE trains it; LayerNorm eps 1e-6 is timm's ViT default (and the official config's)."""
    return EncoderConfig(layer_norm_eps=1e-6)


@dataclass(frozen=True)
class TrainConfig:
    data: str  # folder (real/**, fake/<generator>/**) or CSV manifest
    out: str = "trained"  # bundle name, and the work folder <store>/train/<out>/
    init: str = SCRATCH  # "scratch" or an installed bundle's name
    epochs: int = 10
    batch_size: int = 32  # images per step: half real, half fake
    steps_per_epoch: int | None = None  # None: ceil(training images / batch_size)
    views: Views = 4  # 4: clean, augmented, global, local; 3: the global view doubles as the augmented one
    lr: float = 2e-3
    weight_decay: float = 2e-5  # the reference's (timm's default)
    warmup: float = 0.05  # fraction of all steps
    clip_grad: float = 1.0  # max gradient norm
    temperature: float = 0.1
    seed: int = 0
    val_fraction: float = 0.1  # held out by file hash, for thresholds and metrics
    context: int = 384  # side of the central region kept in RAM per image, see pool.py
    device: Device = "auto"
    encoder: EncoderConfig = field(default_factory=scratch_encoder)  # used with init="scratch" only
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError("epochs must be ≥ 1")
        if self.batch_size < 4 or self.batch_size % 2:
            raise ValueError(f"batch size {self.batch_size}: must be even and ≥ 4 (half real, half fake)")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise ValueError("steps per epoch must be ≥ 1")
        if self.views not in (3, 4):
            raise ValueError(f"views {self.views}: choose 3 or 4")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"validation fraction {self.val_fraction}: must be in [0, 1)")
        if self.device not in DEVICES:
            raise ValueError(f"device {self.device!r}: choose from {', '.join(DEVICES)}")
        if self.lr <= 0 or self.temperature <= 0 or self.clip_grad <= 0:
            raise ValueError("lr, temperature and clip_grad must be > 0")
        check_context(self.context)

    @property
    def per_class(self) -> int:
        return self.batch_size // 2

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (tuples become lists), as stored in checkpoints and bundle.json."""
        return _lists(asdict(self))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        values = dict(d)
        if "encoder" in values:
            values["encoder"] = EncoderConfig.from_dict(values["encoder"])
        if "augment" in values:
            values["augment"] = AugmentConfig.from_dict(values["augment"])
        return cls(**values)

    def differences(self, other: TrainConfig) -> list[str]:
        """`name mine vs theirs` for every top-level field that differs."""
        a, b = self.to_dict(), other.to_dict()
        return [f"{k} {a[k]!r} vs {b[k]!r}" for k in a if a[k] != b[k]]


def _lists(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value
