"""Pairwise judging: template filling, verdict parsing, position swap, win-rate arithmetic."""

import math

import pytest

from isheep_jax.evals.winrate import (
    PairJudgment,
    build_judge_prompt,
    combine,
    judge_all,
    judge_prompts,
    load_judge_template,
    parse_verdict,
    win_rate,
)


def test_shipped_template_fills_all_placeholders():
    template = load_judge_template()
    text = build_judge_prompt("Say hi.", "Hi! It costs $5.", "Hello.", template)
    assert "Say hi." in text and "Hi! It costs $5." in text and "Hello." in text
    assert "$" + "instruction" not in text and "$answer_a" not in text
    assert text.index("Hi! It costs") < text.index("Hello.")


def test_template_errors_name_the_placeholder():
    with pytest.raises(ValueError, match=r"\$answer_b"):
        build_judge_prompt("i", "a", "b", "$instruction $answer_a")
    with pytest.raises(ValueError, match=r"\$extra"):
        build_judge_prompt("i", "a", "b", "$instruction $answer_a $answer_b $extra")


@pytest.mark.parametrize(
    "text, expected",
    [
        ("A", "A"),
        ("B", "B"),
        ("b", "B"),
        ("(a)", "A"),
        ("**A**", "A"),
        ("Output (a)", "A"),
        ("Output (b)", "B"),
        ("Verdict: B", "B"),
        ("[[A]]", "A"),
        ("[[B]]", "B"),
        ("[[C]]", "tie"),
        ("[[tie]]", "tie"),
        ("Both look fine; my final verdict: [[B]]", "B"),
        ("Reply [[A]] or [[B]]... verdict: [[B]]", "B"),
        ("Answer B is better.", "B"),
        ("Output (b) is better because it is shorter.", "B"),
        ("A.\n\nReason: it is correct.", "A"),
        ("I prefer Answer A.", "A"),
        ("The better answer is B.", "B"),
        ("The winner is Output (a).", "A"),
        ("B wins.", "B"),
        ("A good answer should be short; here B is more helpful.", "B"),
        ("B is worse than A.", "A"),
        ("tie", "tie"),
        ("Tie.", "tie"),
        ("It is a tie.", "tie"),
        ("Both answers are equally good.", "tie"),
        ("There is no clear winner.", "tie"),
        ("A is better. B is better.", None),
        ("Hmm, hard to say.", None),
        ("", None),
        ("A good answer would mention the weather.", None),
    ],
)
def test_parse_verdict(text, expected):
    assert parse_verdict(text) == expected


def test_combine_position_swap():
    # model_first: the model was A; model_second: the model was B.
    assert combine("A", "B") == "win"
    assert combine("B", "A") == "loss"
    assert combine("A", "A") == "tie"  # the judge always picked the first slot
    assert combine("B", "B") == "tie"  # ... or always the second
    assert combine("tie", "B") == "tie"
    assert combine("A", "tie") == "tie"
    assert combine(None, "B") is None
    assert combine("A", None, on_unparseable="tie") == "tie"


def test_judge_all_orders_prompts_and_parses_fixed_outputs():
    triples = [("Q1", "model one", "ref one"), ("Q2", "model two", "ref two")]
    seen = []

    def judge(prompts):
        seen.extend(prompts)
        return [
            "[[A]]",
            "[[B]]",  # pair 1: model wins both orders
            "[[A]]",
            "gibberish",
        ]  # pair 2: second verdict unreadable

    results = judge_all(triples, judge, template="$instruction|$answer_a|$answer_b")
    assert seen == [
        "Q1|model one|ref one",
        "Q1|ref one|model one",
        "Q2|model two|ref two",
        "Q2|ref two|model two",
    ]
    assert results[0] == PairJudgment("A", "B", ("[[A]]", "[[B]]"))
    assert results[0].outcome() == "win"
    assert results[1].outcome() is None and results[1].outcome("tie") == "tie"
    with pytest.raises(ValueError, match="3 replies for 4 prompts"):
        judge_all(triples, lambda p: ["A"] * 3, template="$instruction $answer_a $answer_b")
    assert judge_prompts("Q", "m", "r", "$instruction $answer_a $answer_b") == ("Q m r", "Q r m")


def test_win_rate_arithmetic():
    outcomes = ["win"] * 6 + ["tie"] * 2 + ["loss"] * 2 + [None]
    rate = win_rate(outcomes)
    assert (rate.wins, rate.ties, rate.losses, rate.invalid, rate.n) == (6, 2, 2, 1, 10)
    assert rate.win_rate == pytest.approx(0.7)  # (6 + 2/2) / 10
    assert (rate.win_fraction, rate.tie_fraction, rate.loss_fraction) == (0.6, 0.2, 0.2)
    assert rate.ci_low < rate.win_rate < rate.ci_high
    assert 0.0 <= rate.ci_low and rate.ci_high <= 1.0
    assert win_rate(outcomes) == rate  # fixed seed: same interval every time
    assert win_rate(outcomes, seed=1).win_rate == rate.win_rate


def test_win_rate_edges():
    same = win_rate(["win"] * 5)
    assert (same.win_rate, same.ci_low, same.ci_high) == (1.0, 1.0, 1.0)
    empty = win_rate([None, None])
    assert empty.invalid == 2 and empty.n == 0 and math.isnan(empty.win_rate)
    with pytest.raises(ValueError, match="unknown outcome"):
        win_rate(["victory"])
    with pytest.raises(ValueError, match="confidence"):
        win_rate(["win"], confidence=1.5)


def test_wider_interval_for_fewer_pairs():
    small = win_rate(["win", "loss"] * 5)
    large = win_rate(["win", "loss"] * 200)
    assert (small.ci_high - small.ci_low) > (large.ci_high - large.ci_low)
    assert large.ci_low < 0.5 < large.ci_high
