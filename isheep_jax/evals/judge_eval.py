"""How well a model judges: rating scores on the calibration pairs, and the win-rate judge's position bias.

The loop's self-assessment is only worth what its judge can tell apart. On the calibration
pairs (`evals.calibration`: a good reference answer against a known-worse one for the same
instruction) the judge rates every distinct answer for quality and for following, as the
loop's assessment stage rates pairs; then, per criterion (and their mean, the loop's
default ranking):

- `auc`: the probability that a good answer scores above a degraded one (ties half);
- `pairwise_accuracy`: the same within each pair (good vs its own degraded answer), also
  per degradation;
- `histogram`: the scores (expected scores rounded in logits mode), so a judge that gives
  everything a 10 shows as one bar;
- in logits mode `mode_auc` (the most likely score's AUC: 0.5 when it is always the same)
  and `mean_mass` (how much of the judge's next-token mass went to a score at all); in
  text mode `unparseable` (answers without a score, left out of the figures).
"""

from __future__ import annotations

import collections
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from isheep_jax.evals import calibration, rating, stats
from isheep_jax.evals.rating import AssessMode
from isheep_jax.model.tokenizer import PromptStyle
from isheep_jax.sampling.chunked import stream_in_chunks
from isheep_jax.sampling.generator import SamplingSettings

COMBINED = "mean"  # the criteria's mean: what the loop ranks pairs by by default


def distinct_answers(pairs: Sequence[calibration.CalibrationPair]) -> list[tuple[str, str, str]]:
    """The (instruction, input, answer) triples to rate, each once, in first-seen order.

    Args:
      pairs: the calibration pairs (a reference answer appears in several).

    Returns:
      The distinct triples of every pair's better and worse answer.
    """
    seen: dict[tuple[str, str, str], None] = {}
    for p in pairs:
        seen.setdefault((p.instruction, p.input, p.better))
        seen.setdefault((p.instruction, p.input, p.worse))
    return list(seen)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else round(float(x), 4)


def criterion_metrics(
    pairs: Sequence[calibration.CalibrationPair],
    scores: dict[tuple[str, str, str], float | None],
    modes: dict[tuple[str, str, str], int] | None = None,
) -> dict[str, Any]:
    """AUC, pairwise accuracy (overall and per degradation) and histogram of one criterion.

    Args:
      pairs: the calibration pairs.
      scores: (instruction, input, answer) -> the judge's score (None: no score, text mode).
      modes: the same -> the most likely score (logits mode), or None.

    Returns:
      `auc`, `pairwise_accuracy`, `by_degradation` (degradation -> pairwise accuracy),
      `histogram` (rounded score -> answers), `pairs` (pairs with both scores), and
      `mode_auc` where `modes` is given. NaN figures are None.
    """
    good = {(p.instruction, p.input, p.better) for p in pairs}
    bad = {(p.instruction, p.input, p.worse) for p in pairs} - good
    pos = [scores[k] for k in good if scores[k] is not None]
    neg = [scores[k] for k in bad if scores[k] is not None]
    both = [
        p
        for p in pairs
        if scores[(p.instruction, p.input, p.better)] is not None
        and scores[(p.instruction, p.input, p.worse)] is not None
    ]

    def accuracy(subset) -> float:
        return stats.pairwise_accuracy(
            [scores[(p.instruction, p.input, p.better)] for p in subset],
            [scores[(p.instruction, p.input, p.worse)] for p in subset],
        )

    by_kind = collections.defaultdict(list)
    for p in both:
        by_kind[p.degradation].append(p)
    hist = collections.Counter(int(round(s)) for s in scores.values() if s is not None)
    out = {
        "auc": _finite(stats.roc_auc(pos, neg)),
        "pairwise_accuracy": _finite(accuracy(both)),
        "by_degradation": {k: _finite(accuracy(v)) for k, v in by_kind.items()},
        "histogram": {str(k): hist[k] for k in sorted(hist)},
        "pairs": len(both),
    }
    if modes is not None:
        out["mode_auc"] = _finite(stats.roc_auc([modes[k] for k in good], [modes[k] for k in bad]))
    return out


def rate_calibration(
    gen_fn,
    tokenizer,
    style: PromptStyle,
    chunk_dir,
    pairs: Sequence[calibration.CalibrationPair],
    mode: AssessMode,
    prefill: str,
    settings: SamplingSettings,
    chunk_size: int,
) -> dict[str, Any]:
    """Rates the calibration answers with one judge in one mode and measures it.

    Args:
      gen_fn: returns the judge's `Generator` (called only for chunks not on disk).
      tokenizer: the judge's tokenizer (renders the prompts).
      style: how the judge is prompted.
      chunk_dir: the resumable chunk folder of this mode.
      pairs: the calibration pairs.
      mode: 'logits' or 'text'.
      prefill: the text that opens the judge's answer (`LoopConfig.rating_prefill`).
      settings: the judge's settings (text mode samples with them; logits mode uses the
        batch size).
      chunk_size: prompts per chunk.

    Returns:
      `mode`, `answers` (distinct answers rated), per criterion and for their mean the
      `criterion_metrics`, plus `mean_mass` (logits) or `unparseable` (text) per criterion.
    """
    answers = distinct_answers(pairs)
    prompts = [
        tokenizer.render_prompt(rating.build_rating_prompt(kind, ins, inp, ans), style) + prefill
        for ins, inp, ans in answers
        for kind in rating.KINDS
    ]
    rows = stream_in_chunks(
        chunk_dir,
        prompts,
        chunk_size,
        rating.rate_stream(gen_fn, mode, settings, style != "raw", f"calibration {mode}"),
        f"calibration {mode}",
    )
    result: dict[str, Any] = {"mode": mode, "answers": len(answers)}
    per_kind: dict[str, dict] = {}
    for j, kind in enumerate(rating.KINDS):
        fields = [
            rating.rating_fields(kind, rows[len(rating.KINDS) * n + j], prefill) for n in range(len(answers))
        ]
        scores = {a: f[f"{kind}_score"] for a, f in zip(answers, fields)}
        modes = {a: f[f"{kind}_mode_score"] for a, f in zip(answers, fields)} if mode == "logits" else None
        per_kind[kind] = scores
        result[kind] = criterion_metrics(pairs, scores, modes)
        if mode == "logits":
            result[kind]["mean_mass"] = _finite(float(np.mean([f[f"{kind}_score_mass"] for f in fields])))
        else:
            result[kind]["unparseable"] = sum(s is None for s in scores.values())
    combined = {
        a: None
        if None in (per_kind["quality"][a], per_kind["following"][a])
        else (per_kind["quality"][a] + per_kind["following"][a]) / 2
        for a in answers
    }
    result[COMBINED] = criterion_metrics(pairs, combined)
    return result


def position_bias(verdicts: Sequence[str | None]) -> dict[str, Any]:
    """How often a pairwise judge prefers the answer shown first.

    Every pair is judged in both orders, so an unbiased judge picks A as often as B.

    Args:
      verdicts: every verdict given ('A', 'B', 'tie' or None for unreadable), both orders.

    Returns:
      `first_preferred`: A / (A + B) (None without an A or B verdict), and the counts `A`,
      `B`, `tie`, `unreadable`.
    """
    counts = collections.Counter(v if v in ("A", "B", "tie") else None for v in verdicts)
    ab = counts["A"] + counts["B"]
    return {
        "first_preferred": round(counts["A"] / ab, 4) if ab else None,
        "A": counts["A"],
        "B": counts["B"],
        "tie": counts["tie"],
        "unreadable": counts[None],
    }


def summary_line(calib: dict[str, Any]) -> str:
    """One line: the judge's AUC per criterion in each mode it was measured in.

    Args:
      calib: the `judge_calibration` entry of an eval.json.

    Returns:
      E.g. 'judge AUC (logits): quality 0.71, following 0.64, mean 0.70'.
    """
    parts = []
    for mode, r in calib.get("modes", {}).items():
        figs = ", ".join(
            f"{k} {r[k]['auc']:.2f}" if r[k]["auc"] is not None else f"{k} -"
            for k in (*rating.KINDS, COMBINED)
        )
        parts.append(f"judge AUC ({mode}): {figs}")
    return "; ".join(parts) or "judge AUC: -"
