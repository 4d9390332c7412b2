"""Two evaluations of the same prompts, compared: the paired differences that say better / no change / worse.

Reads what `evals.runner.evaluate` leaves in two eval folders (EVAL/ifeval_results.jsonl
per prompt, eval.json's held-out `per_pair`) and compares the new model with the base one
on the same items (`evals.stats`): IFEval prompt- and instruction-level accuracy, strict
and loose (paired bootstrap interval, exact McNemar), and held-out loss (paired bootstrap,
sign test). A metric is only compared where both folders measured it on the same items.
"""

from __future__ import annotations

import logging
from typing import Any

from isheep_jax.core import io_utils
from isheep_jax.evals import stats
from isheep_jax.evals.runner import IFEVAL_RESULTS

log = logging.getLogger(__name__)

# Metrics in the order they are shown, with whether a fraction (shown in percentage points).
METRICS: tuple[tuple[str, bool], ...] = (
    ("ifeval_prompt_strict", True),
    ("ifeval_prompt_loose", True),
    ("ifeval_instruction_strict", True),
    ("ifeval_instruction_loose", True),
    ("heldout_loss", False),
)


def compare_evals(base_dir, new_dir, seed: int = 0) -> dict[str, dict[str, Any]]:
    """Paired comparisons of the new model's evaluation against the base model's.

    Args:
      base_dir: the base (or previous) model's eval folder.
      new_dir: the new model's eval folder.
      seed: the bootstrap's seed.

    Returns:
      metric -> `stats.Comparison.to_dict()`, for each metric of `METRICS` that both
      folders measured on the same items (a mismatch, e.g. another prompt subset, is logged
      and the metric left out).
    """
    base, new = io_utils.absolute(base_dir), io_utils.absolute(new_dir)
    out: dict[str, dict[str, Any]] = {}
    if io_utils.exists(base / IFEVAL_RESULTS) and io_utils.exists(new / IFEVAL_RESULTS):
        try:
            for name, c in stats.compare_ifeval(
                io_utils.read_jsonl(base / IFEVAL_RESULTS),
                io_utils.read_jsonl(new / IFEVAL_RESULTS),
                seed=seed,
            ).items():
                out[name] = c.to_dict()
        except ValueError as e:
            log.warning("IFEval of %s and %s not compared: %s", base, new, e)
    losses = [_per_pair(d) for d in (base, new)]
    if all(losses):
        try:
            out["heldout_loss"] = stats.compare_heldout(losses[0], losses[1], seed=seed).to_dict()
        except ValueError as e:
            log.warning("held-out loss of %s and %s not compared: %s", base, new, e)
    return {name: out[name] for name, _ in METRICS if name in out}


def _per_pair(eval_dir) -> list[dict] | None:
    path = eval_dir / "eval.json"
    if not io_utils.exists(path):
        return None
    return (io_utils.read_json(path).get("heldout_loss") or {}).get("per_pair")


def format_comparisons(comparisons: dict[str, dict[str, Any]]) -> list[str]:
    """One line per metric: the verdict first, then the difference with its interval and p.

    Args:
      comparisons: `compare_evals`' result.

    Returns:
      E.g. '  ifeval_prompt_strict: no detectable change, +3.1 [-1.2, +7.5] pts, McNemar p=0.21 (b=4, c=9)'.
    """
    percent = dict(METRICS)
    lines = []
    for name, d in comparisons.items():
        # to_dict wrote NaN as None (JSON has no NaN); the formatter takes floats.
        fields = {k: float("nan") if v is None else v for k, v in d.items()}
        c = stats.Comparison(**{**fields, "discordant": tuple(d["discordant"])})
        text = stats.format_comparison(c, percent[name])
        lines.append(f"  {name}: {c.verdict}, {text.rsplit(':', 1)[0]}")
    return lines
