"""Paired comparisons (bootstrap, McNemar, sign test, verdicts) and judge ranking metrics."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from isheep_jax.evals.stats import (
    Comparison,
    compare_heldout,
    compare_ifeval,
    compare_pass_fail,
    compare_values,
    decide,
    format_comparison,
    mcnemar_exact,
    paired_bootstrap,
    pairwise_accuracy,
    roc_auc,
    sign_test,
)

# ---------------------------------------------------------------- McNemar / sign test


def test_mcnemar_hand_values():
    # P(X <= 1) for X ~ Bin(7, 1/2) is (1 + 7) / 128; two-sided doubles it.
    assert mcnemar_exact(1, 6) == pytest.approx(2 * (1 + 7) / 128)
    assert mcnemar_exact(6, 1) == mcnemar_exact(1, 6)
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 5) == pytest.approx(0.0625)  # 2 / 32
    assert mcnemar_exact(3, 3) == 1.0  # doubled tail > 1 is capped


def test_mcnemar_large_n_matches_log_space_sum():
    b, c = 9800, 10200
    n = b + c
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in range(b + 1)]
    top = max(log_terms)
    log_tail = top + math.log(sum(math.exp(t - top) for t in log_terms)) - n * math.log(2)
    expected = 2 * math.exp(log_tail)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-8)
    # Sanity against the normal approximation with continuity correction (~0.0048).
    z = (abs(b - c) - 1) / math.sqrt(n)
    assert mcnemar_exact(b, c) == pytest.approx(math.erfc(z / math.sqrt(2)), rel=0.05)
    assert mcnemar_exact(10000, 10000) == 1.0


def test_mcnemar_rejects_bad_counts():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)
    with pytest.raises(ValueError):
        mcnemar_exact(1.5, 3)


def test_sign_test_drops_zeros():
    # Non-zero: 1 negative, 4 positive, n = 5: p = 2 (1 + 5) / 32.
    p, neg, pos = sign_test([0.5, -1.0, 2.0, 0.0, 3.0, 1e-3])
    assert (neg, pos) == (1, 4)
    assert p == pytest.approx(12 / 32)
    assert sign_test([0.0, 0.0]) == (1.0, 0, 0)
    assert sign_test([]) == (1.0, 0, 0)


# ---------------------------------------------------------------- paired bootstrap


def test_bootstrap_identical_arrays_give_zero_interval():
    x = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    assert paired_bootstrap(x, x) == (0.0, 0.0, 0.0)
    flags = np.array([True, False, True])
    assert paired_bootstrap(flags, flags, clusters=[0, 0, 1]) == (0.0, 0.0, 0.0)


def test_bootstrap_constant_shift_collapses_interval():
    base = np.array([0.1, 0.5, 2.0, 3.5, -1.0])
    diff, low, high = paired_bootstrap(base, base + 0.25, num_resamples=500)
    assert diff == pytest.approx(0.25, abs=1e-12)
    assert low == pytest.approx(0.25, abs=1e-12)
    assert high == pytest.approx(0.25, abs=1e-12)


def test_bootstrap_is_deterministic_and_seeded():
    rng = np.random.default_rng(1)
    base, new = rng.random(50) < 0.5, rng.random(50) < 0.6
    assert paired_bootstrap(base, new, seed=3) == paired_bootstrap(base, new, seed=3)
    diff, low, high = paired_bootstrap(base, new)
    assert diff == pytest.approx(new.mean() - base.mean())
    assert low <= diff <= high


def test_bootstrap_width_matches_normal_theory_over_several_chunks():
    # n * num_resamples exceeds one chunk, so chunked draws are exercised too.
    rng = np.random.default_rng(7)
    n = 5000
    base = rng.random(n) < 0.5
    new = np.where(rng.random(n) < 0.8, base, rng.random(n) < 0.7)
    diff, low, high = paired_bootstrap(base, new, num_resamples=2000)
    d = new.astype(float) - base.astype(float)
    half_width = 1.959964 * d.std() / math.sqrt(n)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.15)
    assert low < diff < high


def test_clustered_bootstrap_matches_brute_force_loop():
    # Clusters first appear in the order y, x, z: the implementation numbers them so.
    clusters = ["y", "x", "y", "z", "x", "z", "z"]
    base = np.array([1, 0, 1, 1, 0, 0, 1], dtype=float)
    new = np.array([1, 1, 0, 1, 1, 1, 1], dtype=float)
    order = ["y", "x", "z"]
    members = [[i for i, c in enumerate(clusters) if c == name] for name in order]
    num_resamples, seed = 400, 5

    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(order), size=(num_resamples, len(order)))
    stats = []
    for row in draws:
        items = [i for j in row for i in members[j]]
        stats.append(new[items].sum() / len(items) - base[items].sum() / len(items))
    expected = np.quantile(stats, [0.025, 0.975])

    diff, low, high = paired_bootstrap(base, new, clusters=clusters, num_resamples=num_resamples, seed=seed)
    assert diff == pytest.approx(new.mean() - base.mean())
    assert low == pytest.approx(expected[0], abs=1e-12)
    assert high == pytest.approx(expected[1], abs=1e-12)


def test_singleton_clusters_equal_unclustered():
    rng = np.random.default_rng(2)
    base, new = rng.random(30), rng.random(30)
    assert paired_bootstrap(base, new, clusters=np.arange(30), seed=4) == paired_bootstrap(base, new, seed=4)


def test_clustered_bootstrap_with_constant_difference_per_item_collapses():
    # Every item differs by 0.5, so every resample of whole clusters (any sizes) gives 0.5.
    base = np.array([0.0, 0.25, 0.5, 0.0, 0.25])
    diff, low, high = paired_bootstrap(base, base + 0.5, clusters=[0, 0, 0, 1, 2])
    assert (diff, low, high) == pytest.approx((0.5, 0.5, 0.5), abs=1e-12)


def test_bootstrap_rejects_bad_input():
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="empty"):
        paired_bootstrap([], [])
    with pytest.raises(ValueError, match="1-D"):
        paired_bootstrap([[1.0]], [[1.0]])
    with pytest.raises(ValueError, match="clusters"):
        paired_bootstrap([1.0, 2.0], [1.0, 2.0], clusters=[0])
    with pytest.raises(ValueError, match="confidence"):
        paired_bootstrap([1.0], [1.0], confidence=1.0)


# ---------------------------------------------------------------- verdicts


def test_decide_all_directions():
    assert decide(0.01, 0.05, 0.01, higher_is_better=True) == "better"
    assert decide(-0.05, -0.01, 0.01, higher_is_better=True) == "worse"
    assert decide(-0.05, -0.01, 0.01, higher_is_better=False) == "better"
    assert decide(0.01, 0.05, 0.01, higher_is_better=False) == "worse"
    assert decide(-0.01, 0.05, 0.01, higher_is_better=True) == "no detectable change"
    assert decide(0.0, 0.05, 0.01, higher_is_better=True) == "no detectable change"  # touches 0
    assert decide(0.01, 0.05, 0.2, higher_is_better=True) == "no detectable change"  # p too large
    assert decide(0.01, 0.05, 0.05, higher_is_better=True) == "no detectable change"  # p == alpha
    assert decide(0.01, 0.05, 0.07, higher_is_better=True, alpha=0.1) == "better"
    assert decide(float("nan"), 0.05, 0.01, higher_is_better=True) == "no detectable change"
    assert decide(0.01, 0.05, float("nan"), higher_is_better=True) == "no detectable change"


def test_compare_pass_fail_clear_improvement_and_regression():
    up = compare_pass_fail("acc", [False] * 20, [True] * 20)
    assert (up.base, up.new, up.diff, up.ci_low, up.ci_high) == (0.0, 1.0, 1.0, 1.0, 1.0)
    assert up.discordant == (0, 20) and up.n == 20 and up.test == "mcnemar"
    assert up.p_value == pytest.approx(2 / 2**20)
    assert up.verdict == "better" and up.higher_is_better

    down = compare_pass_fail("acc", [1] * 20, [0] * 20)
    assert down.discordant == (20, 0) and down.diff == -1.0 and down.verdict == "worse"

    with pytest.raises(ValueError, match="pass/fail"):
        compare_pass_fail("acc", [0.5, 1.0], [1.0, 1.0])


def test_compare_values_counts_by_direction():
    base, new = [1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 5.0, 3.0]  # diffs +1, 0, +2, -1
    c = compare_values("score", base, new, higher_is_better=True, num_resamples=500)
    assert (c.base, c.new, c.diff) == pytest.approx((2.5, 3.0, 0.5))
    assert c.discordant == (1, 2) and c.test == "sign" and c.n == 4
    assert c.p_value == 1.0  # 2 P(X <= 1), X ~ Bin(3, 1/2) = 2 * 4 / 8, capped at 1
    assert c.verdict == "no detectable change"
    lower = compare_values("loss", base, new, higher_is_better=False, num_resamples=500)
    assert lower.discordant == (2, 1) and not lower.higher_is_better

    worse = compare_values("loss", np.zeros(12), np.ones(12), higher_is_better=False)
    assert worse.verdict == "worse" and worse.discordant == (12, 0)


# ---------------------------------------------------------------- IFEval


def _ifeval_rows():
    base = [
        {"key": "a", "strict": [True, True], "loose": [True, True]},
        {"key": "b", "strict": [True, False], "loose": [True, True]},
        {"key": 3, "strict": [False, False, True], "loose": [False, True, True]},
    ]
    new = [  # another order: rows pair by key
        {"key": 3, "strict": [True, True, True], "loose": [True, True, True]},
        {"key": "a", "strict": [True, False], "loose": [True, True]},
        {"key": "b", "strict": [True, True], "loose": [True, True]},
    ]
    return base, new


def test_compare_ifeval_hand_example():
    base, new = _ifeval_rows()
    out = compare_ifeval(base, new, num_resamples=500)
    assert list(out) == [
        "ifeval_prompt_strict",
        "ifeval_prompt_loose",
        "ifeval_instruction_strict",
        "ifeval_instruction_loose",
    ]

    ps = out["ifeval_prompt_strict"]  # base passes a; new passes b and the key-3 prompt
    assert ps.metric == "ifeval_prompt_strict" and ps.n == 3
    assert (ps.base, ps.new, ps.diff) == pytest.approx((1 / 3, 2 / 3, 1 / 3))
    assert ps.discordant == (1, 2)
    assert ps.p_value == 1.0  # 2 (1 + 3) / 8 capped

    pl = out["ifeval_prompt_loose"]  # base passes a, b; new all three
    assert (pl.base, pl.new, pl.diff) == pytest.approx((2 / 3, 1.0, 1 / 3))
    assert pl.discordant == (0, 1) and pl.p_value == 1.0

    inst = out["ifeval_instruction_strict"]  # base 4 of 7, new 6 of 7
    assert inst.n == 7
    assert (inst.base, inst.new, inst.diff) == pytest.approx((4 / 7, 6 / 7, 2 / 7))
    assert inst.discordant == (1, 3)
    assert inst.p_value == pytest.approx(2 * (1 + 4) / 16)
    assert -1.0 <= inst.ci_low <= inst.diff <= inst.ci_high <= 1.0

    il = out["ifeval_instruction_loose"]  # base 6 of 7, new 7 of 7
    assert (il.base, il.new, il.diff) == pytest.approx((6 / 7, 1.0, 1 / 7))
    assert il.discordant == (0, 1)
    assert all(c.verdict == "no detectable change" for c in out.values())


def test_compare_ifeval_instruction_level_resamples_by_prompt():
    base, new = _ifeval_rows()
    got = compare_ifeval(base, new, num_resamples=300, seed=9)["ifeval_instruction_strict"]
    flat_base = [True, True, True, False, False, False, True]
    flat_new = [True, False, True, True, True, True, True]
    diff, low, high = paired_bootstrap(
        flat_base, flat_new, clusters=[0, 0, 1, 1, 2, 2, 2], num_resamples=300, seed=9
    )
    assert (got.diff, got.ci_low, got.ci_high) == pytest.approx((diff, low, high))


def test_compare_ifeval_key_and_count_mismatch():
    base, new = _ifeval_rows()
    with pytest.raises(ValueError, match=r"missing from new_rows: 'b'.*not in base_rows: 'z'"):
        compare_ifeval(base, [new[0], new[1], {**new[2], "key": "z"}])
    with pytest.raises(ValueError, match="missing from new_rows: 'a'"):
        compare_ifeval(base, [new[0], new[2]])
    with pytest.raises(ValueError, match=r"key 'b' has 2 instructions .* but 1"):
        compare_ifeval(base, [new[0], new[1], {"key": "b", "strict": [True], "loose": [True]}])
    with pytest.raises(ValueError, match="more than once"):
        compare_ifeval(base + [base[0]], new)


# ---------------------------------------------------------------- held-out loss


def _pairs(losses, tokens):
    return [{"loss_sum": loss, "tokens": t} for loss, t in zip(losses, tokens)]


def test_compare_heldout_hand_example():
    tokens = [3, 1, 4]
    base = _pairs([6.0, 4.0, 10.0], tokens)  # per pair 2, 4, 2.5; overall 20 / 8
    new = _pairs([3.0, 5.0, 8.0], tokens)  # per pair 1, 5, 2; overall 16 / 8
    c = compare_heldout(base, new, num_resamples=500)
    assert c.metric == "heldout_loss" and not c.higher_is_better and c.test == "sign"
    assert (c.base, c.new, c.diff) == pytest.approx((2.5, 2.0, -0.5))
    assert c.n == 3
    assert c.discordant == (1, 2)  # pair 1 got worse, pairs 0 and 2 better
    assert c.p_value == 1.0
    # Each resample is a token-weighted ratio of per-pair ratios -1, +1, -0.5: within [-1, 1].
    assert -1.0 <= c.ci_low <= c.diff <= c.ci_high <= 1.0
    assert c.verdict == "no detectable change"


def test_compare_heldout_with_unit_tokens_is_plain_paired_bootstrap():
    rng = np.random.default_rng(3)
    base_loss, new_loss = rng.random(40) * 3, rng.random(40) * 3
    c = compare_heldout(_pairs(base_loss, [1] * 40), _pairs(new_loss, [1] * 40), num_resamples=300, seed=2)
    diff, low, high = paired_bootstrap(base_loss, new_loss, num_resamples=300, seed=2)
    assert (c.diff, c.ci_low, c.ci_high) == pytest.approx((diff, low, high))


def test_compare_heldout_clear_improvement():
    tokens = list(range(1, 31))
    c = compare_heldout(_pairs([2.0 * t for t in tokens], tokens), _pairs([1.5 * t for t in tokens], tokens))
    assert c.diff == pytest.approx(-0.5)
    assert (c.ci_low, c.ci_high) == pytest.approx((-0.5, -0.5))
    assert c.discordant == (0, 30) and c.verdict == "better"


def test_compare_heldout_rejects_different_pairs():
    with pytest.raises(ValueError, match=r"pair 1 has 2 tokens .* but 3.*not the same pairs"):
        compare_heldout(_pairs([1.0, 1.0], [1, 2]), _pairs([1.0, 1.0], [1, 3]))
    with pytest.raises(ValueError, match="length"):
        compare_heldout(_pairs([1.0], [1]), _pairs([1.0, 1.0], [1, 1]))
    with pytest.raises(ValueError, match="no tokens"):
        compare_heldout(_pairs([1.0], [0]), _pairs([1.0], [0]))


# ---------------------------------------------------------------- judge ranking


def test_roc_auc_hand_example_with_ties():
    # Pairs (3,2) (3,1) (2,2) (2,1): 1 + 1 + 0.5 + 1 out of 4.
    assert roc_auc([3, 2], [2, 1]) == pytest.approx(0.875)
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([5], [5, 5]) == 0.5
    assert math.isnan(roc_auc([], [1.0]))
    assert math.isnan(roc_auc([1.0], []))


def test_roc_auc_matches_all_pairs_count():
    rng = np.random.default_rng(0)
    pos, neg = rng.integers(0, 5, 23), rng.integers(0, 5, 17)  # small range: many ties
    expected = np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg])
    assert roc_auc(pos, neg) == pytest.approx(expected)


def test_pairwise_accuracy_with_ties():
    # 3 > 1, 1 == 1 (half), 2 < 3, 5 > 4: 2.5 of 4.
    assert pairwise_accuracy([3, 1, 2, 5], [1, 1, 3, 4]) == pytest.approx(0.625)
    assert math.isnan(pairwise_accuracy([], []))
    with pytest.raises(ValueError, match="length"):
        pairwise_accuracy([1, 2], [1])


# ---------------------------------------------------------------- reporting


def _comparison(**changes):
    c = Comparison(
        metric="ifeval_prompt_strict",
        base=0.40,
        new=0.431,
        diff=0.031,
        ci_low=-0.012,
        ci_high=0.075,
        confidence=0.95,
        p_value=0.21,
        test="mcnemar",
        n=200,
        discordant=(4, 9),
        higher_is_better=True,
        verdict="no detectable change",
    )
    return dataclasses.replace(c, **changes)


def test_format_comparison():
    assert (
        format_comparison(_comparison(), percent=True)
        == "+3.1 [-1.2, +7.5] pts, McNemar p=0.21 (b=4, c=9): no detectable change"
    )
    loss = _comparison(
        metric="heldout_loss",
        diff=-0.01234,
        ci_low=-0.0201,
        ci_high=-0.004,
        p_value=1e-5,
        test="sign",
        discordant=(3, 41),
        higher_is_better=False,
        verdict="better",
    )
    assert (
        format_comparison(loss, percent=False)
        == "-0.0123 [-0.0201, -0.0040], sign test p<0.001 (worse=3, better=41): better"
    )
    zero = _comparison(diff=-0.0, ci_low=0.0, ci_high=0.0, p_value=1.0, discordant=(0, 0))
    assert format_comparison(zero, percent=True).startswith("+0.0 [+0.0, +0.0] pts, McNemar p=1 ")


def test_to_dict_is_json_and_maps_nan_to_none():
    c = compare_pass_fail("acc", [True, False, True], [True, True, True], num_resamples=200)
    d = c.to_dict()
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert d["discordant"] == [0, 1] and d["test"] == "mcnemar" and d["n"] == 3
    assert set(d) == {f.name for f in dataclasses.fields(Comparison)}
    nan = dataclasses.replace(c, p_value=float("nan"), ci_low=float("inf")).to_dict()
    assert nan["p_value"] is None and nan["ci_low"] is None
    json.dumps(nan, allow_nan=False)


def test_comparison_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        _comparison().diff = 1.0
