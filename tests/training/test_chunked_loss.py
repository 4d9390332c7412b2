"""Chunked vocabulary cross-entropy: the unchunked loss and gradients to f32 round-off, with
no [rows, length, vocab] array left in the compiled train step."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import init_params
from isheep_jax.parallel import sharding
from isheep_jax.training import chunked_loss
from isheep_jax.training.optim import OptimizerConfig, make_optimizer
from isheep_jax.training.sft_data import MODEL_KEYS
from isheep_jax.training.train_step import TrainState, compile_train_step, loss_sums, state_shardings
from isheep_jax.training.trainer import TrainConfig

V, E = 1000, 64


def _cfg(tied: bool, **kw) -> ModelConfig:
    return ModelConfig(
        vocab_size=V,
        hidden_size=E,
        intermediate_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        tie_embeddings=tied,
        **kw,
    )


def _batch(rows: int, length: int, seed: int = 0) -> dict[str, jax.Array]:
    """Two packed segments in row 0, padding at the end of row 1, about a third of the
    tokens without loss weight."""
    rng = np.random.default_rng(seed)
    seg = np.ones((rows, length), np.int32)
    seg[0, length // 2 :] = 2
    seg[1, length - 7 :] = 0
    pos = np.zeros_like(seg)
    for r in range(rows):
        for s in np.unique(seg[r]):
            sel = seg[r] == s
            pos[r, sel] = np.arange(sel.sum()) if s else 0
    weights = ((rng.random((rows, length)) > 0.3) & (seg > 0)).astype(np.int32)
    return {
        "decoder_input_tokens": jnp.asarray(rng.integers(0, V, (rows, length)), jnp.int32),
        "decoder_target_tokens": jnp.asarray(rng.integers(0, V, (rows, length)), jnp.int32),
        "decoder_segment_ids": jnp.asarray(seg),
        "decoder_positions": jnp.asarray(pos),
        "decoder_loss_weights": jnp.asarray(weights),
    }


def _assert_trees_close(a, b, rtol=1e-5):
    """Every leaf within rtol of the largest magnitude of its reference leaf."""
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        scale = float(jnp.max(jnp.abs(y))) + 1e-30
        np.testing.assert_allclose(np.asarray(x) / scale, np.asarray(y) / scale, atol=rtol, rtol=0)


def _full_nll(hidden, weight, targets, tied):
    logits = jnp.einsum("bte,ve->btv" if tied else "bte,ev->btv", hidden, weight)
    return jax.nn.logsumexp(logits, -1) - jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_len", [1, 4, 5, 12, 50])  # 12 positions: dividing and not, and >= T
def test_token_nll_equals_the_full_logits(tied, chunk_len):
    b, t = 3, 12
    kh, kw, kt, km = jax.random.split(jax.random.key(0), 4)
    hidden = jax.random.normal(kh, (b, t, E))
    weight = jax.random.normal(kw, (V, E) if tied else (E, V)) * 0.1
    targets = jax.random.randint(kt, (b, t), 0, V)
    mask = (jax.random.uniform(km, (b, t)) > 0.3).astype(jnp.float32)  # masked tokens included

    def loss(f):
        return lambda h, w: jnp.sum(f(h, w) * mask)

    chunked = lambda h, w: chunked_loss.token_nll(h, w, targets, tied, "float32", chunk_len)  # noqa: E731
    full = lambda h, w: _full_nll(h, w, targets, tied)  # noqa: E731
    np.testing.assert_allclose(chunked(hidden, weight), full(hidden, weight), rtol=1e-5, atol=1e-5)
    got = jax.jit(jax.value_and_grad(loss(chunked), (0, 1)))(hidden, weight)
    ref = jax.jit(jax.value_and_grad(loss(full), (0, 1)))(hidden, weight)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-6)
    _assert_trees_close(got[1], ref[1])
    # A masked token gets no gradient, as in the full computation.
    assert float(jnp.abs(got[1][0][mask == 0]).max()) == 0.0


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("chunk_tokens", [6, 16, 100, 4096])  # 2 rows x 37: 3, 8, 37 (one chunk) positions
def test_chunked_loss_sums_equal_the_forward_logits(tied, chunk_tokens):
    """The whole model: final-norm hidden states from the forward, its head, its gradients."""
    cfg = _cfg(tied)
    params = init_params(cfg, sharding.make_mesh(devices=jax.devices()[:1]))
    batch = _batch(2, 37)

    def sums_and_grads(ct):
        return jax.jit(jax.value_and_grad(lambda p: loss_sums(cfg, p, batch, ct), has_aux=True))(params)

    (ref_sum, ref_count), ref_grads = sums_and_grads(0)
    (got_sum, got_count), got_grads = sums_and_grads(chunk_tokens)
    assert float(got_count) == float(ref_count) == float(batch["decoder_loss_weights"].sum())
    np.testing.assert_allclose(got_sum, ref_sum, rtol=1e-6)
    _assert_trees_close(got_grads, ref_grads)
    assert ("lm_head" in got_grads) != tied


def test_final_hidden_is_what_the_head_multiplies():
    from isheep_jax.model.params import forward

    cfg = _cfg(False)
    params = init_params(cfg, sharding.make_mesh(devices=jax.devices()[:1]))
    b = _batch(2, 9)
    args = b["decoder_input_tokens"], b["decoder_segment_ids"], b["decoder_positions"]
    hidden = chunked_loss.final_hidden(cfg, params, *args)
    assert hidden.shape == (2, 9, E)
    logits = forward(cfg, params, args[0], segment_ids=args[1], positions=args[2])
    np.testing.assert_allclose(hidden @ params["lm_head"]["kernel"], logits, rtol=1e-5, atol=1e-5)


def test_chunk_length():
    assert chunked_loss.chunk_length(8, 400, 0) == 400  # 0: unchunked
    assert chunked_loss.chunk_length(8, 400, 1024) == 128
    assert chunked_loss.chunk_length(8, 400, 4) == 1  # at least one position per chunk
    assert chunked_loss.chunk_length(2, 37, 1024) == 37  # at most the whole row
    with pytest.raises(ValueError, match="chunk_tokens must be >= 0"):
        chunked_loss.chunk_length(8, 400, -1)
    with pytest.raises(ValueError, match="loss_chunk_tokens must be >= 0"):
        TrainConfig(loss_chunk_tokens=-1)
    assert TrainConfig().loss_chunk_tokens == 1024


def _vocab_arrays(hlo: str) -> list[int]:
    """Element counts of every f32 array in an HLO text that has a vocab-sized dimension."""
    shapes = [tuple(int(d) for d in m.split(",")) for m in re.findall(r"f32\[([\d,]+)\]", hlo)]
    return [int(np.prod(s)) for s in shapes if V in s]


@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.fresh_compiles  # reads the optimised HLO
def test_compiled_step_never_holds_the_full_logits(tied):
    rows, length, chunk_tokens = 8, 256, 512  # chunks of 64 positions
    cfg = _cfg(tied)
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    opt = make_optimizer(OptimizerConfig(), 10)
    abstract, _ = state_shardings(cfg, opt, mesh)
    batch = {k: jax.ShapeDtypeStruct((1, rows, length), jnp.int32) for k in MODEL_KEYS}

    def largest(ct):
        compiled = compile_train_step(cfg, opt, mesh, (1, rows, length), loss_chunk_tokens=ct)
        return max(_vocab_arrays(compiled.lower(abstract, batch).compile().as_text()))

    assert largest(0) == rows * length * V  # the check sees the full logits where they are
    assert largest(chunk_tokens) == max(chunk_tokens * V, E * V)  # a chunk's logits, or the head


def test_chunked_step_on_a_mesh_equals_the_unchunked_one_on_one_device():
    """Rows over data/fsdp and the vocabulary over tensor (`act_vocab`): the same step."""
    cfg = _cfg(True)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-3, warmup_steps=0, warmup_ratio=0.0, eps=1e-6), 10)
    batch = {k: v.reshape(2, 2, -1) for k, v in _batch(4, 24).items()}  # 2 micro-batches of 2 rows

    def one_step(mesh, ct):
        _, shard = state_shardings(cfg, opt, mesh)
        params = init_params(cfg, mesh)
        state = TrainState(
            jnp.zeros((), jnp.int32), params, jax.jit(opt.init, out_shardings=shard.opt_state)(params)
        )
        step = compile_train_step(cfg, opt, mesh, batch["decoder_input_tokens"].shape, loss_chunk_tokens=ct)
        state, m = step(state, batch)
        return jax.device_get(state.params), jax.device_get(m)

    ref_params, ref_m = one_step(sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]), 0)
    params, m = one_step(sharding.make_mesh(1, 2, 4), 10)  # 5 positions per chunk: 5 chunks, padded
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), params, ref_params)
