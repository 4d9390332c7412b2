"""The KV-cache sampler against transformers' generate and against our own full forward."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import full_forward_logprobs, make_hf_model

from isheep_jax.core import hooks
from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.model.transformer import decode_forward, init_cache, make_packing, unstack_layers
from isheep_jax.parallel import sharding
from isheep_jax.sampling import decode_loop, generator, token_choice
from isheep_jax.sampling.generator import Generator, SamplingSettings

GREEDY = SamplingSettings(max_new_tokens=12, temperature=0.0, batch_size=8)


# The sampler's scheduling and sampling logic does not depend on the architecture: the tests
# of it run on the llama model; those that check the model's numbers run on both.
LLAMA_ONLY = pytest.mark.parametrize("tiny", ["llama"], indirect=True)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"sampler-{request.param}")
    hf_dir = make_hf_model(str(root / "hf"), request.param, num_key_value_heads=2, eos_token_id=None)
    hf.import_hf(hf_dir, str(root / "ours"))
    cfg, params = checkpoint.load_model(str(root / "ours"))
    return hf_dir, cfg, params, Tokenizer(hf_dir)


def _mixed_prompts(n: int = 10, vocab: int = 320) -> list[list[int]]:
    rng = np.random.RandomState(0)
    lengths = [1, 40, 3, 17, 9, 25, 2, 33, 5, 12][:n]
    return [rng.randint(5, vocab, size=k).tolist() for k in lengths]


def _prefixed_prompts(n: int = 8, shared: int = 27, vocab: int = 320) -> list[list[int]]:
    """Prompts that share their first `shared` tokens (a template's header), then differ."""
    head = np.random.RandomState(1).randint(5, vocab, size=shared).tolist()
    return [head + x for x in _mixed_prompts(n, vocab)]


def _transformers_greedy(hf_dir, prompts, new_tokens: int = 12) -> list[list[int]]:
    """transformers' greedy continuation of each prompt on its own (no padding), EOS off."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return [
            model.generate(
                torch.tensor([p]),
                max_new_tokens=new_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=0,
            )[0, len(p) :].tolist()
            for p in prompts
        ]


def test_greedy_matches_transformers_generate(tiny):
    hf_dir, cfg, params, tok = tiny
    prompts = _mixed_prompts()
    gen = Generator(cfg, params, tok)
    gen.eos_ids = np.asarray([-1], np.int32)  # the random model has no EOS: compare all 12 tokens
    out = gen.generate(prompts, GREEDY, progress=False)
    for ref, completion in zip(_transformers_greedy(hf_dir, prompts), out):
        assert completion.token_ids == ref
        assert completion.finish_reason == "length"


@LLAMA_ONLY
def test_one_device_decoding_with_the_cpu_kernel(tiny, tmp_path, monkeypatch):
    """The tests' default mesh has 8 devices (XLA's decode attention); one device is where the
    CPU kernel runs: greedy tokens still equal transformers', log-probs equal XLA's path."""
    from isheep_jax.backends.cpu import kernels
    from isheep_jax.model import layers

    if not kernels.load():
        pytest.skip("CPU kernels did not build here")
    hf_dir, _, _, tok = tiny
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    hf.import_hf(hf_dir, str(tmp_path / "ours"))
    cfg, params = checkpoint.load_model(str(tmp_path / "ours"), mesh)
    prompts = _mixed_prompts()

    def run():
        gen = Generator(cfg, params, tok, mesh=mesh)
        gen.eos_ids = np.asarray([-1], np.int32)
        return gen.generate(prompts, GREEDY, progress=False)

    kernel_calls, kernel = [], kernels.decode_attention

    def counted(*a):
        kernel_calls.append(1)  # once per traced decode-step layer
        return kernel(*a)

    monkeypatch.setattr(kernels, "decode_attention", counted)
    jax.clear_caches()  # a fresh trace: the choice of attention is made while tracing
    with_kernel = run()
    assert kernel_calls, "the one-device sampler did not take the CPU kernel"
    for ref, completion in zip(_transformers_greedy(hf_dir, prompts), with_kernel):
        assert completion.token_ids == ref
    monkeypatch.setattr(layers, "_cpu_kernel_applies", lambda *a: False)
    jax.clear_caches()
    without = run()
    for a, b in zip(with_kernel, without):
        assert a.token_ids == b.token_ids
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
    jax.clear_caches()


@pytest.mark.parametrize("prompts", [_mixed_prompts(6), _prefixed_prompts(6)], ids=["own", "shared_prefix"])
def test_cached_decoding_equals_full_forward_at_every_step(tiny, prompts):
    """Per-token log-probs from the cached loop equal a full forward over prompt + output,
    also when the prompts' common prefix is prefilled once and shared by the rows."""
    _, cfg, params, tok = tiny
    out = Generator(cfg, params, tok).generate(
        prompts,
        SamplingSettings(max_new_tokens=10, temperature=1.0, top_p=1.0, seed=3, batch_size=8),
        progress=False,
    )
    logps = full_forward_logprobs(cfg, params, [p + c.token_ids for p, c in zip(prompts, out)])
    for prompt, c, logp in zip(prompts, out, logps):
        assert c.prompt_tokens == len(prompt)
        want = logp[len(prompt) - 1 + np.arange(len(c.token_ids)), c.token_ids]
        np.testing.assert_allclose(c.logprobs[: len(want)], want, atol=2e-5)


def test_bf16_kv_cache_stays_close_to_the_full_forward(tiny):
    """A bfloat16 cache under f32 compute: log-probs of what it samples are those of a full
    f32 forward up to the cache's rounding (keys and values to 8 bits of mantissa)."""
    _, cfg, params, tok = tiny
    prompts = _mixed_prompts(6)
    out = Generator(cfg, params, tok, kv_cache_dtype="bfloat16").generate(
        prompts,
        SamplingSettings(max_new_tokens=10, temperature=1.0, top_p=1.0, seed=3, batch_size=8),
        progress=False,
    )
    worst = 0.0
    logps = full_forward_logprobs(cfg, params, [p + c.token_ids for p, c in zip(prompts, out)])
    for prompt, c, logp in zip(prompts, out, logps):
        want = logp[len(prompt) - 1 + np.arange(len(c.token_ids)), c.token_ids]
        np.testing.assert_allclose(c.logprobs[0], want[0], atol=2e-5)  # from the prefill: no cache read
        worst = max(worst, float(np.max(np.abs(np.asarray(c.logprobs) - want))))
    assert 1e-6 < worst < 2e-2, worst  # (above 0: the cache really is rounded)
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        Generator(cfg, params, tok, kv_cache_dtype="int8")


def test_packed_prefill_equals_the_padded_one(tiny):
    """Prefilling only the real prompt tokens (rows of lengths 1..40 padded to 64) gives the
    padded prefill's tokens and log-probs at every step, and the quarter buckets hold."""
    _, cfg, params, tok = tiny
    prompts = _mixed_prompts(8)
    b, p = 8, 64
    tokens, mask = np.zeros((b, p), np.int32), np.zeros((b, p), bool)
    for r, x in enumerate(prompts):
        tokens[r, p - len(x) :], mask[r, p - len(x) :] = x, True
    assert generator.packed_prefill_len(mask) == 256  # 140 real tokens, quarters of 128
    assert generator.packed_prefill_len(np.ones((2, 16), bool)) is None
    assert generator.packed_prefill_len(np.eye(4, dtype=bool)) == 4
    up = unstack_layers(params)
    keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.key(5), r))(jnp.arange(b, dtype=jnp.uint32))
    run = functools.partial(
        decode_loop.decode,
        cfg,
        up,
        jnp.asarray(tokens),
        jnp.asarray(mask),
        keys,
        jnp.asarray([-1], jnp.int32),
        jnp.zeros((0, 1), jnp.int32),
        jnp.int32(8),
        jnp.float32(1.0),
        jnp.int32(0),
        jnp.float32(1.0),
        jnp.int32(0),
        capacity=8,
    )
    padded, packed = run(), run(packed_len=256)
    np.testing.assert_array_equal(packed.tokens, padded.tokens)
    np.testing.assert_allclose(packed.logprobs, padded.logprobs, atol=1e-5)
    with pytest.raises(ValueError, match="packing is for a fresh cache"):
        decode_forward(
            cfg,
            up,
            jnp.asarray(tokens),
            jnp.zeros((b, p), jnp.int32),
            jnp.asarray(mask, jnp.int32),
            init_cache(cfg, b, p),
            packing=make_packing(jnp.asarray(mask), 256),
        )


def test_shared_prefix_len_rounds_down_and_leaves_every_prompt_a_token():
    head = list(range(100, 140))
    assert generator.shared_prefix_len([head + [1], head + [2, 3]]) == 32  # 40 in common -> bucket 32
    assert generator.shared_prefix_len([head[:25], head[:30]]) == 24  # at most 24 of the 25-token prompt
    assert generator.shared_prefix_len([head[:16], head]) == 0  # 15 would be left: below the smallest bucket
    assert generator.shared_prefix_len([head, [7] + head]) == 0
    assert generator.shared_prefix_len([head]) == 32
    assert generator.shared_prefix_len([]) == 0


@LLAMA_ONLY
def test_shared_prefix_gives_the_unshared_results(tiny):
    """Prefilling the common prefix once (27 tokens -> 24 shared, the rest per row) changes
    nothing but summation order: same greedy and seeded tokens, log-probs within round-off,
    and a call whose prompts share nothing takes the per-row path."""
    _, cfg, params, tok = tiny
    prompts = _prefixed_prompts(8)
    assert generator.shared_prefix_len(prompts) == 24
    for settings in (
        GREEDY,
        SamplingSettings(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=11, batch_size=4),
    ):
        shared = Generator(cfg, params, tok).generate(prompts, settings, progress=False)
        own = Generator(cfg, params, tok, share_prefix=False).generate(prompts, settings, progress=False)
        assert [c.token_ids for c in shared] == [c.token_ids for c in own]
        for a, b in zip(shared, own):
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-5)
            assert a.prompt_tokens == b.prompt_tokens


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
@pytest.mark.parametrize("prompt_set", ["own", "shared_prefix"])
@LLAMA_ONLY
def test_meshes_give_the_same_tokens(tiny, mesh_shape, prompt_set):
    _, cfg, params, tok = tiny
    prompts = _mixed_prompts(8) if prompt_set == "own" else _prefixed_prompts(8)
    settings = SamplingSettings(max_new_tokens=8, temperature=1.0, top_p=0.9, seed=7, batch_size=8)
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ref = Generator(cfg, jax.device_put(params, sharding.replicated(one)), tok, mesh=one).generate(
        prompts, settings, progress=False
    )
    mesh = sharding.make_mesh(*mesh_shape)
    sharded = jax.device_put(params, P.param_shardings(cfg, mesh))
    got = Generator(cfg, sharded, tok, mesh=mesh).generate(prompts, settings, progress=False)
    assert [c.token_ids for c in got] == [c.token_ids for c in ref]


@LLAMA_ONLY
def test_eos_and_stop_strings_end_rows(tiny):
    _, cfg, params, tok = tiny
    prompts = _mixed_prompts(4)
    gen = Generator(cfg, params, tok)
    gen.eos_ids = np.asarray([-1], np.int32)
    free = gen.generate(prompts, GREEDY, progress=False)
    # EOS: declare the 4th generated token of row 0 an EOS token.
    eos_tok = free[0].token_ids[3]
    gen.eos_ids = np.asarray([eos_tok], np.int32)
    ended = gen.generate(prompts, GREEDY, progress=False)
    first = free[0].token_ids.index(eos_tok)
    assert ended[0].finish_reason == "eos" and ended[0].token_ids == free[0].token_ids[:first]
    for f, e in zip(free, ended):
        assert e.token_ids == (
            f.token_ids[: f.token_ids.index(eos_tok)] if eos_tok in f.token_ids else f.token_ids
        )
    # Stop string: a piece of row 1's text; nothing after it is returned.
    gen.eos_ids = np.asarray([-1], np.int32)
    text = free[1].text
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    assert stop
    stopped = gen.generate(
        prompts, SamplingSettings(max_new_tokens=12, temperature=0.0, stop_strings=(stop,)), progress=False
    )
    assert stopped[1].finish_reason == "stop"
    assert stopped[1].text == text[: text.find(stop)]
    assert stop not in stopped[1].text


@LLAMA_ONLY
def test_tiny_top_p_equals_greedy_and_seeds_reproduce(tiny):
    _, cfg, params, tok = tiny
    prompts = _mixed_prompts(6)
    gen = Generator(cfg, params, tok)
    greedy = gen.generate(prompts, GREEDY, progress=False)
    nucleus = gen.generate(
        prompts, SamplingSettings(max_new_tokens=12, temperature=1.0, top_p=1e-6, seed=5), progress=False
    )
    assert [c.token_ids for c in nucleus] == [c.token_ids for c in greedy]
    s = SamplingSettings(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=11, batch_size=4)
    a, b = gen.generate(prompts, s, progress=False), gen.generate(prompts, s, progress=False)
    assert [c.token_ids for c in a] == [c.token_ids for c in b]
    c = gen.generate(
        prompts, SamplingSettings(max_new_tokens=12, temperature=1.0, top_p=0.95, seed=12), progress=False
    )
    assert [x.token_ids for x in c] != [x.token_ids for x in a]
    # A row's output depends on (seed, row id), not on the batch it shares.
    alone = gen.generate([prompts[2]], s, row_ids=[2], progress=False)
    assert alone[0].token_ids == a[2].token_ids


@LLAMA_ONLY
def test_max_new_tokens_is_traced_and_respected(tiny):
    _, cfg, params, tok = tiny
    gen = Generator(cfg, params, tok)
    gen.eos_ids = np.asarray([-1], np.int32)
    for n in (3, 5, 9):  # one capacity bucket: no recompilation between these
        out = gen.generate(
            _mixed_prompts(3), SamplingSettings(max_new_tokens=n, temperature=0.0), progress=False
        )
        assert all(len(c.token_ids) == n and c.finish_reason == "length" for c in out)


def test_top_k_and_top_p_masks():
    logits = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    np.testing.assert_array_equal(
        token_choice.top_k_mask(logits, jnp.int32(2))[0], [True, True, False, False]
    )
    np.testing.assert_array_equal(token_choice.top_k_mask(logits, jnp.int32(0))[0], [True] * 4)
    probs = jax.nn.softmax(logits)
    np.testing.assert_array_equal(
        token_choice.top_p_mask(probs, jnp.float32(0.8))[0], [True, True, False, False]
    )
    np.testing.assert_array_equal(
        token_choice.top_p_mask(probs, jnp.float32(0.81))[0], [True, True, True, False]
    )
    np.testing.assert_array_equal(
        token_choice.top_p_mask(probs, jnp.float32(0.3))[1], [True] * 4
    )  # ties kept
    keys = jax.random.split(jax.random.key(0), 2000)
    draws = token_choice.sample_tokens(
        jnp.repeat(logits[:1], 2000, 0), keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(1.0)
    )
    freq = np.bincount(np.asarray(draws), minlength=4) / 2000
    np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_top_p_draws_follow_the_renormalised_nucleus():
    """The rejection sampler draws only nucleus tokens, in the nucleus' proportions."""
    probs = np.asarray([0.05, 0.4, 0.0, 0.25, 0.2, 0.1] + [0.0] * 300, np.float32)  # V > one block
    logits = jnp.log(jnp.asarray(np.repeat(probs[None], 4000, 0)))
    keys = jax.random.split(jax.random.key(1), 4000)
    for p, nucleus in ((0.8, [1, 3, 4]), (0.6, [1, 3]), (0.3, [1]), (1.0, [0, 1, 3, 4, 5])):
        draws = np.asarray(
            token_choice.sample_tokens(logits, keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(p))
        )
        mask = np.asarray(token_choice.top_p_mask(jax.nn.softmax(logits[:1]), jnp.float32(p)))[0] & (
            probs > 0
        )
        assert sorted(np.flatnonzero(mask)) == nucleus and set(draws) <= set(nucleus), (p, set(draws))
        freq = np.bincount(draws, minlength=len(probs)) / len(draws)
        np.testing.assert_allclose(freq[nucleus], probs[nucleus] / probs[nucleus].sum(), atol=0.03)
    # Tied maxima are both kept by a tiny p, and the draw stays reproducible with its keys.
    tied = jnp.log(jnp.asarray([[0.3, 0.3, 0.2, 0.2]] * 200))
    k200 = keys[:200]
    a = token_choice.sample_tokens(tied, k200, jnp.float32(1.0), jnp.int32(0), jnp.float32(1e-6))
    assert set(np.asarray(a)) == {0, 1}
    np.testing.assert_array_equal(
        a, token_choice.sample_tokens(tied, k200, jnp.float32(1.0), jnp.int32(0), jnp.float32(1e-6))
    )


def test_inverse_cdf_matches_searchsorted_across_blocks():
    rng = np.random.default_rng(0)
    w = rng.random((6, 1000)).astype(np.float32) * (rng.random((6, 1000)) < 0.05)  # sparse, 8 blocks
    cdf = np.cumsum(w.astype(np.float64), axis=1)
    u = (rng.random((50, 6)) * cdf[:, -1]).astype(np.float32)
    for row_u in u:
        got = np.asarray(token_choice.inverse_cdf(jnp.asarray(w), jnp.asarray(row_u)))
        want = [np.searchsorted(cdf[r], row_u[r], side="right") for r in range(6)]
        near = [
            abs(cdf[r][want[r]] - row_u[r]) < 1e-4 or abs(cdf[r][want[r] - 1] - row_u[r]) < 1e-4
            if want[r] > 0
            else False
            for r in range(6)
        ]  # f32 vs f64 round-off at a boundary
        assert all(g == t or n for g, t, n in zip(got, want, near)), (got, want)
        assert (w[np.arange(6), got] > 0).all()


def test_top_p_at_or_below_zero_is_greedy():
    """Direct callers bypass SamplingSettings' check: p <= 0 keeps only the most likely token."""
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((16, 300)), jnp.float32)
    keys = jax.random.split(jax.random.key(2), 16)
    for p in (0.0, -1.0):
        np.testing.assert_array_equal(
            token_choice.sample_tokens(logits, keys, jnp.float32(1.0), jnp.int32(0), jnp.float32(p)),
            token_choice.greedy_tokens(logits),
        )


def test_inverse_cdf_edges_and_greedy_ties():
    w = jnp.asarray([[0.0, 1.0, 0.0, 2.0, 0.0] + [0.0] * 200], jnp.float32)  # total 3, zeros around
    for u, want in (
        (0.0, 1),
        (0.999, 1),
        (1.0, 3),
        (2.999, 3),
        (3.0, 3),
        (3.5, 3),
    ):  # u >= total: last nonzero
        assert int(token_choice.inverse_cdf(w, jnp.asarray([u], jnp.float32))[0]) == want, u
    logits = jnp.asarray([[1.0, 3.0, 3.0, 2.0], [jnp.nan] * 4])
    np.testing.assert_array_equal(
        token_choice.greedy_tokens(logits), [1, 3]
    )  # first of the ties; NaN row in range


def test_smollm2_greedy_matches_transformers(smollm2_dir, smollm2_torch):
    cfg, params = checkpoint.load_model(smollm2_dir)
    tok = Tokenizer(checkpoint.tokenizer_dir(smollm2_dir))
    questions = ["What is the capital of France?", "Write a haiku about the sea.", "What is 2+2?"]
    prompts = [tok.render_prompt(q, "chat") for q in questions]
    out = Generator(cfg, params, tok).generate(
        prompts,
        SamplingSettings(max_new_tokens=24, temperature=0.0),
        add_special_tokens=False,
        progress=False,
    )
    assert "Paris" in out[0].text and out[0].finish_reason == "eos"
    for prompt, c in zip(prompts, out):
        ids = tok.encode(prompt, add_special_tokens=False)
        with torch.no_grad():
            ref = smollm2_torch.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False)[
                0, len(ids) :
            ]
        ref = [t for t in ref.tolist() if t != tok.eos_id]
        assert c.token_ids == ref


class _CountingHooks(hooks.Hooks):
    def __init__(self):
        self.batches = 0

    def after_sampling_batch(self):
        self.batches += 1


@LLAMA_ONLY
def test_generator_runs_installed_hooks_after_every_batch(tiny):
    _, cfg, params, tok = tiny
    gen = Generator(cfg, params, tok)
    with hooks.installed(_CountingHooks()) as counted:
        gen.generate(
            _mixed_prompts(5),
            SamplingSettings(max_new_tokens=2, temperature=0.0, batch_size=2),
            progress=False,
        )
    assert counted.batches == 3  # 5 prompts in batches of 2


@LLAMA_ONLY
def test_raw_text_keeps_the_special_tokens_that_text_drops(tiny):
    """A chat-turn marker the model writes mid-answer is invisible in `text`; the response
    filter reads `raw_text`, where it shows, and drops the pair as leakage."""
    from isheep_jax.loop.response_filter import ROLE_PLAY_LEAKAGE, filter_response

    _, cfg, params, tok = tiny
    gen = Generator(cfg, params, tok)
    marker = tok.encode("<|im_start|>", add_special_tokens=False)
    assert len(marker) == 1  # a special token of the tiny tokenizer
    toks = np.asarray(tok.encode("paris is", add_special_tokens=False) + marker + tok.encode("user", False))
    out = gen._completion(toks, np.zeros(len(toks), np.float32), decode_loop.RUNNING, 3, ())
    assert "<|im_start|>" in out.raw_text and "<|im_start|>" not in out.text
    assert filter_response(out.text, "capital of france?") is None  # stripped: looks like an answer
    assert filter_response(out.raw_text, "capital of france?") == ROLE_PLAY_LEAKAGE


def test_top_k_ignores_masked_minus_inf_logits():
    """A -inf logit (a masked or padded vocabulary entry) used to stop the bisection from
    narrowing, and top-k then kept every token."""
    logits = jnp.asarray([[1.0, 2.0, 3.0, 4.0, -jnp.inf], [-jnp.inf, 0.5, -jnp.inf, 0.1, 0.3]])
    np.testing.assert_array_equal(
        token_choice.top_k_mask(logits, jnp.int32(2)), [[False, False, True, True, False],
                                                        [False, True, False, False, True]]
    )  # fmt: skip
    # More tokens asked than are finite: every finite one is kept, the -inf ones (p = 0) not.
    np.testing.assert_array_equal(
        token_choice.top_k_mask(logits, jnp.int32(4))[1], [False, True, False, True, True]
    )
