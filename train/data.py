"""Labelled samples for training and evaluation: a folder layout or a CSV manifest, and a hash split.

The split is by file content, not by name or order, so it is the same on every machine, survives
renames and re-listing, and a duplicate file can never sit on both sides of it.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from codescan.inputs.read import has_image_extension

Label = Literal["real", "fake"]
REAL_GENERATOR = "real"


class DataError(ValueError):
    """The data folder or manifest is not in a layout we understand."""


@dataclass(frozen=True, slots=True)
class Sample:
    path: Path
    label: Label
    generator: str  # the fake's generator; "real" for real images

    @property
    def is_fake(self) -> bool:
        return self.label == "fake"


def load_samples(source: str | Path) -> list[Sample]:
    """`DIR/real/**` + `DIR/fake/<generator>/**` (any depth), or a CSV with path,label[,generator].

    CSV paths are relative to the CSV's folder; the generator column falls back to the label
    (real) or "unknown" (fake). Samples come back sorted by path, so runs are reproducible.
    """
    source = Path(source)
    samples = _from_csv(source) if source.is_file() else _from_folder(source)
    if not samples:
        raise DataError(f"no images found in {source} (expected real/** and fake/<generator>/**, or a CSV manifest)")
    return sorted(samples, key=lambda s: str(s.path))


def _from_folder(root: Path) -> list[Sample]:
    if not (root / "real").is_dir() and not (root / "fake").is_dir():
        raise DataError(f"{root} has neither real/ nor fake/ (expected real/** and fake/<generator>/**)")
    out = [Sample(p, "real", REAL_GENERATOR) for p in _images(root / "real")]
    fake = root / "fake"
    if fake.is_dir():
        for p in _images(fake):
            rel = p.relative_to(fake).parts
            out.append(Sample(p, "fake", rel[0] if len(rel) > 1 else "unknown"))
    return out


def _images(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*") if p.is_file() and has_image_extension(p.name)]


def _from_csv(manifest: Path) -> list[Sample]:
    base = manifest.parent
    out: list[Sample] = []
    with open(manifest, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = set(reader.fieldnames or ())
        if not {"path", "label"} <= fields:
            raise DataError(f"{manifest}: a manifest needs the columns path,label[,generator]")
        gen_col = "generator" if "generator" in fields else "generator_or_source" if "generator_or_source" in fields else None
        for line, row in enumerate(reader, start=2):
            label = row["label"].strip().lower()
            if label not in ("real", "fake"):
                raise DataError(f"{manifest}:{line}: label must be real or fake, not {row['label']!r}")
            gen = (row.get(gen_col) or "").strip() if gen_col else ""
            if label == "real":
                gen = REAL_GENERATOR
            out.append(Sample(base / row["path"], label, gen or "unknown"))  # type: ignore[arg-type]
    return out


def content_fraction(path: Path, salt: str = "") -> float:
    """A number in [0, 1) fixed by the file's bytes (and the salt): where the file falls in a split."""
    with open(path, "rb") as fh:
        digest = hashlib.file_digest(fh, lambda: hashlib.sha256(salt.encode())).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_by_hash(samples: Sequence[Sample], fraction: float, salt: str = "") -> tuple[list[Sample], list[Sample]]:
    """(kept, held out): a sample is held out when its content fraction is below `fraction`."""
    kept: list[Sample] = []
    held: list[Sample] = []
    for s in samples:
        (held if content_fraction(s.path, salt) < fraction else kept).append(s)
    return kept, held
