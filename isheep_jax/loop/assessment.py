"""Selection of rated pairs: the paper's absolute threshold, and top fraction / top-k by expected score.

The ratings come from the judge (`evals.rating`): an integer score parsed from its text, or
in logits mode the expected score over its distribution. An uncalibrated judge may give
every pair a high score (or every pair a middling one), so an absolute threshold either
keeps everything or nothing; ranking by the expected score and keeping the best fraction
(or the best k) selects whatever the judge's scale. Both apply when both are configured,
and every dropped pair says why.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Literal

from isheep_jax.core import choices
from isheep_jax.evals.rating import UNPARSEABLE, ScoreResult

# Score-filter drop reasons: "<failure>_<kind>", "low_<kind>", and the ranking's.
LOW_QUALITY = "low_quality"
LOW_FOLLOWING = "low_following"
UNPARSEABLE_QUALITY = "unparseable_quality"
UNPARSEABLE_FOLLOWING = "unparseable_following"
OUT_OF_RANGE_QUALITY = "out_of_range_quality"
OUT_OF_RANGE_FOLLOWING = "out_of_range_following"
BELOW_TOP_FRACTION = "below_top_fraction"
BELOW_TOP_K = "below_top_k"

# How the two criteria combine into one ranking score.
RankBy = Literal["mean", "min", "quality", "following"]


def score_filter(
    quality: ScoreResult | float | None,
    following: ScoreResult | float | None,
    threshold: float = 8,
    require_both: bool = True,
) -> str | None:
    """Returns why a rated pair should be dropped, or None to keep it.

    A score passes when it is strictly greater than `threshold` (8 keeps 9 and 10). With
    `require_both` both must pass and the first failure is reported (quality checked
    first); otherwise one passing score is enough, and the quality failure is reported
    when neither passes. A plain number is taken as a score (an expected score in logits
    mode), None as unparseable.

    Args:
      quality: the quality rating.
      following: the following rating.
      threshold: scores above this pass.
      require_both: whether both scores must pass.

    Returns:
      None to keep the pair, else "low_<kind>", "unparseable_<kind>" or
      "out_of_range_<kind>".
    """
    failures = [_failure(quality, "quality", threshold), _failure(following, "following", threshold)]
    if require_both:
        return failures[0] or failures[1]
    return None if None in failures else failures[0]


def _failure(result: ScoreResult | float | None, kind: str, threshold: float) -> str | None:
    if result is None:
        return f"{UNPARSEABLE}_{kind}"
    if isinstance(result, ScoreResult):
        if result.reason is not None or result.score is None:
            return f"{result.reason or UNPARSEABLE}_{kind}"
        result = result.score
    return None if result > threshold else f"low_{kind}"


@dataclasses.dataclass(frozen=True)
class Selection:
    """Which rated pairs are kept.

    Attributes:
      threshold: keep pairs whose scores are strictly above this (the paper: 8, on the
        parsed score; in logits mode on the expected score); 0 disables it.
      require_both: the threshold applies to both criteria (else one passing is enough).
      top_fraction: then keep the best ceil(top_fraction * n) of the n rated pairs (1 = all).
      top_k: and at most the best k (0 = no limit).
      rank_by: the ranking score: the 'mean' or 'min' of the two criteria, or one of them.

    Raises:
      ValueError: top_fraction outside (0, 1], top_k < 0, or an unknown rank_by.
    """

    threshold: float = 8
    require_both: bool = True
    top_fraction: float = 1.0
    top_k: int = 0
    rank_by: RankBy = "mean"

    def __post_init__(self):
        """Checks the fraction, k and the ranking choice."""
        if not 0 < self.top_fraction <= 1:
            raise ValueError(f"top_fraction must be in (0, 1], got {self.top_fraction}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        choices.check("Selection", "rank_by", self.rank_by, RankBy)


def rank_score(quality: float, following: float, rank_by: RankBy) -> float:
    """The one number pairs are ranked by.

    Args:
      quality: the quality score.
      following: the following score.
      rank_by: how they combine.

    Returns:
      Their mean, their minimum, or one of them.
    """
    return {
        "mean": (quality + following) / 2,
        "min": min(quality, following),
        "quality": quality,
        "following": following,
    }[rank_by]


def select(
    quality: Sequence[ScoreResult | float | None],
    following: Sequence[ScoreResult | float | None],
    ids: Sequence[str],
    sel: Selection,
) -> list[str | None]:
    """Drop reasons (None = keep) of n rated pairs, in order.

    First the threshold (`score_filter`); then the ranking by `rank_score` of the pairs with
    valid scores: a pair outside the best ceil(top_fraction * n) of them (n = all rated
    pairs) is dropped as 'below_top_fraction'; of the pairs still kept, those after the
    best top_k as 'below_top_k'. A pair keeps the first reason it got. Ties are broken by
    id, so the cut never depends on the pairs' order.

    Args:
      quality: per pair, the quality rating (ScoreResult, number or None).
      following: per pair, the following rating.
      ids: per pair, its unique id (the tie-break).
      sel: the selection settings.

    Returns:
      One reason or None per pair.

    Raises:
      ValueError: the three sequences differ in length.
    """
    if not len(quality) == len(following) == len(ids):
        raise ValueError(f"{len(quality)} quality, {len(following)} following scores for {len(ids)} ids")
    reasons = [
        score_filter(q, f, sel.threshold, sel.require_both) if sel.threshold > 0 else _invalid(q, f)
        for q, f in zip(quality, following)
    ]
    valid = [n for n, (q, f) in enumerate(zip(quality, following)) if _invalid(q, f) is None]
    ranked = sorted(
        valid, key=lambda n: (-rank_score(_value(quality[n]), _value(following[n]), sel.rank_by), ids[n])
    )
    cut = math.ceil(sel.top_fraction * len(quality) - 1e-9)
    for place, n in enumerate(ranked):
        if reasons[n] is None and place >= cut:
            reasons[n] = BELOW_TOP_FRACTION
    if sel.top_k:
        for n in [n for n in ranked if reasons[n] is None][sel.top_k :]:
            reasons[n] = BELOW_TOP_K
    return reasons


def _value(result: ScoreResult | float) -> float:
    return float(result.score if isinstance(result, ScoreResult) else result)


def _invalid(quality, following) -> str | None:
    """The parse failure of either rating (quality first), or None when both have a score."""
    for result, kind in ((quality, "quality"), (following, "following")):
        if result is None or (isinstance(result, ScoreResult) and result.score is None):
            return _failure(result, kind, 0)
    return None
