"""The record schema: the one shape every reporter writes (see README, "Output")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

SCHEMA_VERSION = 1

Status = Literal["real", "fake", "error", "skipped"]
HeadName = Literal["linear", "knn", "ocsvm"]
HEAD_NAMES: tuple[HeadName, ...] = ("linear", "knn", "ocsvm")
HeadChoice = Literal["linear", "knn", "ocsvm", "all"]

ErrorCode = Literal[
    "not_an_image",
    "unsupported_format",
    "truncated",
    "corrupt",
    "too_large",
    "decode_timeout",
    "permission_denied",
    "io_error",
    "symlink_loop",
]
ERROR_CODES: tuple[ErrorCode, ...] = ErrorCode.__args__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class HeadVerdict:
    score: float
    status: Literal["real", "fake"]


@dataclass(frozen=True, slots=True)
class Result:
    """One discovered file. Only `real`/`fake` carry a score; errors carry a code."""

    path: str
    status: Status
    score: float | None = None
    threshold: float | None = None
    head: str | None = None
    width: int | None = None
    height: int | None = None
    format: str | None = None
    crop: tuple[int, int, int, int] | None = None
    error_code: ErrorCode | None = None
    error: str | None = None
    heads: dict[str, HeadVerdict] | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "result", "path": self.path, "status": self.status}
        for key in ("score", "threshold", "head", "width", "height", "format", "error_code", "error"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        if self.crop is not None:
            out["crop"] = list(self.crop)
        if self.heads is not None:
            out["heads"] = {n: {"score": h.score, "status": h.status} for n, h in self.heads.items()}
        return out


def error_result(path: str, code: ErrorCode, message: str) -> Result:
    return Result(path=path, status="error", error_code=code, error=message)


def skipped_result(path: str) -> Result:
    return Result(path=path, status="skipped", error_code="not_an_image")


@dataclass(slots=True)
class Summary:
    files: int = 0
    real: int = 0
    fake: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0

    def add(self, result: Result) -> None:
        self.count(result.status)

    def count(self, status: str) -> None:
        self.files += 1
        if status == "real":
            self.real += 1
        elif status == "fake":
            self.fake += 1
        elif status == "error":
            self.errors += 1
        else:
            self.skipped += 1

    def exit_code(self) -> int:
        """Errors win over fakes: an incomplete answer must not look like a clean one."""
        if self.errors:
            return 2
        if self.fake:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "summary",
            "files": self.files,
            "real": self.real,
            "fake": self.fake,
            "errors": self.errors,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }


@dataclass(frozen=True, slots=True)
class Header:
    codescan: str
    weights: dict[str, str]
    engine: str
    device: str
    precision: str
    head: str
    thresholds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "header",
            "schema_version": SCHEMA_VERSION,
            "codescan": self.codescan,
            "weights": dict(self.weights),
            "engine": self.engine,
            "device": self.device,
            "precision": self.precision,
            "head": self.head,
            "thresholds": dict(self.thresholds),
        }
