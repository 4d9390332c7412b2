"""Self-assessment: rating prompts, score parsing of near-miss outputs, the score filter."""

import random

import pytest

from isheep_jax.evals import rating
from isheep_jax.evals.rating import ScoreResult, build_rating_prompt, parse_score
from isheep_jax.loop import assessment as asm
from isheep_jax.loop.assessment import score_filter
from isheep_jax.prompts.templates import PromptTemplateError, load_template

# -- prompts ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["quality", "following"])
def test_shipped_rating_prompts(kind):
    prompt = build_rating_prompt(kind, "Sort the words.", "pear, apple", "apple, pear")
    assert "Task:\nSort the words.\npear, apple\n\nResponse:\napple, pear\n" in prompt
    assert "<score>||<explanation>" in prompt and "1 to 10" in prompt
    # The answer is opened by LoopConfig.rating_prefill ('Rating: '), after the rendered prompt.
    assert prompt.endswith("<score>||<explanation>\n")
    assert prompt == build_rating_prompt(
        kind, "Sort the words.", "pear, apple", "apple, pear", load_template(f"rate_{kind}")
    )


def test_prompts_differ_by_kind_and_keep_dollars_and_braces():
    quality = build_rating_prompt("quality", "Price it in $.", "", "It costs ${price} or $5.")
    following = build_rating_prompt("following", "Price it in $.", "", "It costs ${price} or $5.")
    assert quality != following
    assert "Task:\nPrice it in $.\n\nResponse:\nIt costs ${price} or $5." in quality  # no input line


def test_custom_rating_template(tmp_path):
    path = tmp_path / "r.txt"
    path.write_text("I: $instruction | In: $input | R: $response\n", encoding="utf-8")
    template = load_template("rate_quality", path)
    assert build_rating_prompt("quality", "a", "b", "c", template) == "I: a | In: b | R: c"
    path.write_text("I: $instruction only", encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=r"lacks \$response"):
        load_template("rate_following", path)


def test_bad_kind():
    with pytest.raises(ValueError, match="rating kind"):
        build_rating_prompt("helpfulness", "a", "", "b")


# -- parse_score -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, score, explanation",
    [
        ("8||good", 8, "good"),
        (" 8 || good", 8, "good"),
        ("10||Perfect answer.", 10, "Perfect answer."),
        ("Score: 8/10 || clear and correct", 8, "clear and correct"),
        ("**9**||Concise.", 9, "Concise."),
        ("**9** || **Concise.**", 9, "Concise."),
        ("7.0||fine", 7, "fine"),
        ("8.6||fine", 9, "fine"),  # rounded, as in the reference pipeline
        ("Rating (1-10): 6 || weak", 6, "weak"),
        ("Sure! Here is my rating.\n\n9||The response is correct.", 9, "The response is correct."),
        ("8/10", 8, ""),
        ("8 / 10 - mostly right", 8, "mostly right"),
        ("9 - explanation", 9, "explanation"),
        ("7: lacks detail", 7, "lacks detail"),
        ("6. The answer repeats itself.", 6, "The answer repeats itself."),
        ("9 out of 10. Clear.", 9, "Clear."),
        ("- 8 | brief", 8, "brief"),
        ("Score: 7\nThe response is correct but wordy.", 7, "The response is correct but wordy."),
        ("  \n5\nToo vague.", 5, "Too vague."),
        ("Here is my evaluation:\nRating: 4 (unclear)", 4, "(unclear)"),
        ("The response is correct and succinct. I would rate it 9 out of 10.", 9, None),
        ("Overall this is a solid answer. Score: 8", 8, None),
        ("I'd give it an 8 because it is accurate.", 8, None),
        ("`10`||ok", 10, "ok"),
        ("The response is 10 out of 10.", 10, None),  # seen from SmolLM2-135M
        ("Clear and correct, so 7/10 overall.", 7, None),
    ],
)
def test_parse_score_near_misses(text, score, explanation):
    result = parse_score(text)
    assert result.reason is None and result.score == score
    if explanation is not None:
        assert result.explanation == explanation


@pytest.mark.parametrize(
    "text, raw",
    [("0||bad", "0"), ("11", "11"), ("-3||", "-3"), ("Score: 12/10", "12"), ("10.5||", "10.5"),
     ("0.4", "0.4"), ("1" * 400, "1" * 400)],
)  # fmt: skip
def test_parse_score_out_of_range(text, raw):
    result = parse_score(text)
    assert result == ScoreResult(None, result.explanation, rating.OUT_OF_RANGE, raw)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n",
        "The response is good.",
        "good||8",
        "||",
        "The answer lists 3 examples but misses the point.",  # a number in prose is no score
        "1st place would go to this answer",
        "Version 1.2.3 of the tool is described well.",
        "It does not give 3 examples.",
        "It has 3 errors in 10 lines.",
        "The answer to the task is: 10",
        None,
        42,
        b"8||good",
    ],
)
def test_parse_score_unparseable(text):
    result = parse_score(text)
    assert result.score is None and result.reason == rating.UNPARSEABLE


def test_parse_score_keeps_the_explanation_for_failures():
    assert parse_score("No idea, sorry.").explanation == "No idea, sorry."
    assert parse_score("0||empty response").explanation == "empty response"


# -- score_filter ----------------------------------------------------------------------------


def ok(score: int) -> ScoreResult:
    return ScoreResult(score)


@pytest.mark.parametrize(
    "quality, following, reason",
    [
        (ok(9), ok(9), None),
        (ok(10), ok(9), None),
        (ok(8), ok(10), asm.LOW_QUALITY),  # strictly greater than 8
        (ok(9), ok(8), asm.LOW_FOLLOWING),
        (ok(3), ok(2), asm.LOW_QUALITY),  # quality is reported first
        (parse_score("nothing"), ok(9), asm.UNPARSEABLE_QUALITY),
        (ok(9), parse_score("nothing"), asm.UNPARSEABLE_FOLLOWING),
        (parse_score("11"), ok(9), asm.OUT_OF_RANGE_QUALITY),
        (ok(9), parse_score("0"), asm.OUT_OF_RANGE_FOLLOWING),
        (9, 10, None),
        (9, 8, asm.LOW_FOLLOWING),
        (None, 9, asm.UNPARSEABLE_QUALITY),
    ],
)
def test_score_filter(quality, following, reason):
    assert score_filter(quality, following) == reason


def test_score_filter_threshold_and_either():
    assert score_filter(ok(8), ok(8), threshold=7) is None
    assert score_filter(ok(7), ok(9), threshold=7) == asm.LOW_QUALITY
    assert score_filter(ok(7), ok(9), require_both=False) is None
    assert score_filter(parse_score("?"), ok(9), require_both=False) is None
    assert score_filter(ok(5), parse_score("?"), require_both=False) == asm.LOW_QUALITY


def test_reason_constants():
    reasons = [rating.UNPARSEABLE, rating.OUT_OF_RANGE, asm.LOW_QUALITY, asm.LOW_FOLLOWING,
               asm.UNPARSEABLE_QUALITY, asm.UNPARSEABLE_FOLLOWING, asm.OUT_OF_RANGE_QUALITY,
               asm.OUT_OF_RANGE_FOLLOWING, asm.BELOW_TOP_FRACTION, asm.BELOW_TOP_K]  # fmt: skip
    assert len(set(reasons)) == len(reasons)
    assert all(r.isidentifier() and r == r.lower() for r in reasons)


def test_parse_score_never_raises_on_random_text():
    rng = random.Random(0)
    alphabet = "0123456789 ./-+|*:\n\tabcScore10 outof()[]#`é中"
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        result = parse_score(text)
        assert (result.score is None) == (result.reason is not None)
        assert result.score is None or 1 <= result.score <= 10


# -- selection: threshold, top fraction, top-k ----------------------------------------------------


def test_top_fraction_keeps_exactly_the_best_ceil_f_n():
    quality = [5.0, 9.5, 7.25, 3.0, 8.0, 6.0, 7.25]
    following = [5.0, 9.0, 7.25, 4.0, 8.0, 7.0, 7.25]
    ids = [f"p{n}" for n in range(7)]
    # Means: 5, 9.25, 7.25, 3.5, 8, 6.5, 7.25; ceil(0.5 * 7) = 4 kept; p2 and p6 tie at 7.25,
    # both inside the cut. With 3/7, the tie at the cut is broken by id: p2 stays, p6 goes.
    sel = asm.Selection(threshold=0, top_fraction=0.5)
    reasons = asm.select(quality, following, ids, sel)
    assert [n for n, r in enumerate(reasons) if r is None] == [1, 2, 4, 6]
    assert all(r == asm.BELOW_TOP_FRACTION for r in reasons if r)
    reasons = asm.select(quality, following, ids, asm.Selection(threshold=0, top_fraction=3 / 7))
    assert [n for n, r in enumerate(reasons) if r is None] == [1, 2, 4]
    # The order of the pairs does not change the cut.
    perm = [6, 5, 4, 3, 2, 1, 0]
    again = asm.select([quality[n] for n in perm], [following[n] for n in perm], [ids[n] for n in perm], sel)
    assert {ids[perm[k]] for k, r in enumerate(again) if r is None} == {"p1", "p2", "p4", "p6"}


def test_threshold_top_fraction_and_top_k_combine_with_their_own_reasons():
    quality = [9.5, 9.2, 8.9, 8.5, 2.0]
    following = [9.0, 7.0, 9.1, 9.0, 2.0]
    ids = ["a", "b", "c", "d", "e"]
    sel = asm.Selection(threshold=8, top_fraction=0.8, top_k=2, rank_by="min")
    # min: 9.0, 7.0, 8.9, 8.5, 2.0. Threshold: b (following 7) and e drop. Top 80 % = 4 of 5 by
    # min: a, c, d, b -> e is outside but already dropped. Of the kept a, c, d, top-2: d goes.
    assert asm.select(quality, following, ids, sel) == [
        None,
        asm.LOW_FOLLOWING,
        None,
        asm.BELOW_TOP_K,
        asm.LOW_QUALITY,
    ]


def test_selection_skips_unparseable_ratings_and_checks_its_settings():
    q = [parse_score("9||fine"), parse_score("no score"), 7.0]
    f = [parse_score("8||ok"), parse_score("9"), 6.0]
    reasons = asm.select(q, f, ["x", "y", "z"], asm.Selection(threshold=0, top_fraction=1 / 3))
    assert reasons == [None, asm.UNPARSEABLE_QUALITY, asm.BELOW_TOP_FRACTION]
    for bad in ({"top_fraction": 0}, {"top_fraction": 1.5}, {"top_k": -1}, {"rank_by": "max"}):
        with pytest.raises(ValueError):
            asm.Selection(**bad)
    with pytest.raises(ValueError, match="3 quality"):
        asm.select(q, f[:2], ["x", "y", "z"], asm.Selection())
