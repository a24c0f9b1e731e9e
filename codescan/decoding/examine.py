"""One file, inside a decode worker: read it once, hash it, reuse what the cache knows,
decode what it does not, and collect evidence from the same bytes.

Runs in the worker process so the parent's single thread never touches file contents: the
outcome it sends back is a crop to embed, or cached scores, or a typed failure, or a skip.
"""

from __future__ import annotations

import functools
import hashlib
import os
from dataclasses import dataclass

from codescan.core import defaults
from codescan.core.records import ErrorCode, Evidence, EvidenceLevel, ImageFacts
from codescan.decoding.cache import CachedVerdict, CacheReader, CacheSpec
from codescan.decoding.decode import Decoded, DecodeLimits, decode_bytes, decode_full
from codescan.evidence.metadata import Findings, metadata_evidence
from codescan.inputs.fetch import read_member, read_uri
from codescan.inputs.read import (
    MAGIC_BYTES,
    DecodeFailure,
    has_image_extension,
    has_image_magic,
    read_candidate,
    read_limited,
    sniff,
)
from codescan.inputs.walk import Entry
from codescan.model.preprocess import CropCount


@dataclass(frozen=True, slots=True)
class ExamineConfig:
    limits: DecodeLimits = DecodeLimits()
    evidence: EvidenceLevel = "metadata"
    cache: CacheSpec | None = None
    crops: CropCount = defaults.CROPS


@dataclass(frozen=True, slots=True)
class Skipped:
    """Not a candidate: no image extension and no image magic, or an archive inside an archive."""

    code: ErrorCode = "not_an_image"


SKIPPED = Skipped()
# Listing codes that mean skipped, not error: an archive in an archive, a Parquet file with no image column.
SKIP_CODES = frozenset({"nested_archive", "not_an_image"})


def listed_outcome(entry: Entry) -> DecodeFailure | Skipped:
    """The outcome of an entry the listing already judged (it carries `error`): no worker needed."""
    assert entry.error is not None
    code, message = entry.error
    return Skipped(code) if code in SKIP_CODES else DecodeFailure(code, message)


@dataclass(slots=True)  # not frozen: see codescan/core/records.py, `Result`
class Examined:
    """An image whose verdict needs `decoded` embedded, or is already known (`cached`)."""

    sha256: bytes
    evidence: tuple[Evidence, ...] | None
    new_evidence: bool  # computed now, not read from the cache: the parent stores it
    decoded: Decoded | None = None
    cached: CachedVerdict | None = None

    @property
    def facts(self) -> ImageFacts:
        src = self.decoded if self.decoded is not None else self.cached
        assert src is not None
        return ImageFacts(src.width, src.height, src.format, src.boxes)

    def __reduce__(self):  # by position: half the cost of a slots dataclass's pickling, once per file
        return (Examined, (self.sha256, self.evidence, self.new_evidence, self.decoded, self.cached))

    def verdict(self, scores: tuple[dict[str, float], ...]) -> CachedVerdict:
        """What the cache keeps for this content once its scores (per box) are known."""
        facts = self.facts
        return CachedVerdict(facts.width, facts.height, facts.format, facts.boxes, scores)


Outcome = Examined | DecodeFailure | Skipped

_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp"}


class Examiner:
    """Holds the per-worker state: the cache connection and the optional provenance readers."""

    def __init__(self, config: ExamineConfig) -> None:
        from codescan.evidence import provenance

        self.config = config
        self.cache = CacheReader(config.cache) if config.cache is not None else None
        self.c2pa = provenance.c2pa_reader() if config.evidence != "none" else None
        full = functools.partial(decode_full, limits=config.limits)
        self.watermark = provenance.watermark_detector(full) if config.evidence == "all" else None

    def __call__(self, entry: Entry) -> Outcome:
        if entry.error is not None:
            return listed_outcome(entry)
        try:
            if entry.span is not None or entry.data is not None:  # an archive member, picked by its name
                data = read_member(entry, self.config.limits.max_filesize)
            elif entry.origin is not None:  # a Parquet row whose image is a file beside it
                limit = self.config.limits.max_filesize
                data = read_uri(os.fsdecode(entry.path), limit) if entry.uri else read_limited(entry.path, limit, entry.pin)
            elif entry.uri:  # one request: read it all, then look at the first bytes
                data = read_uri(entry.display, self.config.limits.max_filesize)
                if data and not has_image_extension(entry.path) and not has_image_magic(data[:MAGIC_BYTES]):
                    return SKIPPED
            else:
                wanted = None if has_image_extension(entry.path) else has_image_magic
                found = read_candidate(entry.path, self.config.limits.max_filesize, entry.pin, wanted)
                if found is None:
                    return SKIPPED
                data = found
        except DecodeFailure as failure:
            return failure
        sha = hashlib.sha256(data).digest()
        evidence = self.cache.evidence(sha) if self.cache is not None else None
        new_evidence = evidence is None and self.config.evidence != "none"
        if new_evidence:
            evidence = self._evidence(data)
        cached = self.cache.verdict(sha) if self.cache is not None else None
        if cached is not None:
            return Examined(sha, evidence, new_evidence, cached=cached)
        try:
            name = entry.path if entry.origin is None else entry.origin.member
            decoded = decode_bytes(data, self.config.limits, name, self.config.crops)
        except DecodeFailure as failure:
            return DecodeFailure(failure.code, failure.message, sha.hex(), evidence)
        return Examined(sha, evidence, new_evidence, decoded=decoded)

    def _evidence(self, data: bytes) -> tuple[Evidence, ...]:
        """Best-effort and bounded (evidence.Findings): the watermark decoder too can fail on a
        hostile file, and that must cost its evidence, never the file's verdict."""
        mime = _MIME.get(sniff(data[:MAGIC_BYTES])[1] or "", "")
        found = Findings(metadata_evidence(data, self.c2pa, mime))
        if self.watermark is not None:
            found.add(self.watermark, data)
        return tuple(found.items())

