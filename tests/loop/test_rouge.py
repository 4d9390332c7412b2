"""ROUGE-L: tokenizer, bit-parallel LCS and the deduper against a plain O(n*m) DP."""

import random
import time

import pytest

from isheep_jax.loop.rouge import RougeDeduper, f_measure, lcs_length, rouge_l, tokenize


def dp_lcs(a, b):
    """Textbook O(len(a) * len(b)) LCS, the reference for the bit-parallel one."""
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def dp_rouge(candidate: str, reference: str) -> float:
    """rouge_score's `_score_lcs` arithmetic on top of the DP."""
    c, r = tokenize(candidate), tokenize(reference)
    if not c or not r:
        return 0.0
    lcs = dp_lcs(c, r)
    p, q = lcs / len(c), lcs / len(r)
    return 0.0 if p + q == 0 else 2 * p * q / (p + q)


def random_text(rng: random.Random, vocab: list[str], lo: int = 0, hi: int = 30) -> str:
    return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))


def mutate(rng: random.Random, text: str, edits: int) -> str:
    words = text.split()
    for _ in range(edits):
        op = rng.randrange(3)
        if op == 0 and words:
            words.pop(rng.randrange(len(words)))
        elif op == 1:
            words.insert(rng.randrange(len(words) + 1), rng.choice(["alpha", "beta", "gamma"]))
        elif words:
            words[rng.randrange(len(words))] = rng.choice(["delta", "epsilon"])
    return " ".join(words)


VOCAB = "the a of to write list give explain short poem story three five given following text".split()


def test_tokenize_matches_rouge_score_rules():
    assert tokenize("Hello, World! It's 2024-05-01.") == ["hello", "world", "it", "s", "2024", "05", "01"]
    # Non-ASCII letters are separators, exactly as rouge_score's [^a-z0-9] substitution.
    assert tokenize("Café déjà-vu") == ["caf", "d", "j", "vu"]
    assert tokenize("  \n\t ") == []
    assert tokenize("snake_case CamelCase") == ["snake", "case", "camelcase"]


def test_hand_written_scores():
    # LCS("the cat sat on the mat", "the cat on the mat") = 5 of 6 and 5 tokens.
    assert rouge_l("the cat sat on the mat", "the cat on the mat") == pytest.approx(10 / 11)
    assert rouge_l("Write a poem.", "write a POEM!") == 1.0
    assert rouge_l("abc", "xyz") == 0.0
    assert rouge_l("", "anything") == 0.0
    assert rouge_l("!!!", "???") == 0.0
    # Order matters for LCS: reversed tokens share only one in order.
    assert rouge_l("one two three", "three two one") == pytest.approx(1 / 3)


@pytest.mark.parametrize("alphabet", [2, 5, 40])
def test_bit_parallel_lcs_matches_dp(alphabet):
    rng = random.Random(alphabet)
    for _ in range(300):
        a = [rng.randrange(alphabet) for _ in range(rng.randint(0, 150))]
        b = [rng.randrange(alphabet) for _ in range(rng.randint(0, 150))]
        assert lcs_length(a, b) == dp_lcs(a, b) == lcs_length(b, a)


def test_rouge_l_matches_dp_bit_for_bit():
    rng = random.Random(0)
    for _ in range(500):
        x = random_text(rng, VOCAB)
        y = mutate(rng, x, rng.randint(0, 6)) if rng.random() < 0.5 else random_text(rng, VOCAB)
        assert rouge_l(x, y) == dp_rouge(x, y)  # same float operations, so exact
        assert rouge_l(x, y) == rouge_l(y, x)


def test_f_measure_edge_cases():
    assert f_measure(0, 5, 5) == 0.0
    assert f_measure(3, 0, 5) == 0.0
    assert f_measure(4, 4, 4) == 1.0


def test_matches_rouge_score_package_when_installed():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rng = random.Random(1)
    for _ in range(200):
        x, y = random_text(rng, VOCAB), random_text(rng, VOCAB)
        assert rouge_l(x, y) == scorer.score(y, x)["rougeL"].fmeasure


def brute_max(pool: list[str], candidate: str) -> float:
    return max((dp_rouge(candidate, p) for p in pool), default=0.0)


def test_deduper_max_score_and_is_duplicate_match_brute_force():
    rng = random.Random(2)
    pool_texts = [random_text(rng, VOCAB, 1, 25) for _ in range(60)]
    pool_texts += [mutate(rng, rng.choice(pool_texts), rng.randint(0, 3)) for _ in range(40)]
    pool = RougeDeduper(pool_texts)
    assert len(pool) == 100
    for _ in range(150):
        if rng.random() < 0.5:
            cand = mutate(rng, rng.choice(pool_texts), rng.randint(0, 5))
        else:
            cand = random_text(rng, VOCAB, 0, 25)
        expected = brute_max(pool_texts, cand)
        assert pool.max_score(cand) == expected
        for threshold in (0.0, 0.3, 0.5, 0.7, 0.9, 0.999):
            assert pool.is_duplicate(cand, threshold) == (expected > threshold)
            match = pool.best_match(cand, threshold)
            if expected > threshold:
                assert match is not None and match[1] == expected
                assert dp_rouge(cand, pool_texts[match[0]]) == expected
            else:
                assert match is None


def test_threshold_boundary_is_strict():
    # 10 tokens each, LCS 7: F1 is 0.7 up to float rounding; the deduper must agree with
    # the exact score's own comparison, whichever way the rounding falls.
    ref = "a b c d e f g h i j"
    cand = "a b c d e f g x y z"
    pool = RougeDeduper([ref])
    assert pool.is_duplicate(cand, 0.7) == (rouge_l(cand, ref) > 0.7)
    assert pool.is_duplicate(cand, 0.69)
    assert not pool.is_duplicate(cand, 0.71)
    assert pool.is_duplicate(ref, 0.999) and not pool.is_duplicate(ref, 1.0)


def test_deduper_edge_cases():
    empty = RougeDeduper()
    assert len(empty) == 0
    assert empty.max_score("anything at all") == 0.0
    assert not empty.is_duplicate("anything at all", 0.0)
    pool = RougeDeduper(["Write a poem about the sea."])
    assert pool.add("") == 1  # an empty entry is kept but matches nothing
    assert pool.max_score("") == 0.0
    assert not pool.is_duplicate("", 0.0)
    assert not pool.is_duplicate("unrelated words entirely", 0.0)
    assert pool.is_duplicate("unrelated words entirely", -0.1)  # every score is > -0.1
    assert pool.max_score("write a poem about the sea") == 1.0
    assert pool.score("write a poem", 0) == pytest.approx(2 * 3 / (3 + 6))
    # Repeated tokens: the multiset bound must count occurrences, not distinct tokens.
    pool.add("the the the the cat")
    assert pool.max_score("the the the the dog") == rouge_l("the the the the dog", "the the the the cat")


def test_growing_pool_dedup_loop():
    rng = random.Random(3)
    kept = [random_text(rng, VOCAB, 3, 20) for _ in range(20)]
    pool = RougeDeduper(kept)
    for _ in range(200):
        cand = (
            mutate(rng, rng.choice(kept), rng.randint(0, 4))
            if rng.random() < 0.6
            else random_text(rng, VOCAB, 3, 20)
        )
        duplicate = pool.is_duplicate(cand, 0.7)
        assert duplicate == (brute_max(kept, cand) > 0.7)
        if not duplicate:
            assert pool.add(cand) == len(kept)
            kept.append(cand)
    assert 20 < len(pool) == len(kept) < 220


def test_dedup_is_fast():
    # Realistic shape: instruction-like texts over a Zipf-ish vocabulary, with planted
    # near-duplicates. 3k candidates against a pool growing to ~3k takes well under a
    # second here; the bound is loose so slow CI machines pass.
    rng = random.Random(4)
    vocab = [f"w{i}" for i in range(3000)]
    weights = [1 / (i + 1) for i in range(3000)]
    starts = ["write a", "explain how", "list five", "what is the", "summarize the following"]

    def make() -> str:
        return rng.choice(starts) + " " + " ".join(rng.choices(vocab, weights, k=rng.randint(4, 30)))

    texts = [make() for _ in range(3000)]
    texts += [mutate(rng, rng.choice(texts), 1) for _ in range(300)]
    pool = RougeDeduper([make() for _ in range(175)])
    start = time.perf_counter()
    for text in texts:
        if not pool.is_duplicate(text):
            pool.add(text)
    assert time.perf_counter() - start < 8.0
    assert len(pool) < 175 + len(texts)  # some planted near-duplicates were caught
