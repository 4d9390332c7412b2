"""Continuous batching against the static sampler: the same rows, fewer idle slot-steps."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.model.transformer import decode_forward, init_cache, unstack_layers
from isheep_jax.parallel import sharding
from isheep_jax.sampling.generator import Generator, SamplingSettings

# The sampler's scheduling and sampling logic does not depend on the architecture: the tests
# of it run on the llama model; those that check the model's numbers run on both.
LLAMA_ONLY = pytest.mark.parametrize("tiny", ["llama"], indirect=True)


@pytest.fixture(scope="module", params=["llama", "qwen2"])
def tiny(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"continuous-{request.param}")
    hf_dir = make_hf_model(str(root / "hf"), request.param, num_key_value_heads=2, eos_token_id=None)
    hf.import_hf(hf_dir, str(root / "ours"))
    cfg, params = checkpoint.load_model(str(root / "ours"))
    return cfg, params, Tokenizer(hf_dir)


def _prompts(n: int = 14, shared: int = 0) -> list[list[int]]:
    rng = np.random.RandomState(3)
    head = rng.randint(5, 320, size=shared).tolist()
    lengths = [1, 40, 3, 17, 9, 25, 2, 33, 5, 12, 7, 21, 30, 4][:n]
    return [head + rng.randint(5, 320, size=k).tolist() for k in lengths]


@pytest.fixture(autouse=True, scope="module")
def _fresh_compile_caches():
    """Starts this module without the compiled programs earlier test modules left behind."""
    jax.clear_caches()
    yield
    jax.clear_caches()


def _generate(cfg, params, tok, batching, prompts, settings, eos, mesh=None, drain_min_slots=8):
    gen = Generator(cfg, params, tok, mesh=mesh, batching=batching, drain_min_slots=drain_min_slots)
    gen.eos_ids = np.asarray(eos, np.int32)  # rows end at different steps: slots get refilled
    return gen.generate(prompts, settings, progress=False), gen.last_stats


def _eos_ids(cfg, params, tok, prompts, settings):
    """An EOS id under which the rows of `settings` end apart: most early, one late.

    A row's tokens before its EOS do not depend on the EOS ids, so each candidate's end
    points are read off one run without any.
    """
    free, _ = _generate(cfg, params, tok, "static", prompts, settings, [-1])
    n = settings.max_new_tokens

    def ends(t):
        return [c.token_ids.index(t) if t in c.token_ids else n for c in free]

    def early_rows(t):
        e = ends(t)
        return sum(x < 12 for x in e) if max(e) > 16 else -1

    return [max(sorted({t for c in free for t in c.token_ids}), key=early_rows)]


def _assert_same_rows(got, ref):
    assert [c.token_ids for c in got] == [c.token_ids for c in ref]
    assert [c.finish_reason for c in got] == [c.finish_reason for c in ref]
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=2e-5)
        assert a.prompt_tokens == b.prompt_tokens


@pytest.mark.parametrize("shared", [0, 27])
@LLAMA_ONLY
def test_continuous_gives_the_static_rows_with_fewer_slot_steps(tiny, shared):
    """4 slots for 14 prompts that end at different steps: every row is the static
    sampler's (greedy, and seeded top-p), and the slots do less idle work."""
    cfg, params, tok = tiny
    prompts = _prompts(shared=shared)
    for settings in (
        SamplingSettings(max_new_tokens=24, temperature=0.0, batch_size=4),
        SamplingSettings(max_new_tokens=24, temperature=1.0, top_p=0.9, seed=5, batch_size=4),
    ):
        eos = _eos_ids(cfg, params, tok, prompts, settings)
        ref, static = _generate(cfg, params, tok, "static", prompts, settings, eos)
        got, cont = _generate(cfg, params, tok, "continuous", prompts, settings, eos, drain_min_slots=1)
        _assert_same_rows(got, ref)
        kept, wide = _generate(cfg, params, tok, "continuous", prompts, settings, eos)  # 4 slots throughout
        _assert_same_rows(kept, ref)
        lengths = [len(c.token_ids) for c in ref]
        assert min(lengths) < 12 and max(lengths) > 16, lengths  # the rows do end apart
        assert cont.tokens == wide.tokens == static.tokens and cont.rows == static.rows == len(prompts)
        assert wide.slot_steps < static.slot_steps and wide.utilisation > static.utilisation
        assert 0 < wide.utilisation <= 1 and wide.decode_steps * 4 == wide.slot_steps
        # The drain in fewer slots: the same decode steps, fewer of them idle.
        assert cont.decode_steps == wide.decode_steps and cont.slot_steps < wide.slot_steps
        assert wide.utilisation < cont.utilisation <= 1
        # Busy slot-steps are the decoded tokens: each row's first token comes from its prefill.
        assert 0 < cont.queued_busy_steps <= cont.queued_slot_steps < cont.slot_steps
        assert static.queued_slot_steps == 0 and static.utilisation_while_queued == 1.0


@pytest.mark.parametrize("mesh_shape", [(1, 1, 1), (1, 2, 4)])
@LLAMA_ONLY
def test_continuous_on_meshes_equals_static_on_one_device(tiny, mesh_shape):
    cfg, params, tok = tiny
    prompts = _prompts(10, shared=27)
    settings = SamplingSettings(max_new_tokens=16, temperature=1.0, top_p=0.9, seed=7, batch_size=4)
    eos = _eos_ids(cfg, params, tok, prompts, settings)
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ref, _ = _generate(
        cfg, jax.device_put(params, sharding.replicated(one)), tok, "static", prompts, settings, eos, one
    )
    if mesh_shape == (1, 1, 1):
        mesh, placed = one, jax.device_put(params, sharding.replicated(one))
    else:
        mesh = sharding.make_mesh(*mesh_shape)
        placed = jax.device_put(params, P.param_shardings(cfg, mesh))
    got, _ = _generate(cfg, placed, tok, "continuous", prompts, settings, eos, mesh)
    _assert_same_rows(got, ref)


@LLAMA_ONLY
def test_edge_cases_one_token_budget_fewer_prompts_than_slots_and_stop_strings(tiny):
    cfg, params, tok = tiny
    prompts = _prompts(5)
    for settings in (
        SamplingSettings(max_new_tokens=1, temperature=0.0, batch_size=4),  # every row ends at its prefill
        SamplingSettings(max_new_tokens=9, temperature=0.0, batch_size=32),  # 5 prompts: one batch
    ):
        ref, ref_stats = _generate(cfg, params, tok, "static", prompts, settings, [-1])
        got, stats = _generate(cfg, params, tok, "continuous", prompts, settings, [-1])
        _assert_same_rows(got, ref)
        assert all(len(c.token_ids) == settings.max_new_tokens for c in got)
    # Nothing queued behind the batch: it runs as the static batch it equals.
    assert (stats.decode_steps, stats.slot_steps) == (ref_stats.decode_steps, ref_stats.slot_steps)
    stop = ref[1].text[2:5]
    settings = SamplingSettings(max_new_tokens=9, temperature=0.0, batch_size=2, stop_strings=(stop,))
    ref, _ = _generate(cfg, params, tok, "static", prompts, settings, [-1])
    got, _ = _generate(cfg, params, tok, "continuous", prompts, settings, [-1])
    _assert_same_rows(got, ref)
    assert got[1].finish_reason == "stop" and stop not in got[1].text
    assert _generate(cfg, params, tok, "continuous", [], settings, [-1])[0] == []


@LLAMA_ONLY
def test_groups_start_in_order_and_each_row_is_reported_as_it_ends(tiny):
    """A stage's chunks as groups of one call: the same rows as without groups, every row
    handed to `on_done` once, and group 0's rows start (and so end) before group 2's."""
    cfg, params, tok = tiny
    prompts = _prompts()
    settings = SamplingSettings(max_new_tokens=20, temperature=1.0, top_p=0.9, seed=2, batch_size=4)
    eos = _eos_ids(cfg, params, tok, prompts, settings)
    ref, _ = _generate(cfg, params, tok, "static", prompts, settings, eos)
    gen = Generator(cfg, params, tok, batching="continuous")
    gen.eos_ids = np.asarray(eos, np.int32)
    groups = [k // 5 for k in range(len(prompts))]
    reported = []
    got = gen.generate(
        prompts, settings, progress=False, groups=groups, on_done=lambda i, c: reported.append((i, c))
    )
    _assert_same_rows(got, ref)
    assert sorted(i for i, _ in reported) == list(range(len(prompts)))
    assert all(c is got[i] for i, c in reported)
    ends = [groups[i] for i, _ in reported]
    assert max(k for k, g in enumerate(ends) if g == 0) < min(k for k, g in enumerate(ends) if g == 2)
    with pytest.raises(ValueError, match="2 groups for 14 prompts"):
        gen.generate(prompts, settings, progress=False, groups=[0, 1])


def _decode_compiles(records) -> int:
    """How many XLA compilations of `decode_segment` the log records under `jax.log_compiles`."""
    return sum("XLA compilation of jit(decode_segment)" in r.getMessage() for r in records)


@LLAMA_ONLY
@pytest.mark.fresh_compiles  # counts compilations
def test_the_decode_segment_compiles_once_per_stage_shape(tiny, caplog):
    """More prompts, other lengths in the same bucket, another chunking: no new decode compile;
    a compacted drain compiles once per halving of the slots, and only once."""
    cfg, params, tok = tiny
    gen = Generator(cfg, params, tok, batching="continuous")  # 4 slots: no compaction by default
    settings = SamplingSettings(max_new_tokens=10, temperature=1.0, seed=1, batch_size=4)
    gen.generate(_prompts(14), settings, progress=False)
    caplog.set_level(logging.WARNING)
    with jax.log_compiles():
        gen.generate(_prompts(9), settings, progress=False)
        gen.generate(_prompts(13)[3:], settings, row_ids=range(3, 13), progress=False)
        assert _decode_compiles(caplog.records) == 0
        # The 4 slots halve to 2 and 1 as the last rows drain: one program each, whatever the call.
        gen.drain_min_slots = 1
        for n in (14, 9, 13):
            gen.generate(_prompts(n), settings, progress=False)
    assert _decode_compiles(caplog.records) <= 2
    stats = gen.last_stats
    assert stats.rows == 13 and 13 <= stats.tokens <= 13 * 10 and 0 <= stats.compile_seconds <= stats.seconds


def test_a_per_row_cache_index_equals_the_shared_one(tiny):
    """decode_forward with index [B] (each row its own slot) equals a scalar index where they agree,
    and writes each row at its own slot where they differ."""
    cfg, params, _ = tiny
    params = unstack_layers(params)
    b, s = 3, 16
    tokens = jnp.asarray([[11], [12], [13]], jnp.int32)
    cache = init_cache(cfg, b, s)
    cache = cache._replace(valid=cache.valid.at[:, :5].set(True), index=jnp.int32(5))
    cache = cache._replace(k=tuple(k + 0.1 for k in cache.k), v=tuple(v + 0.2 for v in cache.v))
    pos = jnp.full((b, 1), 5, jnp.int32)
    ref, ref_cache = decode_forward(cfg, params, tokens, pos, jnp.ones_like(tokens), cache)
    rows = cache._replace(index=jnp.full((b,), 5, jnp.int32))
    got, got_cache = decode_forward(cfg, params, tokens, pos, jnp.ones_like(tokens), rows)
    np.testing.assert_allclose(got, ref, atol=1e-6)
    for a, r in zip(got_cache.k, ref_cache.k):
        np.testing.assert_allclose(a, r, atol=1e-6)
    # Row 1 at slot 7 with slots 5 and 6 invalid sees the same keys: the same logits.
    moved = rows._replace(index=jnp.asarray([5, 7, 5], jnp.int32))
    got, moved_cache = decode_forward(cfg, params, tokens, pos, jnp.ones_like(tokens), moved)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    np.testing.assert_allclose(moved_cache.k[0][1, :, 7], ref_cache.k[0][1, :, 5], atol=1e-6)
    assert moved_cache.valid[1].tolist() == [True] * 5 + [False, False, True] + [False] * 8
    with pytest.raises(ValueError, match="one new token per row"):
        decode_forward(cfg, params, jnp.ones((b, 2), jnp.int32), pos, jnp.ones((b, 2), jnp.int32), rows)
