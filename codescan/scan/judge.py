"""Scores and an outcome → the record: the one place a verdict is made.

A plain, picklable value (the heads asked for, their thresholds, whether every head is shown),
so the local scan and the workers of a Ray scan make records with the same code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from codescan.core.records import (
    BoxScore,
    Evidence,
    HeadName,
    HeadVerdict,
    ImageFacts,
    Origin,
    Result,
    error_result,
    is_fake,
    skipped_result,
    status_for,
)
from codescan.decoding.cache import CachedVerdict
from codescan.decoding.decode import Decoded
from codescan.decoding.examine import Examined, Outcome
from codescan.inputs.read import DecodeFailure
from codescan.model.heads import finite, over_boxes

Scores = dict[str, float]  # every head of the bundle, by name
BoxScores = tuple[Scores, ...]  # one per box judged (scan --crops), the centre first


@dataclass(frozen=True)
class Judge:
    judged: tuple[HeadName, ...]  # canonical order; the first sets `status`
    thresholds: dict[HeadName, float]  # for every judged head, overrides applied
    show_all: bool  # --head all: the record lists every head

    def __post_init__(self) -> None:
        for name in self.judged:  # a NaN threshold would make every file "real"; ±inf every file one class
            finite(self.thresholds[name], f"the {name} threshold")

    def record(
        self, display: str, outcome: Outcome, scores: BoxScores | None = None, origin: Origin | None = None
    ) -> Result:
        """The record of one input: `scores` (per box) for a decoded image, else the ones `outcome` carries."""
        if type(outcome) is Examined:
            facts = outcome.decoded if outcome.decoded is not None else outcome.cached  # width, height, format, boxes
            if scores is None:
                assert outcome.cached is not None, "an image record needs its scores"
                scores = outcome.cached.scores
            return self.image(display, outcome.sha256.hex(), outcome.evidence, facts, scores, origin)  # type: ignore[arg-type]
        if isinstance(outcome, DecodeFailure):
            return error_result(display, outcome.code, outcome.message, outcome.sha256, outcome.evidence, origin)
        return skipped_result(display, outcome.code, origin)

    def image(
        self,
        display: str,
        sha256: str,
        evidence: tuple[Evidence, ...] | None,
        facts: ImageFacts | Decoded | CachedVerdict,  # what each has: width, height, format, boxes
        scores: BoxScores,
        origin: Origin | None = None,
    ) -> Result:
        """A judged image's record from its facts (local outcomes and Ray's typed rows alike).

        With several boxes (`--crops 5`) each head's score is its maximum over the boxes, as in
        `eval --crops 5`: one box that looks generated is enough. `crop` is then the box that
        gave the first judged head its score, and `boxes` lists every box with its scores.

        A score that is not a finite number (an fp16 overflow in the engine, a head whose
        arithmetic overflows) is no verdict: the record is the error `non_finite_score`.
        Every box is checked, since max() passes over a NaN that is not first.
        """
        primary = self.judged[0]
        if len(scores) == 1 and len(self.judged) == 1 and not self.show_all:  # the usual record, made thousands of times a second
            score = scores[0][primary]
            if type(score) is float and score - score == 0.0:  # finite (inf - inf and NaN - NaN are NaN)
                threshold = self.thresholds[primary]
                return Result(
                    display, "fake" if is_fake(score, threshold) else "real", score, threshold, primary,
                    facts.width, facts.height, facts.format, facts.boxes[0], None, None, None, sha256, evidence, origin,
                )
        bad = non_finite(self.judged, scores)
        if bad is not None:
            return error_result(display, "non_finite_score", bad, sha256, evidence, origin)
        if len(scores) == 1:
            combined, deciding, boxes = scores[0], 0, None
        else:
            combined, deciding = over_boxes(scores, self.judged)
            boxes = tuple(BoxScore(box, {n: per_box[n] for n in self.judged}) for box, per_box in zip(facts.boxes, scores))
        score, threshold = combined[primary], self.thresholds[primary]
        return Result(
            path=display,
            status=status_for(score, threshold),
            score=score,
            threshold=threshold,
            head=primary,
            width=facts.width,
            height=facts.height,
            format=facts.format,
            crop=facts.boxes[deciding],
            heads={n: self._head(n, combined[n]) for n in self.judged} if self.show_all else None,
            sha256=sha256,
            evidence=evidence,
            origin=origin,
            boxes=boxes,
        )

    def _head(self, name: HeadName, score: float) -> HeadVerdict:
        return HeadVerdict(score=score, status=status_for(score, self.thresholds[name]))


def non_finite(heads: tuple[HeadName, ...], scores: BoxScores) -> str | None:
    """Why these scores can carry no verdict (the first judged head with a NaN or infinite score), or None."""
    for name in heads:
        for per_box in scores:
            value = per_box.get(name)
            if type(value) is float and value - value == 0.0:  # finite (inf - inf and NaN - NaN are NaN): the usual case, first
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                return f"the {name} head's score is {value!r}, not a finite number (a numeric overflow in the engine or the head): no verdict"
    return None
