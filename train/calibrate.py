"""Operating points at a target false-positive rate, with exact intervals: the statistics of `codescan calibrate`.

Pure functions on numpy arrays; the command (:mod:`codescan.cli.calibrate`) scores the images.

**Rule.** A head's threshold is the *smallest* threshold whose false-positive rate on the real
images is at most the target, fake meaning score strictly above the threshold (the scanner's one
verdict rule, :func:`codescan.core.records.is_fake`). With ``n`` reals, at most
``k = floor(target · n)`` of them may score above it, so the threshold is the ``(n − k)``-th
smallest real score: every real tied with it is judged real, and any lower threshold would put
``k + 1`` reals above it. A threshold cannot split tied scores, so when reals tie at the cut the
measured FPR falls below ``k / n`` (reported as ``ties_at_threshold`` and in a warning).
The fakes play no part in the choice.

**Intervals.** Clopper–Pearson: exact (conservative) 95% intervals for a binomial rate, from
beta quantiles. scipy supplies them; it is imported only when an interval is computed, since
scanning never needs it (it comes with the train extra, via scikit-learn).

**Bias.** The FPR is measured on the very reals that chose the threshold, so it is optimistic:
the threshold sits exactly where ``k`` reals remain above it, while on fresh reals from the same
source it passes on average ``(k + 1) / (n + 1)`` of them. For continuous scores the interval
still covers the chosen threshold's true FPR at least 95% of the time (the true rate is
Beta(k+1, n−k), under which the upper bound is the 97.5% quantile; tests/test_calibrate.py
measures the coverage). The TPR is measured on fakes that did not choose the threshold, so it
is fair for fakes like these.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from codescan.core.records import is_fake as verdict_is_fake

CONFIDENCE = 0.95
REALS_PER_FALSE_POSITIVE = 10  # fewer than 10 / target reals: under ~10 false positives decide the threshold
BIAS_NOTE = (
    "FPR is measured on the same real images that chose the threshold: it is optimistic (biased low); "
    "measure on other photos with `codescan eval --data HELD_OUT --weights NAME`. "
    "TPR comes from fakes that took no part in the choice."
)


NON_FINITE = "scores must be finite: an image scored NaN or infinity (a numeric overflow in the engine or the head)"


class CalibrationError(ValueError):
    """The scores cannot give an operating point (no real images, a target outside (0, 1))."""


@dataclass(frozen=True)
class Rate:
    """``count`` of ``n`` images judged fake, with an exact interval for the true rate."""

    count: int
    n: int
    rate: float
    ci95: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"rate": self.rate, "ci95": list(self.ci95), "count": self.count, "n": self.n}


@dataclass(frozen=True)
class OperatingPoint:
    target_fpr: float
    threshold: float
    fpr: Rate  # reals above the threshold
    tpr: Rate | None  # fakes above the threshold; None without fakes (an FPR-only operating point)
    ties_at_threshold: int  # reals whose score equals the threshold (all judged real)
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": self.threshold,
            "target_fpr": self.target_fpr,
            "fpr": self.fpr.to_dict(),
            "tpr": self.tpr.to_dict() if self.tpr is not None else None,
            "n_real": self.fpr.n,
            "n_fake": self.tpr.n if self.tpr is not None else 0,
            "ties_at_threshold": self.ties_at_threshold,
            "warnings": list(self.warnings),
        }


def check_target(target: float) -> float:
    if not (0.0 < target < 1.0) or math.isnan(target):
        raise CalibrationError(f"--fpr must lie strictly between 0 and 1, not {target}")
    return float(target)


def allowed_false_positives(n_real: int, target: float) -> int:
    """floor(target · n), robust to binary fractions: 0.29 · 100 is 28.999…996 in floating point, not 29."""
    return math.floor(round(target * n_real, 9))


def threshold_at_fpr(real_scores: np.ndarray, target: float) -> np.ndarray:
    """The smallest threshold with FPR ≤ target, along the last axis (so many samples at once).

    ``real_scores`` (..., n) → (...,): the (n − k)-th smallest score, k = floor(target · n).
    """
    check_target(target)
    reals = np.sort(np.asarray(real_scores, dtype=np.float64), axis=-1)
    n = reals.shape[-1]
    if n == 0:
        raise CalibrationError("no real images: a false-positive rate needs real photos")
    if not np.all(np.isfinite(reals)):
        raise CalibrationError(NON_FINITE)
    return reals[..., n - allowed_false_positives(n, target) - 1]


def clopper_pearson(count: np.ndarray | int, n: np.ndarray | int, confidence: float = CONFIDENCE) -> tuple[np.ndarray, np.ndarray]:
    """Exact two-sided interval for a binomial rate (elementwise): Beta(α/2; k, n−k+1) to Beta(1−α/2; k+1, n−k).

    The bounds are 0 at k = 0 and 1 at k = n, where the beta quantile is undefined.
    """
    from scipy.stats import beta

    k = np.asarray(count, dtype=np.float64)
    size = np.asarray(n, dtype=np.float64)
    if np.any(size < 1) or np.any(k < 0) or np.any(k > size):
        raise CalibrationError("an interval needs 0 ≤ count ≤ n and n ≥ 1")
    alpha = 1.0 - confidence
    with np.errstate(invalid="ignore"):  # the k = 0 and k = n edges are set below
        low = np.where(k > 0, beta.ppf(alpha / 2, k, size - k + 1), 0.0)
        high = np.where(k < size, beta.ppf(1 - alpha / 2, k + 1, size - k), 1.0)
    return low, high


def _rate(count: int, n: int) -> Rate:
    low, high = clopper_pearson(count, n)
    return Rate(count=count, n=n, rate=count / n, ci95=(float(low), float(high)))


def calibration_warnings(n_real: int, n_fake: int, target: float, false_positives: int, ties: int) -> list[str]:
    """What makes this operating point weaker than it looks; empty when nothing does."""
    out = []
    needed = math.ceil(REALS_PER_FALSE_POSITIVE / target - 1e-9)
    if n_real < needed:
        out.append(
            f"only {n_real} real images: a target FPR of {target:g} needs at least {needed} "
            f"({REALS_PER_FALSE_POSITIVE}/FPR) for the threshold to rest on ~{REALS_PER_FALSE_POSITIVE} false "
            f"positives; here it rests on {allowed_false_positives(n_real, target)}, and the interval is wide"
        )
    if n_fake == 0:
        out.append("no fake images: FPR-only operating point, TPR not measured")
    if ties > 1 and false_positives < allowed_false_positives(n_real, target):
        out.append(
            f"{ties} real images share the threshold score, and a threshold cannot split tied scores: "
            f"the measured FPR ({false_positives}/{n_real}) is below the target"
        )
    return out


def operating_point(real_scores: np.ndarray, fake_scores: np.ndarray, target: float) -> OperatingPoint:
    """Choose the threshold on the reals and measure FPR (and TPR when there are fakes) at it."""
    reals = np.asarray(real_scores, dtype=np.float64).ravel()
    fakes = np.asarray(fake_scores, dtype=np.float64).ravel()
    if not np.all(np.isfinite(fakes)):
        raise CalibrationError(NON_FINITE)
    threshold = float(threshold_at_fpr(reals, target))
    if not math.isfinite(threshold):  # unreachable from finite scores; a threshold is never NaN or infinite
        raise CalibrationError(NON_FINITE)
    fp = int(np.count_nonzero(verdict_is_fake(reals, threshold)))
    ties = int(np.count_nonzero(reals == threshold))
    tpr = _rate(int(np.count_nonzero(verdict_is_fake(fakes, threshold))), len(fakes)) if len(fakes) else None
    return OperatingPoint(
        target_fpr=target,
        threshold=threshold,
        fpr=_rate(fp, len(reals)),
        tpr=tpr,
        ties_at_threshold=ties,
        warnings=calibration_warnings(len(reals), len(fakes), target, fp, ties),
    )
