"""The record schema: the one shape every reporter writes (docs/output.md is its one description)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

SCHEMA_VERSION = 3  # 2: evidence, combined, sha256; 3: archive members and Parquet rows (archive, member, member_index, key)

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
    "too_deep",  # a directory past the walk's depth limit, or a path longer than the OS accepts
    "encrypted",  # an encrypted archive member: never guessed at
    "unsafe_path",  # a Parquet row's image path that leaves the Parquet file's folder: not read
    "non_finite_score",  # a judged head scored the image NaN or ±inf (fp16 overflow, a head that overflows): no verdict
    "replaced",  # the file at a listed name is not the one listed (swapped for a link or another file): not read
    "nested_archive",  # (skipped) an archive inside an archive: not opened
]
ERROR_CODES: tuple[ErrorCode, ...] = ErrorCode.__args__  # type: ignore[attr-defined]


EvidenceLevel = Literal["none", "metadata", "all"]
CropCount = Literal[1, 5]  # 1: the reference's centre crop; 5: centre + four corners, the score their max


def is_fake(score: Any, threshold: Any) -> Any:
    """The one verdict rule, for scan, gate, eval and training: fake when the score is strictly
    above the threshold (so threshold 0 reproduces scikit-learn's predict). Elementwise on arrays."""
    return score > threshold


def status_for(score: float, threshold: float) -> Status:
    return "fake" if is_fake(score, threshold) else "real"
EvidenceKind = Literal[
    "a1111",  # AUTOMATIC1111-style generation parameters (also Forge, SD.Next, Fooocus' a1111 scheme)
    "comfyui",  # ComfyUI prompt/workflow graph
    "novelai",
    "invokeai",
    "fooocus",
    "software",  # EXIF Software / PNG Software / XMP CreatorTool naming an AI generator
    "digital_source_type",  # IPTC DigitalSourceType in XMP
    "c2pa",  # C2PA manifest (Content Credentials)
    "watermark",  # invisible watermark of the Stable Diffusion / SDXL reference pipelines
]


@dataclass(frozen=True, slots=True)
class Evidence:
    """A fact found in the file itself, kept apart from the model's score.

    `conclusive` means the file declares AI generation (a generator's own parameters, an IPTC
    AI source type, a C2PA manifest whose hashes verify and that says so, a decoded
    watermark). Metadata can be stripped or forged, so no evidence means nothing, and
    evidence is a claim made by whatever wrote the file.
    """

    kind: EvidenceKind
    detail: str
    generator: str | None = None
    conclusive: bool = False
    valid: bool | None = None  # c2pa only: signature and content hashes verified

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "detail": self.detail}
        if self.generator is not None:
            out["generator"] = self.generator
        out["conclusive"] = self.conclusive
        if self.valid is not None:
            out["valid"] = self.valid
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Evidence:
        return cls(d["kind"], d["detail"], d.get("generator"), bool(d.get("conclusive")), d.get("valid"))


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a record's bytes sit inside an archive or a Parquet file.

    `path` (``ARCHIVE::MEMBER``) is for people; programs identify a member by (archive,
    member_index), because member names can repeat and can be anything the archive's author wrote.
    """

    archive: str  # the archive or Parquet file, as reached from the argument
    member: str  # the member's name as stored (Parquet: the image's path, else the row's key)
    member_index: int  # position in the archive (Parquet: row number in the file), from 0
    key: str | None = None  # WebDataset sample key; Parquet row identifier

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"archive": self.archive, "member": self.member, "member_index": self.member_index}
        if self.key is not None:
            out["key"] = self.key
        return out


Ident = str | tuple[str, int]  # what resume and shards call done: a path, or (archive, member_index)


def is_result_record(obj: Any) -> bool:
    """Whether a parsed line read back from a verdicts file (resume, shards, report) has what its
    readers use: a `path` and `status`, and for a member its `archive` and `member_index`. Such a
    file may have been edited by anyone: a line without them is refused, not a KeyError later."""
    if not (isinstance(obj, dict) and isinstance(obj.get("path"), str) and isinstance(obj.get("status"), str)):
        return False
    return "archive" not in obj or (isinstance(obj["archive"], str) and type(obj.get("member_index")) is int)


def ident_of(record: dict[str, Any]) -> Ident:
    """A written record's identity (the inverse of Entry.ident)."""
    if "archive" in record:
        return (record["archive"], record["member_index"])
    return record["path"]


@dataclass(frozen=True, slots=True)
class HeadVerdict:
    score: float
    status: Literal["real", "fake"]


@dataclass(frozen=True, slots=True)
class BoxScore:
    """One judged box of `scan --crops 5` and each judged head's score on it."""

    box: tuple[int, int, int, int]
    scores: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {"box": list(self.box), "scores": dict(self.scores)}


# Not frozen: a frozen dataclass sets each field through object.__setattr__ (a 16-field Result:
# 1.7 µs against 0.3), and one is made per file on the scan's hottest path. Nothing mutates it,
# and it hashes by its fields as it did when frozen (unsafe_hash).
@dataclass(slots=True, unsafe_hash=True)
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
    sha256: str | None = None
    evidence: tuple[Evidence, ...] | None = None  # None: not looked for (--evidence none)
    origin: Origin | None = None  # set for archive members and Parquet rows
    boxes: tuple[BoxScore, ...] | None = None  # --crops 5: every box judged; `crop` is the one that decided

    @property
    def combined(self) -> Literal["real", "fake"] | None:
        """The model verdict, overruled to fake by conclusive evidence; None for errors and skips."""
        status, evidence = self.status, self.evidence
        if evidence is None or (status != "real" and status != "fake"):
            return None
        if status == "fake":
            return "fake"
        for e in evidence:  # not any(genexpr): most files have none, and this runs once per file
            if e.conclusive:
                return "fake"
        return "real"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": "result", "path": self.path}
        if self.origin is not None:
            out |= self.origin.to_dict()
        out["status"] = self.status
        # Field by field, not a loop over names: a scan writes thousands of records a second.
        if self.score is not None:
            out["score"] = self.score
        if self.threshold is not None:
            out["threshold"] = self.threshold
        if self.head is not None:
            out["head"] = self.head
        if self.width is not None:
            out["width"] = self.width
        if self.height is not None:
            out["height"] = self.height
        if self.format is not None:
            out["format"] = self.format
        if self.error_code is not None:
            out["error_code"] = self.error_code
        if self.error is not None:
            out["error"] = self.error
        if self.crop is not None:
            out["crop"] = list(self.crop)
        if self.boxes is not None:
            out["boxes"] = [b.to_dict() for b in self.boxes]
        if self.heads is not None:
            out["heads"] = {n: {"score": h.score, "status": h.status} for n, h in self.heads.items()}
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        combined = self.combined
        if self.evidence is not None and (self.evidence or combined is not None):
            out["evidence"] = [e.to_dict() for e in self.evidence]
        if combined is not None:
            out["combined"] = combined
        return out


def error_result(
    path: str,
    code: ErrorCode,
    message: str,
    sha256: str | None = None,
    evidence: tuple[Evidence, ...] | None = None,
    origin: Origin | None = None,
) -> Result:
    return Result(path=path, status="error", error_code=code, error=message, sha256=sha256, evidence=evidence, origin=origin)


def skipped_result(path: str, code: ErrorCode = "not_an_image", origin: Origin | None = None) -> Result:
    return Result(path=path, status="skipped", error_code=code, origin=origin)


@dataclass(slots=True)
class Summary:
    files: int = 0
    real: int = 0
    fake: int = 0
    errors: int = 0
    skipped: int = 0
    seconds: float = 0.0
    combined_fake: int | None = None  # counted when evidence is looked for

    @classmethod
    def for_evidence(cls, level: EvidenceLevel) -> Summary:
        return cls(combined_fake=None if level == "none" else 0)

    def count(self, status: str, combined: str | None = None) -> None:
        """One record, from its status and combined verdict (a resumed file's lines)."""
        self._add([status], [combined])

    def count_all(self, records: Sequence[Any]) -> None:
        """A list of records at once (Results, or anything with their `status` and `combined`)."""
        combined = [r.combined for r in records] if self.combined_fake is not None else []
        self._add([r.status for r in records], combined)

    def _add(self, statuses: list[str], combined: list[str | None]) -> None:
        real, fake, errors = statuses.count("real"), statuses.count("fake"), statuses.count("error")
        self.files += len(statuses)
        self.real += real
        self.fake += fake
        self.errors += errors
        self.skipped += len(statuses) - real - fake - errors  # anything else is skipped, as the schema says
        if self.combined_fake is not None:
            self.combined_fake += combined.count("fake")

    def exit_code(self) -> int:
        """Errors win over fakes: an incomplete answer must not look like a clean one."""
        if self.errors:
            return 2
        if self.fake or self.combined_fake:
            return 1
        return 0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "type": "summary",
            "files": self.files,
            "real": self.real,
            "fake": self.fake,
            "errors": self.errors,
            "skipped": self.skipped,
        }
        if self.combined_fake is not None:
            out["combined_fake"] = self.combined_fake
        out["seconds"] = round(self.seconds, 3)
        return out


def argument_key(argument: bytes) -> bytes:
    """An argument as --resume compares it: `photos/` (the slash tab completion adds) is `photos`.

    Only spellings that list the same record paths are equal: the walk joins names to the
    argument, so `photos/` and `photos` give `photos/a.jpg`, while `photos//` or `./photos`
    give other paths and stay distinct. A URI's trailing slashes never change its listing.
    """
    if b"://" in argument:
        scheme, _, rest = argument.partition(b"://")
        return scheme + b"://" + (rest.rstrip(b"/") or rest)
    if argument.endswith(b"/") and not argument.endswith(b"//") and len(argument) > 1:
        return argument[:-1]
    return argument


@dataclass(frozen=True, slots=True)
class Header:
    codescan: str
    weights: dict[str, str | None]
    engine: str
    device: str
    precision: str
    head: str
    thresholds: dict[str, float] = field(default_factory=dict)
    evidence: EvidenceLevel = "none"
    inputs: dict[str, Any] | None = None  # {"count", "sha256"} of the PATH arguments; never the paths
    crops: int = 1  # boxes judged per image (scan --crops); a header written before the field judged one

    def with_inputs(self, arguments: Sequence[str | bytes]) -> Header:
        """Fingerprint the arguments so that --resume can refuse a different set without storing it."""
        joined = b"\0".join(argument_key(os.fsencode(a)) for a in arguments)
        return replace(self, inputs={"count": len(arguments), "sha256": hashlib.sha256(joined).hexdigest()})

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
            "evidence": self.evidence,
            "crops": self.crops,
            **({"inputs": dict(self.inputs)} if self.inputs is not None else {}),
        }


@dataclass(frozen=True, slots=True)
class ImageFacts:
    """What a record says of a judged image besides its scores."""

    width: int
    height: int
    format: str
    boxes: tuple[tuple[int, int, int, int], ...]  # the boxes judged, the centre first
