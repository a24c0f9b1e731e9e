"""The four views of the CoDE recipe, cut from a decoded region with an explicit RNG.

- ``clean``: the scanner's centre crop (zero-padded when smaller), untouched: what `scan` judges.
- ``augmented``: the same crop after 0–2 random augmentations.
- ``global``: RandomResizedCrop to 224 over 40–100% of the region (small images are upsampled,
  not padded), then 0–2 augmentations.
- ``local``: the same over 5–40% of the region.

Every random choice comes from the ``numpy.random.Generator`` passed in, which the loop derives
from (seed, epoch, step, slot): a view is a pure function of those numbers, so a resumed run
sees exactly the views an uninterrupted run would have.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

from codescan.model.preprocess import CROP, place_crop, plan_crop

ViewKind = Literal["clean", "augmented", "global", "local"]
Range = tuple[float, float]


@dataclass(frozen=True)
class AugmentConfig:
    global_scale: Range = (0.4, 1.0)  # fraction of the region's area
    local_scale: Range = (0.05, 0.4)
    ratio: Range = (3 / 4, 4 / 3)  # aspect ratio of the random crops, as torchvision's default
    max_ops: int = 2  # augmentations per view: uniform in 0..max_ops, distinct
    jpeg_quality: tuple[int, int] = (40, 100)
    blur_radius: Range = (0.1, 2.0)
    resize_factor: Range = (0.5, 1.5)  # resample to factor×224 and back: resampling traces
    crop_fraction: Range = (0.5, 0.9)  # side of a random crop scaled back to 224
    rotation_degrees: Range = (90.0, 270.0)  # as the reference: far from upright
    noise_sigma: Range = (2.0, 10.0)  # Gaussian noise, in 8-bit levels
    jitter: Range = (0.5, 1.5)  # brightness, contrast, saturation factors

    @classmethod
    def from_dict(cls, d: dict) -> AugmentConfig:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


Op = Callable[[Image.Image, np.random.Generator, AugmentConfig], Image.Image]


def _uniform(rng: np.random.Generator, r: Range) -> float:
    return float(rng.uniform(r[0], r[1]))


def _jpeg(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=int(rng.integers(c.jpeg_quality[0], c.jpeg_quality[1] + 1)))
    buf.seek(0)
    with Image.open(buf) as out:
        return out.convert("RGB")


def _blur(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    return im.filter(ImageFilter.GaussianBlur(_uniform(rng, c.blur_radius)))


def _resize(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    side = max(8, round(CROP * _uniform(rng, c.resize_factor)))
    return im.resize((side, side), Image.BICUBIC).resize((CROP, CROP), Image.BICUBIC)


def _crop(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    side = max(8, round(CROP * _uniform(rng, c.crop_fraction)))
    left, top = (int(v) for v in rng.integers(0, CROP - side + 1, size=2))
    return im.resize((CROP, CROP), Image.BICUBIC, box=(left, top, left + side, top + side))


def _rotate(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    return im.rotate(_uniform(rng, c.rotation_degrees), resample=Image.BILINEAR)


def _noise(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    x = np.asarray(im, dtype=np.float32)  # (224, 224, 3)
    x = x + rng.normal(0.0, _uniform(rng, c.noise_sigma), size=x.shape).astype(np.float32)
    return Image.fromarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _jitter(im: Image.Image, rng: np.random.Generator, c: AugmentConfig) -> Image.Image:
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        im = enhance(im).enhance(_uniform(rng, c.jitter))
    return im


OPS: tuple[Op, ...] = (_jpeg, _blur, _resize, _crop, _rotate, _noise, _jitter)


def augment(im: Image.Image, rng: np.random.Generator, config: AugmentConfig) -> Image.Image:
    """0..max_ops distinct augmentations in a random order."""
    count = int(rng.integers(0, config.max_ops + 1))
    for i in rng.permutation(len(OPS))[:count]:
        im = OPS[int(i)](im, rng, config)
    return im


def centre_crop(region: np.ndarray) -> np.ndarray:
    """(h, w, 3) -> (224, 224, 3): the scanner's crop of the image this region was cut from."""
    plan = plan_crop(region.shape[1], region.shape[0], CROP)
    left, top, right, bottom = plan.box
    return place_crop(region[top:bottom, left:right], plan, CROP)


def random_resized_crop(region: np.ndarray, scale: Range, ratio: Range, rng: np.random.Generator) -> Image.Image:
    """torchvision's RandomResizedCrop sampling (10 tries, then a centre crop), bicubic to 224."""
    height, width = region.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    box = None
    for _ in range(10):
        target = area * _uniform(rng, scale)
        aspect = math.exp(_uniform(rng, log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            box = (left, top, left + w, top + h)
            break
    if box is None:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, round(width / ratio[0])
        elif in_ratio > ratio[1]:
            w, h = round(height * ratio[1]), height
        else:
            w, h = width, height
        left, top = (width - w) // 2, (height - h) // 2
        box = (left, top, left + w, top + h)
    return Image.fromarray(region).resize((CROP, CROP), Image.BICUBIC, box=box)


def make_view(region: np.ndarray, kind: ViewKind, rng: np.random.Generator, config: AugmentConfig) -> np.ndarray:
    """(h, w, 3) uint8 region -> (224, 224, 3) uint8 view."""
    if kind == "clean":
        return centre_crop(region)
    if kind == "augmented":
        im = Image.fromarray(centre_crop(region))
    else:
        scale = config.global_scale if kind == "global" else config.local_scale
        im = random_resized_crop(region, scale, config.ratio, rng)
    return np.asarray(augment(im, rng, config), dtype=np.uint8)
