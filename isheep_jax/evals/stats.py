"""Paired comparisons of two models on the same items, and ranking quality of a judge.

After an iteration the new model and the base (reference) model are evaluated on the same
prompts, so every item gives a *pair* of results. Comparing the pairs (not the two overall
numbers) removes the item-to-item variation that both models share, which is most of it.

A comparison reports:
- a paired bootstrap percentile interval of `new - base` (the same resampled items for both
  models; IFEval instructions resampled by prompt, held-out pairs weighted by their tokens);
- an exact test: McNemar for pass/fail items, the sign test for continuous values;
- a verdict, "better" / "worse" only when the interval excludes 0 *and* the test rejects.

For a judge, `roc_auc` (unpaired good vs bad scores) and `pairwise_accuracy` (paired) say how
often it ranks the good answer above the bad one, ties counting half.

Pure numpy + stdlib: usable from reports and tests without JAX.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

Verdict = Literal["better", "no detectable change", "worse"]
TestName = Literal["mcnemar", "sign"]

# One bootstrap chunk holds at most this many resampled indices (int64: 32 MiB), so memory
# stays bounded for large n while the resamples of a chunk are still computed at once.
_CHUNK_ELEMENTS = 1 << 22


@dataclasses.dataclass(frozen=True)
class Comparison:
    """The new model against the base model on one metric, over paired items.

    Attributes:
      metric: the metric's name, e.g. "ifeval_prompt_strict", "heldout_loss".
      base: the metric on the base (reference) model.
      new: the metric on the new model.
      diff: new - base.
      ci_low: lower end of the paired bootstrap interval of `diff`.
      ci_high: upper end of that interval.
      confidence: the interval's confidence level, e.g. 0.95.
      p_value: two-sided exact p-value (McNemar for pass/fail, sign test for values).
      test: which test gave `p_value`.
      n: number of paired items (prompts, instructions, pairs).
      discordant: for "mcnemar" (base right & new wrong, base wrong & new right); for "sign"
        (items where new is worse, items where new is better); ties are in neither.
      higher_is_better: whether a larger metric is an improvement.
      verdict: "better", "no detectable change" or "worse" (see `decide`).
    """

    metric: str
    base: float
    new: float
    diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_value: float
    test: TestName
    n: int
    discordant: tuple[int, int]
    higher_is_better: bool
    verdict: Verdict

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the fields; non-finite floats (NaN, inf) become None.

        Returns:
          {field: value}, `discordant` as a 2-element list.
        """
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, float) and not math.isfinite(value):
                # JSON has no NaN/inf; None keeps the file readable by strict parsers.
                value = None
            elif isinstance(value, tuple):
                value = [int(v) for v in value]
            out[f.name] = value
        return out


def _as_1d(values: Any, name: str, dtype: type = np.float64) -> np.ndarray:
    """`values` as a 1-D array of `dtype`; ValueError if it is not 1-D."""
    arr = np.asarray(values, dtype=dtype)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def _paired(base: Any, new: Any, dtype: type = np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Checks and converts a pair of per-item arrays: 1-D, same non-zero length, finite."""
    b, w = _as_1d(base, "base", dtype), _as_1d(new, "new", dtype)
    if b.shape != w.shape:
        raise ValueError(f"base and new differ in length: {b.shape[0]} vs {w.shape[0]}")
    if b.shape[0] == 0:
        raise ValueError("no items to compare (base and new are empty)")
    if dtype is np.float64 and not (np.isfinite(b).all() and np.isfinite(w).all()):
        raise ValueError("base and new must be finite (a NaN or inf item has no defined difference)")
    return b, w


def _as_bool(values: Any, name: str) -> np.ndarray:
    """Per-item pass/fail as a 1-D bool array; ValueError for values other than 0/1/True/False."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        # A float score passed here by mistake would otherwise be silently thresholded.
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must hold pass/fail values (bool or 0/1)")
        arr = arr.astype(np.bool_)
    return arr


def _check_bootstrap_args(num_resamples: int, confidence: float) -> None:
    if int(num_resamples) != num_resamples or num_resamples < 1:
        raise ValueError(f"num_resamples must be a positive integer, got {num_resamples!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _cluster_codes(clusters: Any, n: int) -> np.ndarray:
    """Group ids → dense codes 0..K-1 in order of first appearance, shape [n].

    A dict (not `np.unique`) so that any hashable ids work, mixed types included, and the
    code order is the order the clusters first appear in.
    """
    ids = clusters.tolist() if isinstance(clusters, np.ndarray) else list(clusters)
    if isinstance(clusters, np.ndarray) and clusters.ndim != 1:
        raise ValueError(f"clusters must be 1-D, got shape {clusters.shape}")
    if len(ids) != n:
        raise ValueError(f"clusters has {len(ids)} entries for {n} items")
    seen: dict[Hashable, int] = {}
    return np.asarray([seen.setdefault(c, len(seen)) for c in ids], dtype=np.int64)


def _bootstrap_ratio(
    numer: np.ndarray, denom: np.ndarray, *, num_resamples: int, confidence: float, seed: int
) -> tuple[float, float]:
    """Percentile interval of sum(numer[idx]) / sum(denom[idx]) over resampled units.

    Every statistic here is a ratio of sums over resampled units (items, clusters, pairs):
    a mean difference is sum(d)/count, clustered accuracy is sum over items in the drawn
    clusters / their item count, token-weighted loss is sum(loss)/sum(tokens). So one routine
    serves all of them.

    Each resample draws `len(numer)` units with replacement:
    `rng.integers(0, len(numer), size=(rows, len(numer)))` per chunk of `rows` resamples, with
    `rng = np.random.default_rng(seed)`, chunks in order.

    Args:
      numer: per-unit numerator, float [K].
      denom: per-unit denominator, positive float [K].
      num_resamples: number of resamples.
      confidence: interval level in (0, 1).
      seed: the generator's seed.

    Returns:
      (low, high), the (1-confidence)/2 and (1+confidence)/2 quantiles of the resampled ratios.
    """
    k = numer.shape[0]
    rng = np.random.default_rng(seed)
    rows = max(1, _CHUNK_ELEMENTS // k)
    stats = np.empty(num_resamples, dtype=np.float64)
    for start in range(0, num_resamples, rows):
        stop = min(start + rows, num_resamples)
        idx = rng.integers(0, k, size=(stop - start, k))
        stats[start:stop] = numer[idx].sum(axis=1) / denom[idx].sum(axis=1)
    alpha = 1.0 - confidence
    low, high = np.quantile(stats, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def paired_bootstrap(
    base: Any,
    new: Any,
    *,
    clusters: Any = None,
    num_resamples: int = 10000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float, float]:
    """Paired bootstrap of mean(new) - mean(base) over the same items.

    Items are resampled with replacement and the *same* indices are used for both models, so
    the interval reflects only how the models differ per item. With `clusters`, whole clusters
    are resampled (e.g. all instructions of one IFEval prompt together, since they share one
    response) and each resample's difference is sum(new)/count - sum(base)/count over the items
    of the drawn clusters (a ratio of sums: instruction-level accuracy, resampled by prompt).
    Clusters are numbered in order of first appearance; the draws are as in `_bootstrap_ratio`.

    Args:
      base: per-item values of the base model, bool or float [n].
      new: per-item values of the new model, same items in the same order, [n].
      clusters: optional group id per item, any hashable values [n]; None: each item alone.
      num_resamples: number of bootstrap resamples.
      confidence: interval level in (0, 1).
      seed: seed of `numpy.random.default_rng`; the same seed gives the same interval.

    Returns:
      (diff, low, high): diff = mean(new) - mean(base) over all items, and the percentile
      interval of the resampled differences.

    Raises:
      ValueError: the arrays are not 1-D, differ in length, are empty or hold NaN/inf; bad
        `clusters`, `num_resamples` or `confidence`.
    """
    b, w = _paired(base, new)
    _check_bootstrap_args(num_resamples, confidence)
    n = b.shape[0]
    diff = float(w.mean() - b.mean())
    # Difference of the ratios = ratio of the summed per-item differences (same denominator).
    d = w - b
    if clusters is None:
        numer, denom = d, np.ones(n)
    else:
        codes = _cluster_codes(clusters, n)
        numer = np.bincount(codes, weights=d)
        denom = np.bincount(codes).astype(np.float64)
    low, high = _bootstrap_ratio(numer, denom, num_resamples=num_resamples, confidence=confidence, seed=seed)
    return diff, low, high


def _binom_half_cdf(k: int, n: int) -> float:
    """P(X <= k) for X ~ Binomial(n, 1/2), exactly (integer arithmetic, one rounding at the end)."""
    # Successive binomial coefficients by the exact recurrence C(n, i+1) = C(n, i) (n-i) / (i+1):
    # one big-int multiply per term instead of a fresh math.comb, so n ~ 20000 stays fast.
    term, total = 1, 1
    for i in range(k):
        term = term * (n - i) // (i + 1)
        total += term
    # int / int is correctly rounded in Python even when both exceed the float range.
    return total / (1 << n)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar test on the discordant pairs.

    Under "no difference" each of the b + c discordant pairs is equally likely to go either
    way, so min(b, c) is the lower tail of Binomial(b + c, 1/2).

    Args:
      b: pairs where the base is right and the new model wrong (or any one direction).
      c: pairs in the other direction.

    Returns:
      min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); 1.0 when b + c == 0.

    Raises:
      ValueError: b or c is negative or not an integer.
    """
    for name, v in (("b", b), ("c", c)):
        if int(v) != v or v < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {v!r}")
    b, c = int(b), int(c)
    if b + c == 0:
        return 1.0
    return min(1.0, 2.0 * _binom_half_cdf(min(b, c), b + c))


def sign_test(diffs: Any) -> tuple[float, int, int]:
    """Exact two-sided sign test on paired differences; zero differences are dropped.

    Args:
      diffs: per-item differences, float [n].

    Returns:
      (p, negatives, positives): the p-value (1.0 when every difference is zero) and the
      numbers of negative and positive differences.

    Raises:
      ValueError: `diffs` is not 1-D or holds NaN.
    """
    d = _as_1d(diffs, "diffs")
    if np.isnan(d).any():
        raise ValueError("diffs must not hold NaN")
    negatives, positives = int((d < 0).sum()), int((d > 0).sum())
    return mcnemar_exact(negatives, positives), negatives, positives


def decide(
    ci_low: float, ci_high: float, p_value: float, higher_is_better: bool, alpha: float = 0.05
) -> Verdict:
    """The verdict from an interval of new - base and a p-value.

    Both must agree (the interval excludes 0 and the test rejects at `alpha`), so a verdict
    is not claimed on the bootstrap alone, which can be too narrow for small n.

    Args:
      ci_low: lower end of the interval of new - base.
      ci_high: upper end.
      p_value: the test's p-value.
      higher_is_better: whether new - base > 0 is an improvement.
      alpha: significance level.

    Returns:
      "better" if the interval lies wholly on the good side of 0 and p_value < alpha,
      "worse" if wholly on the bad side and p_value < alpha, else "no detectable change"
      (also when any input is NaN).
    """
    if any(math.isnan(x) for x in (ci_low, ci_high, p_value)) or not p_value < alpha:
        return "no detectable change"
    if ci_low > 0:
        return "better" if higher_is_better else "worse"
    if ci_high < 0:
        return "worse" if higher_is_better else "better"
    return "no detectable change"


def compare_pass_fail(
    metric: str,
    base: Any,
    new: Any,
    *,
    clusters: Any = None,
    confidence: float = 0.95,
    num_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Compares pass rates of two models on the same items; higher is better.

    McNemar's test uses only the discordant items, treating them as independent; with
    `clusters` only the bootstrap interval accounts for items of one cluster moving together,
    which is one reason the verdict needs both (see `decide`).

    Args:
      metric: the metric's name.
      base: per-item pass/fail of the base model, bool [n].
      new: per-item pass/fail of the new model, same items in the same order, bool [n].
      clusters: optional group id per item; the bootstrap resamples whole groups.
      confidence: interval level.
      num_resamples: bootstrap resamples.
      seed: bootstrap seed.

    Returns:
      The comparison, test "mcnemar", discordant (base pass & new fail, base fail & new pass).

    Raises:
      ValueError: as `paired_bootstrap`, or values other than pass/fail.
    """
    b, w = _paired(_as_bool(base, "base"), _as_bool(new, "new"), dtype=np.bool_)
    lost, gained = int((b & ~w).sum()), int((~b & w).sum())
    p = mcnemar_exact(lost, gained)
    diff, low, high = paired_bootstrap(
        b, w, clusters=clusters, num_resamples=num_resamples, confidence=confidence, seed=seed
    )
    return Comparison(
        metric=metric,
        base=float(b.mean()),
        new=float(w.mean()),
        diff=diff,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=p,
        test="mcnemar",
        n=int(b.shape[0]),
        discordant=(lost, gained),
        higher_is_better=True,
        verdict=decide(low, high, p, True),
    )


def compare_values(
    metric: str,
    base: Any,
    new: Any,
    *,
    higher_is_better: bool,
    confidence: float = 0.95,
    num_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Compares per-item values (e.g. per-pair loss) of two models on the same items.

    Args:
      metric: the metric's name.
      base: per-item values of the base model, float [n].
      new: per-item values of the new model, same items in the same order, float [n].
      higher_is_better: whether larger values are better.
      confidence: interval level.
      num_resamples: bootstrap resamples.
      seed: bootstrap seed.

    Returns:
      The comparison: base/new the plain means, diff and interval of the mean difference,
      test "sign", discordant (items where new is worse, items where new is better).

    Raises:
      ValueError: as `paired_bootstrap`.
    """
    b, w = _paired(base, new)
    p, negatives, positives = sign_test(w - b)
    worse, better = (negatives, positives) if higher_is_better else (positives, negatives)
    diff, low, high = paired_bootstrap(b, w, num_resamples=num_resamples, confidence=confidence, seed=seed)
    return Comparison(
        metric=metric,
        base=float(b.mean()),
        new=float(w.mean()),
        diff=diff,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=p,
        test="sign",
        n=int(b.shape[0]),
        discordant=(worse, better),
        higher_is_better=higher_is_better,
        verdict=decide(low, high, p, higher_is_better),
    )


def _describe_keys(keys: Sequence[Any], limit: int = 5) -> str:
    """The first `limit` keys for an error message, with how many more there are."""
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _rows_by_key(rows: Sequence[Mapping[str, Any]], name: str) -> dict[Any, Mapping[str, Any]]:
    """Rows indexed by "key", in order; ValueError for a repeated key or mismatched lists."""
    out: dict[Any, Mapping[str, Any]] = {}
    for row in rows:
        key = row["key"]
        if key in out:
            raise ValueError(f"{name}: key {key!r} appears more than once")
        if len(row["strict"]) != len(row["loose"]):
            raise ValueError(
                f"{name}: key {key!r} has {len(row['strict'])} strict but {len(row['loose'])} loose results"
            )
        out[key] = row
    return out


def compare_ifeval(
    base_rows: Sequence[Mapping[str, Any]], new_rows: Sequence[Mapping[str, Any]], **kw: Any
) -> dict[str, Comparison]:
    """Compares IFEval results of two models on the same prompts, at prompt and instruction level.

    A prompt passes when all its instructions pass (a prompt without instructions passes, as in
    `ifeval.aggregate`). Instruction level treats every instruction as an item; its bootstrap
    resamples whole prompts (one response decides all its instructions), McNemar counts
    instructions.

    Args:
      base_rows: one row per prompt for the base model:
        {"key": JSON scalar, "strict": [bool per instruction], "loose": [bool per instruction]}.
      new_rows: the same for the new model; paired with `base_rows` by "key", in any order.
      **kw: passed to `compare_pass_fail` (confidence, num_resamples, seed).

    Returns:
      {"ifeval_prompt_strict", "ifeval_prompt_loose", "ifeval_instruction_strict",
       "ifeval_instruction_loose"} → Comparison; items in the order of `base_rows`.

    Raises:
      ValueError: the key sets differ (the first missing/extra keys are named), a key repeats,
        a key's instruction count differs between the models, or there are no prompts or no
        instructions.
    """
    base_by_key, new_by_key = _rows_by_key(base_rows, "base_rows"), _rows_by_key(new_rows, "new_rows")
    missing = [k for k in base_by_key if k not in new_by_key]
    extra = [k for k in new_by_key if k not in base_by_key]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing from new_rows: {_describe_keys(missing)}")
        if extra:
            parts.append(f"not in base_rows: {_describe_keys(extra)}")
        raise ValueError("IFEval rows are not the same prompts; " + "; ".join(parts))
    # Instruction counts must agree before anything is flattened, or items would pair wrongly.
    for key, row in base_by_key.items():
        nb, nw = len(row["strict"]), len(new_by_key[key]["strict"])
        if nb != nw:
            raise ValueError(f"key {key!r} has {nb} instructions for the base model but {nw} for the new one")
    if not base_by_key:
        raise ValueError("no IFEval prompts to compare")
    # The prompt's position, not its key, as cluster id: positions are unique and hashable.
    inst_prompt = [i for i, row in enumerate(base_by_key.values()) for _ in row["strict"]]
    if not inst_prompt:
        raise ValueError("IFEval rows hold no instructions")
    prompt_level: dict[str, Comparison] = {}
    instruction_level: dict[str, Comparison] = {}
    for mode in ("strict", "loose"):
        base_lists = [list(row[mode]) for row in base_by_key.values()]
        new_lists = [list(new_by_key[key][mode]) for key in base_by_key]
        name = f"ifeval_prompt_{mode}"
        prompt_level[name] = compare_pass_fail(
            name, [all(b) for b in base_lists], [all(w) for w in new_lists], **kw
        )
        name = f"ifeval_instruction_{mode}"
        instruction_level[name] = compare_pass_fail(
            name,
            [v for b in base_lists for v in b],
            [v for w in new_lists for v in w],
            clusters=inst_prompt,
            **kw,
        )
    return {**prompt_level, **instruction_level}


def _pair_arrays(pairs: Sequence[Mapping[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """(loss_sum float [n], tokens int [n]) of held-out pairs; ValueError for tokens <= 0 or NaN."""
    loss = np.asarray([float(p["loss_sum"]) for p in pairs], dtype=np.float64)
    tokens = np.asarray([int(p["tokens"]) for p in pairs], dtype=np.int64)
    if (tokens <= 0).any():
        raise ValueError(f"{name}: pair {int(np.argmax(tokens <= 0))} has no tokens")
    if not np.isfinite(loss).all():
        raise ValueError(f"{name}: pair {int(np.argmax(~np.isfinite(loss)))} has a non-finite loss_sum")
    return loss, tokens


def compare_heldout(
    base_pairs: Sequence[Mapping[str, Any]],
    new_pairs: Sequence[Mapping[str, Any]],
    *,
    confidence: float = 0.95,
    num_resamples: int = 10000,
    seed: int = 0,
) -> Comparison:
    """Compares held-out loss of two models on the same pairs; lower is better.

    base/new are the token-weighted overall losses sum(loss_sum) / sum(tokens), and diff and
    its interval are of that same quantity: each resample draws pairs (with their tokens) and
    takes sum(new loss_sum - base loss_sum) / sum(tokens) over the drawn pairs (a ratio of
    sums). The sign test and `discordant` use the per-pair mean losses loss_sum / tokens.

    Args:
      base_pairs: per held-out pair of the base model {"loss_sum": float, "tokens": int}.
      new_pairs: the same pairs for the new model, in the same order.
      confidence: interval level.
      num_resamples: bootstrap resamples.
      seed: bootstrap seed.

    Returns:
      The comparison, metric "heldout_loss", test "sign", discordant (pairs where the new
      model's loss is higher, pairs where it is lower).

    Raises:
      ValueError: the lists differ in length or are empty, a pair's token count differs
        between the models (then they are not the same pairs), or a pair has no tokens.
    """
    if len(base_pairs) != len(new_pairs):
        raise ValueError(f"base_pairs and new_pairs differ in length: {len(base_pairs)} vs {len(new_pairs)}")
    if not base_pairs:
        raise ValueError("no held-out pairs to compare")
    _check_bootstrap_args(num_resamples, confidence)
    base_loss, tokens = _pair_arrays(base_pairs, "base_pairs")
    new_loss, new_tokens = _pair_arrays(new_pairs, "new_pairs")
    if (tokens != new_tokens).any():
        i = int(np.argmax(tokens != new_tokens))
        raise ValueError(
            f"pair {i} has {tokens[i]} tokens for the base model but {new_tokens[i]} for the new one: "
            "not the same pairs"
        )
    total = float(tokens.sum())
    base_overall, new_overall = float(base_loss.sum() / total), float(new_loss.sum() / total)
    p, negatives, positives = sign_test(new_loss / tokens - base_loss / tokens)
    low, high = _bootstrap_ratio(
        new_loss - base_loss,
        tokens.astype(np.float64),
        num_resamples=num_resamples,
        confidence=confidence,
        seed=seed,
    )
    return Comparison(
        metric="heldout_loss",
        base=base_overall,
        new=new_overall,
        diff=new_overall - base_overall,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
        p_value=p,
        test="sign",
        n=len(base_pairs),
        # Lower is better: a positive per-pair difference means the new model got worse there.
        discordant=(positives, negatives),
        higher_is_better=False,
        verdict=decide(low, high, p, False),
    )


def roc_auc(positive_scores: Any, negative_scores: Any) -> float:
    """Mann-Whitney AUC: how often a positive (good) item outscores a negative (bad) one.

    Args:
      positive_scores: scores of the positive items, float [P].
      negative_scores: scores of the negative items, float [N].

    Returns:
      P(pos > neg) + 0.5 P(pos == neg) over all P * N pairs; NaN if either side is empty.

    Raises:
      ValueError: a score is NaN or an input is not 1-D.
    """
    pos, neg = _as_1d(positive_scores, "positive_scores"), _as_1d(negative_scores, "negative_scores")
    if np.isnan(pos).any() or np.isnan(neg).any():
        raise ValueError("scores must not be NaN")
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    # Counting through a sorted copy of neg: O((P + N) log N) instead of the P x N comparison matrix.
    neg = np.sort(neg)
    below = np.searchsorted(neg, pos, side="left")
    at_or_below = np.searchsorted(neg, pos, side="right")
    wins = below.sum() + 0.5 * (at_or_below - below).sum()
    return float(wins / (pos.size * neg.size))


def pairwise_accuracy(better_scores: Any, worse_scores: Any) -> float:
    """Fraction of pairs where the better item outscores the worse one; ties count 0.5.

    Args:
      better_scores: score of the better item of each pair, float [n].
      worse_scores: score of the worse item of each pair, float [n].

    Returns:
      mean over i of [better[i] > worse[i]] + 0.5 [better[i] == worse[i]]; NaN when n == 0.

    Raises:
      ValueError: the inputs differ in length, are not 1-D, or hold NaN.
    """
    b, w = _as_1d(better_scores, "better_scores"), _as_1d(worse_scores, "worse_scores")
    if b.shape != w.shape:
        raise ValueError(f"better_scores and worse_scores differ in length: {b.shape[0]} vs {w.shape[0]}")
    if np.isnan(b).any() or np.isnan(w).any():
        raise ValueError("scores must not be NaN")
    if b.size == 0:
        return float("nan")
    return float(((b > w) + 0.5 * (b == w)).mean())


def _format_p(p: float) -> str:
    """p=0.21, p=1, p<0.001: two significant digits, tiny values bounded."""
    if math.isnan(p):
        return "p=nan"
    return "p<0.001" if p < 1e-3 else f"p={p:.2g}"


def format_comparison(c: Comparison, percent: bool) -> str:
    """One short human line for a comparison.

    E.g. "+3.1 [-1.2, +7.5] pts, McNemar p=0.21 (b=4, c=9): no detectable change", or
    "-0.0123 [-0.0201, -0.0040], sign test p<0.001 (worse=3, better=41): better".

    Args:
      c: the comparison.
      percent: True: show the difference of fractions as percentage points (1 decimal);
        False: raw values with 4 decimals.

    Returns:
      The line, without a trailing newline.
    """
    digits, scale, unit = (1, 100.0, " pts") if percent else (4, 1.0, "")
    # + 0.0 turns -0.0 into 0.0, so an exact zero never prints as "-0.0".
    num = lambda x: f"{x * scale + 0.0:+.{digits}f}"
    interval = f"{num(c.diff)} [{num(c.ci_low)}, {num(c.ci_high)}]"
    first, second = c.discordant
    if c.test == "mcnemar":
        test = f"McNemar {_format_p(c.p_value)} (b={first}, c={second})"
    else:
        test = f"sign test {_format_p(c.p_value)} (worse={first}, better={second})"
    return f"{interval}{unit}, {test}: {c.verdict}"
