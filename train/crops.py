"""Five 224×224 crops per image (centre + four corners) for `codescan eval --crops 5`.

The reference judges only the central 224×224 pixels, so on a large photo most of the image is
never seen. Five crops see the corners too; the score is the maximum over crops, so one
crop that looks generated is enough. Each crop is cut exactly like the centre crop, with no
resize: along an axis shorter than 224 every crop takes the whole axis, zero-padded the way
the centre crop is, so a small image's five crops coincide where they cannot differ.

Decoding goes through :mod:`codescan.decode`'s safety (size limit before reading, format
allow-list, pixel limit from the header before any pixel is decoded, typed errors), and
crop 0 equals ``decode_file(...).crop`` bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codescan.decode import DecodeLimits, decode_boxes, read_limited
from codescan.preprocess import CROP, AxisPlan, CropPlan, place_crop, plan_crop

N_CROPS = 5


@dataclass(frozen=True, slots=True)
class FiveCrops:
    crops: np.ndarray  # (5, 224, 224, 3) uint8: centre, top-left, top-right, bottom-left, bottom-right
    width: int
    height: int
    format: str
    boxes: tuple[tuple[int, int, int, int], ...]  # (left, top, right, bottom) per crop, in image pixels


def _edge(size: int, crop: int, at_end: bool) -> AxisPlan:
    """A crop flush with one edge; an axis shorter than the crop is placed as the centre crop places it."""
    if size < crop:
        return plan_crop(size, size, crop).x
    return AxisPlan(src_start=size - crop if at_end else 0, length=crop, dst_start=0)


def plan_five(width: int, height: int, crop: int = CROP) -> tuple[CropPlan, ...]:
    """Centre first (the scanner's crop), then top-left, top-right, bottom-left, bottom-right."""
    corners = [
        CropPlan(x=_edge(width, crop, right), y=_edge(height, crop, bottom))
        for bottom in (False, True)
        for right in (False, True)
    ]
    return (plan_crop(width, height, crop), *corners)


def decode_five_bytes(data: bytes, limits: DecodeLimits, name: str | bytes = "") -> FiveCrops:
    """Decode the first frame once and cut the five crops; raise DecodeFailure on any problem."""
    decoded = decode_boxes(data, limits, lambda w, h: [p.box for p in plan_five(w, h, CROP)], name)
    plans = plan_five(decoded.width, decoded.height, CROP)
    crops = np.stack([place_crop(r, p, CROP) for r, p in zip(decoded.regions, plans)])
    return FiveCrops(crops, decoded.width, decoded.height, decoded.format, tuple(p.box for p in plans))


def decode_five_file(path: str | bytes, limits: DecodeLimits) -> FiveCrops:
    return decode_five_bytes(read_limited(path, limits.max_filesize), limits, path)


def five_crops(path: str, limits: DecodeLimits) -> np.ndarray:
    """(5, 224, 224, 3) uint8: the per-file decoder :func:`~codescan.train.embed.embed_files` takes."""
    return decode_five_file(path, limits).crops
