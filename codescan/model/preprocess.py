"""The reference's CenterCrop(224) without resize, as pure box arithmetic.

torchvision pads a short side with zeros (left/top gets the floor half) and then crops the
long side at ``int(round((size - 224) / 2))``: Python's banker's rounding, so an odd surplus
of 1 starts at 0 and of 3 starts at 2. Reproducing it per axis lets decoders touch only the
pixels inside the box and still match the reference bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from codescan.core import defaults
from codescan.core.records import CropCount

CROP = 224
PREPROCESS_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True, slots=True)
class AxisPlan:
    src_start: int  # first source pixel copied
    length: int  # pixels copied
    dst_start: int  # where they land in the 224 crop (zero padding before/after)


@dataclass(frozen=True, slots=True)
class CropPlan:
    x: AxisPlan
    y: AxisPlan

    @property
    def box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in image pixels: the region actually judged."""
        return (self.x.src_start, self.y.src_start, self.x.src_start + self.x.length, self.y.src_start + self.y.length)


def _axis(size: int, crop: int) -> AxisPlan:
    if size < crop:
        return AxisPlan(src_start=0, length=size, dst_start=(crop - size) // 2)
    return AxisPlan(src_start=int(round((size - crop) / 2.0)), length=crop, dst_start=0)


def plan_crop(width: int, height: int, crop: int = CROP) -> CropPlan:
    return CropPlan(x=_axis(width, crop), y=_axis(height, crop))


def place_crop(region: np.ndarray, plan: CropPlan, crop: int = CROP) -> np.ndarray:
    """Put the already-cropped RGB region (h, w, 3) into a zero (crop, crop, 3) canvas."""
    if region.shape[:2] == (crop, crop):
        return np.ascontiguousarray(region, dtype=np.uint8)
    out = np.zeros((crop, crop, 3), dtype=np.uint8)
    y, x = plan.y, plan.x
    out[y.dst_start : y.dst_start + y.length, x.dst_start : x.dst_start + x.length] = region
    return out


def _edge(size: int, crop: int, at_end: bool) -> AxisPlan:
    """A crop flush with one edge; an axis shorter than the crop is placed as the centre crop places it."""
    if size < crop:
        return plan_crop(size, size, crop).x
    return AxisPlan(src_start=size - crop if at_end else 0, length=crop, dst_start=0)


def plan_crops(width: int, height: int, count: CropCount = defaults.CROPS, crop: int = CROP) -> tuple[CropPlan, ...]:
    """The boxes judged: the centre first (the reference's crop), then with 5 the corners
    top-left, top-right, bottom-left, bottom-right, each cut like the centre crop (no resize; an
    axis shorter than 224 is taken whole and zero-padded), so a small image's crops coincide."""
    centre = plan_crop(width, height, crop)
    if count == 1:
        return (centre,)
    corners = [CropPlan(x=_edge(width, crop, right), y=_edge(height, crop, bottom)) for bottom in (False, True) for right in (False, True)]
    return (centre, *corners)
