"""Five 224×224 crops per image (centre + four corners) for `codescan eval --crops 5`.

The reference judges only the central 224×224 pixels, so on a large photo most of the image is
never seen. Five crops see the corners too; the score is the maximum over crops, so one
crop that looks generated is enough. Each crop is cut exactly like the centre crop, with no
resize: along an axis shorter than 224 every crop takes the whole axis, zero-padded the way
the centre crop is, so a small image's five crops coincide where they cannot differ.

The boxes are :func:`codescan.model.preprocess.plan_crops`, shared with `scan --crops 5`. Decoding goes through :mod:`codescan.decoding.decode`'s safety (size limit before reading, format
allow-list, pixel limit from the header before any pixel is decoded, typed errors), and
crop 0 equals ``decode_file(...).crop`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codescan.decoding.decode import DecodeLimits, decode_bytes
from codescan.inputs.read import read_limited

N_CROPS = 5


@dataclass(frozen=True, slots=True)
class FiveCrops:
    crops: np.ndarray  # (5, 224, 224, 3) uint8: centre, top-left, top-right, bottom-left, bottom-right
    width: int
    height: int
    format: str
    boxes: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom) per crop, in image pixels


def decode_five_bytes(data: bytes, limits: DecodeLimits, name: str | bytes = "") -> FiveCrops:
    """Decode the first frame once and cut the five crops (codescan.decoding.decode, as `scan --crops 5`)."""
    decoded = decode_bytes(data, limits, name, crops=N_CROPS)
    return FiveCrops(decoded.crops, decoded.width, decoded.height, decoded.format, decoded.boxes)


def decode_five_file(path: str | bytes, limits: DecodeLimits) -> FiveCrops:
    return decode_five_bytes(read_limited(path, limits.max_filesize), limits, path)


def five_crops(path: str, limits: DecodeLimits) -> np.ndarray:
    """(5, 224, 224, 3) uint8: the per-file decoder :func:`~codescan.train.embed.embed_files` takes."""
    return decode_five_file(path, limits).crops
