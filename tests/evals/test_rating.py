"""The judge's scores read from its distribution: score tokens, probabilities, expected score."""

import numpy as np
import pytest
from helpers import full_forward_logprobs, make_hf_model

from isheep_jax.evals import rating
from isheep_jax.model import checkpoint
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.sampling.generator import Generator, SamplingSettings


@pytest.fixture(scope="module")
def smollm2_tok(smollm2_dir):
    return Tokenizer(checkpoint.tokenizer_dir(smollm2_dir))


def test_smollm2_writes_ten_as_two_tokens_and_scores_are_read_after_one_forced_token(smollm2_tok):
    st = rating.score_tokens(smollm2_tok, "Rate it.\nRating: ")
    one, zero = (smollm2_tok.encode(d, add_special_tokens=False)[0] for d in "10")
    assert st.sequences[0] == (one,) and st.sequences[9] == (one, zero)
    assert all(len(s) == 1 for s in st.sequences[:9])
    assert st.forced == (one,)
    assert st.needs_end(0) and not any(st.needs_end(i) for i in range(1, 10))
    assert {smollm2_tok.decode([t]) for t in st.continuations} == set("0123456789")


def test_a_prompt_whose_end_merges_with_the_answer_is_refused(smollm2_tok):
    # "[" + "[A" is written "[[", "A": the prompt's last token is not where the answer starts.
    with pytest.raises(rating.ScoreTokenError, match="merges"):
        rating.choice_tokens(smollm2_tok, "Verdict: [", ["[A", "[B"])
    with pytest.raises(rating.ScoreTokenError, match="same tokens"):
        rating.choice_tokens(smollm2_tok, "Verdict:", ["A", "A"])


def test_expected_score_equals_a_hand_computation_with_a_two_token_ten(smollm2_tok):
    st = rating.score_tokens(smollm2_tok, "Rating: ")
    col = {t: c for c, t in enumerate(st.select)}
    digit = {d: smollm2_tok.encode(d, add_special_tokens=False)[0] for d in "0123456789"}
    probs = np.full((1, 2, len(st.select)), 1e-30)
    # After the prompt: p("1") = 0.4, p("8") = 0.35, p("9") = 0.1 (the rest on non-digits).
    for d, p in (("1", 0.4), ("8", 0.35), ("9", 0.1)):
        probs[0, 0, col[digit[d]]] = p
    # After "1": p("0") = 0.75, p("2") = 0.05: "12" is no score; 0.2 ends the number.
    probs[0, 1, col[digit["0"]]] = 0.75
    probs[0, 1, col[digit["2"]]] = 0.05
    p = rating.choice_probabilities(np.log(probs), st)[0]
    want = np.zeros(10)
    want[9] = 0.4 * 0.75  # "10"
    want[0] = 0.4 * (1 - 0.75 - 0.05)  # "1" and then not a digit
    want[7], want[8] = 0.35, 0.1
    np.testing.assert_allclose(p, want, atol=1e-12)
    (s,) = rating.summarize_scores(p[None])
    assert s.mass == pytest.approx(0.83)
    assert s.expected == pytest.approx((1 * 0.08 + 8 * 0.35 + 9 * 0.1 + 10 * 0.3) / 0.83)
    assert s.mode == 8


def test_logits_mode_never_yields_an_unparseable_score():
    rng = np.random.default_rng(0)
    rows = [rng.dirichlet(np.ones(10) * a) * m for a in (0.05, 1, 20) for m in (1e-12, 0.3, 1)]
    rows += [np.zeros(10)]  # no mass on any score at all: the middle of the scale
    for probs in rows:
        fields = rating.rating_fields("quality", {"score_probs": [float(x) for x in probs]})
        assert fields["quality_reason"] is None
        assert 1 <= fields["quality_score"] <= 10
        assert fields["quality_mode_score"] in range(1, 11)
    assert rating.rating_fields("following", {"score_probs": [0.0] * 10})["following_score"] == 5.5


def test_text_mode_fields_parse_the_reply_with_its_prefill():
    fields = rating.rating_fields("quality", {"text": " 7||short"}, prefill="Rating:")
    assert fields == {"quality_score": 7, "quality_reason": None, "quality_rating": "Rating: 7||short"}
    assert rating.rating_fields("quality", {"text": "hmm"})["quality_reason"] == rating.UNPARSEABLE


def test_label_probabilities_equal_a_full_forward(tmp_path, tiny_tokenizer_dir):
    """On a tiny model: p(score) from one prefill equals the product of a full forward's
    conditional probabilities over each score's tokens (times 'the number ends here')."""
    hf_dir = make_hf_model(str(tmp_path / "hf"), "llama", eos_token_id=None)
    hf.import_hf(hf_dir, str(tmp_path / "ours"))
    cfg, params = checkpoint.load_model(str(tmp_path / "ours"))
    tok = Tokenizer(hf_dir)
    prompts = [f"{w} answer, rated: " for w in ("one", "a longer second", "third")]
    got = rating.label_probabilities(
        Generator(cfg, params, tok), prompts, [str(k) for k in rating.SCORES], 2, False, False
    )
    st = rating.score_tokens(tok, prompts[0])
    for prompt, row in zip(prompts, got):
        ids = tok.encode(prompt)
        logps = full_forward_logprobs(cfg, params, [ids + list(seq) for seq in st.sequences])
        for i, (seq, logp) in enumerate(zip(st.sequences, logps)):
            want = np.prod([np.exp(float(logp[len(ids) - 1 + j, t])) for j, t in enumerate(seq)])
            if st.needs_end(i):
                want *= 1 - sum(np.exp(float(logp[-1, t])) for t in st.continuations)
            assert row[i] == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_rate_rows_in_both_modes(tmp_path):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "qwen2", eos_token_id=None)
    hf.import_hf(hf_dir, str(tmp_path / "ours"))
    cfg, params = checkpoint.load_model(str(tmp_path / "ours"))
    gen = Generator(cfg, params, Tokenizer(hf_dir))
    prompts = [rating.build_rating_prompt("quality", "Say hi.", "", r) + "Rating: " for r in ("hi", "hello")]
    settings = SamplingSettings(max_new_tokens=4, temperature=0.0, batch_size=2)
    rows = rating.rate_rows(gen, prompts, "logits", settings, [0, 1], False, False)
    assert [len(r["score_probs"]) for r in rows] == [10, 10]
    text = rating.rate_rows(gen, prompts, "text", settings, [0, 1], False, False)
    assert all("text" in r and r["num_tokens"] <= 4 for r in text)
    with pytest.raises(ValueError, match="mode"):
        rating.rate_rows(gen, prompts, "guess", settings, [0, 1], False, False)
