"""Prefill-only scoring (`Generator.score`) against a full forward of prompt + forced tokens."""

import jax
import numpy as np
import pytest
from helpers import full_forward_logprobs, make_hf_model

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.parallel import sharding
from isheep_jax.sampling import prompt_tree
from isheep_jax.sampling.generator import SCORE_BUCKETS, Generator, bucket


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    hf_dir = make_hf_model(str(root / "hf"), "llama", num_key_value_heads=2, eos_token_id=None)
    hf.import_hf(hf_dir, str(root / "ours"))
    cfg, params = checkpoint.load_model(str(root / "ours"))
    return cfg, params, Tokenizer(hf_dir)


def _prompts(shared: int) -> list[list[int]]:
    rng = np.random.RandomState(0)
    head = rng.randint(5, 300, size=shared).tolist()
    return [head + rng.randint(5, 300, size=k).tolist() for k in (1, 30, 4, 17, 9, 2, 40)]


def _full_forward_logprobs(cfg, params, prompts, forced, select):
    """[prompt, forced + 1, select]: each prompt's log-probs at its end and after each forced token."""
    logps = full_forward_logprobs(cfg, params, [p + forced for p in prompts])
    return [logp[len(p) - 1 : len(p) + len(forced)][:, select] for p, logp in zip(prompts, logps)]


@pytest.mark.parametrize(
    "shared, forced",
    [(0, ()), (40, (7,)), (0, (7, 11)), (40, (7, 11))],
    ids=["own", "shared-one", "own-two", "shared-two"],
)
def test_score_equals_the_full_forward(tiny, shared, forced):
    """Each prompt's selected log-probs at its end and after each forced token equal a full
    forward's, whatever the batching (3 per batch here), padding and shared prefix."""
    cfg, params, tok = tiny
    prompts, select = _prompts(shared), [3, 7, 11, 250]
    got = Generator(cfg, params, tok).score(prompts, select, forced, batch_size=3, progress=False)
    assert got.shape == (len(prompts), len(forced) + 1, len(select))
    for row, want in zip(got, _full_forward_logprobs(cfg, params, prompts, list(forced), select)):
        np.testing.assert_allclose(row, want, atol=2e-5)


def _tree_prompts() -> list[list[int]]:
    """Rating-like prompts: a shared head, then per answer two prompts that differ only in
    their last tokens (a tree each), one answer rated once, and two identical prompts."""
    rng = np.random.RandomState(1)
    head = rng.randint(5, 300, size=20).tolist()
    rubrics = [rng.randint(300, 400, size=k).tolist() for k in (6, 11)]
    prompts = []
    for n in (35, 50, 41):
        answer = rng.randint(5, 300, size=n).tolist()
        prompts += [head + answer + r for r in rubrics]
    lone = head + rng.randint(5, 300, size=45).tolist()
    return prompts + [lone, head + rubrics[0], lone]


@pytest.mark.parametrize("forced", [(), (7, 11)], ids=["none", "two"])
def test_score_of_prompt_trees_equals_the_full_forward(tiny, forced):
    """Prompts sharing a long prefix are scored as trees (fewer tokens computed), and every
    prompt's log-probs still equal its own full forward's and the untreed scoring's."""
    cfg, params, tok = tiny
    prompts, select = _tree_prompts(), [3, 7, 11, 250]
    own = len(forced) + 1
    groups = prompt_tree.group_prompts([p + list(forced) for p in prompts], own, max_row=4096)
    trees = [g for g in groups if len(g.members) > 1]
    assert len(trees) == 4 and all(g.trunk >= prompt_tree.MIN_TRUNK for g in trees)
    got = Generator(cfg, params, tok).score(prompts, select, forced, batch_size=2, progress=False)
    for row, want in zip(got, _full_forward_logprobs(cfg, params, prompts, list(forced), select)):
        np.testing.assert_allclose(row, want, atol=2e-5)
    for kwargs in ({"prompt_trees": False}, {"share_prefix": False}):
        alone = Generator(cfg, params, tok, **kwargs).score(prompts, select, forced, progress=False)
        np.testing.assert_allclose(got, alone, atol=2e-5)


def test_score_keeps_each_prefill_within_its_bucket_and_token_budget(tiny):
    """With a budget of 128 padded tokens, the prompts (41 to 80 tokens: SCORE_BUCKETS 64 and 96)
    go one per prefill at 96 and at most two at 64, never padded up to another bucket, and the
    log-probs equal one batch of all seven's."""
    cfg, params, tok = tiny
    prompts, select = _prompts(40), [3, 7, 11]
    small = Generator(cfg, params, tok, score_batch_tokens=128)
    lengths = [len(p) + 1 for p in prompts]  # one forced token
    order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
    batches = small._score_batches(lengths, order, batch_size=32)
    assert sorted(i for b in batches for i in b) == list(range(len(prompts)))
    for b in batches:
        buckets = {bucket(lengths[i], SCORE_BUCKETS) for i in b}
        assert len(buckets) == 1 and 1 << (len(b) - 1).bit_length() <= max(1, 128 // buckets.pop())
    assert [len(b) for b in batches] == [1, 1, 2, 2, 1]
    got = small.score(prompts, select, (7,), batch_size=32, progress=False)
    want = Generator(cfg, params, tok).score(prompts, select, (7,), batch_size=32, progress=False)
    np.testing.assert_allclose(got, want, atol=2e-5)
    with pytest.raises(ValueError, match="score_batch_tokens"):
        Generator(cfg, params, tok, score_batch_tokens=0)


def test_score_on_a_mesh_equals_one_device(tiny):
    cfg, params, tok = tiny
    prompts, select = _prompts(40) + _tree_prompts(), [3, 7, 11]
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ref = Generator(cfg, jax.device_put(params, sharding.replicated(one)), tok, mesh=one).score(
        prompts, select, (7,), progress=False
    )
    for shape in ((8, 1, 1), (2, 2, 2)):
        mesh = sharding.make_mesh(*shape)
        gen = Generator(cfg, jax.device_put(params, P.param_shardings(cfg, mesh)), tok, mesh=mesh)
        np.testing.assert_allclose(gen.score(prompts, select, (7,), progress=False), ref, atol=2e-5)


def test_score_rejects_bad_token_ids_and_empty_prompts(tiny):
    cfg, params, tok = tiny
    gen = Generator(cfg, params, tok)
    with pytest.raises(ValueError, match="select must be"):
        gen.score([[5, 6]], [cfg.vocab_size], progress=False)
    with pytest.raises(ValueError, match="select must be"):
        gen.score([[5, 6]], [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        gen.score([[]], [3], progress=False)
    assert gen.score([], [3], progress=False).shape == (0, 1, 1)
