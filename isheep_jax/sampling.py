"""Choosing the next token from logits: greedy, temperature, top-k, top-p. Pure functions.

Order (same as transformers' default warpers): temperature scales the logits first, then
top-k keeps the k most likely tokens, then top-p keeps the most likely tokens whose mass
reaches p (the most likely token is always kept; tokens tied at the cut-off are all
kept). All settings are traced values, so changing them never recompiles.

No full sort of the vocabulary: XLA's CPU sort of [batch, 49k] costs more than the whole
forward pass. The top-k and top-p cut-offs are found by bisection on a threshold
(`_bisect`, 32 halvings: exact to f32 resolution), and the token is drawn by inverse CDF
in vocabulary order with one uniform number per row. A row's random stream depends only
on (seed, row id, step), so results do not depend on batching or on the mesh.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

_BISECT_STEPS = 32


def _bisect(lo: jax.Array, hi: jax.Array, ok: Callable[[jax.Array], jax.Array]) -> jax.Array:
    """Largest t in [lo, hi] (per row) with ok(t) true, assuming ok is monotone decreasing in t."""
    def body(_, c):
        lo, hi = c
        mid = (lo + hi) / 2
        good = ok(mid)
        return jnp.where(good, mid, lo), jnp.where(good, hi, mid)
    lo, hi = jax.lax.fori_loop(0, _BISECT_STEPS, body, (lo, hi))
    return jnp.where(ok(hi), hi, lo)


def top_k_mask(logits: jax.Array, k: jax.Array) -> jax.Array:
    """[B, V] bool: logits at or above the k-th largest of each row (all when k <= 0)."""
    def cut(logits):
        lo, hi = jnp.min(logits, -1), jnp.max(logits, -1)
        t = _bisect(lo, hi, lambda t: jnp.sum(logits >= t[:, None], -1) >= k)
        return logits >= t[:, None]
    return jax.lax.cond(k > 0, cut, lambda l: jnp.ones(l.shape, bool), logits)


def top_p_mask(probs: jax.Array, p: jax.Array) -> jax.Array:
    """[B, V] bool: the most likely tokens whose total probability reaches p (all when p >= 1)."""
    def cut(probs):
        hi = jnp.max(probs, -1)
        t = _bisect(jnp.zeros_like(hi), hi,
                    lambda t: jnp.sum(jnp.where(probs >= t[:, None], probs, 0.0), -1) >= p)
        return probs >= t[:, None]
    return jax.lax.cond(p < 1.0, cut, lambda x: jnp.ones(x.shape, bool), probs)


def sample_tokens(logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array,
                  top_p: jax.Array) -> jax.Array:
    """logits [batch, vocab] f32; keys [batch] PRNG keys; temperature <= 0 means greedy.

    top_k <= 0 disables top-k; top_p >= 1 disables top-p. Returns tokens [batch] int32.
    """
    def sample(logits):
        scaled = logits / temperature
        keep = top_k_mask(scaled, top_k)
        probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
        probs = jnp.where(top_p_mask(probs, top_p), probs, 0.0)
        cdf = jnp.cumsum(probs, axis=-1)
        u = jax.vmap(lambda k: jax.random.uniform(k, ()))(keys) * cdf[:, -1]
        idx = jnp.sum(cdf <= u[:, None], axis=-1)
        # Round-off can put u past the last kept token: take the last token with mass.
        last = logits.shape[-1] - 1 - jnp.argmax(jnp.flip(probs > 0, -1), axis=-1)
        return jnp.minimum(idx, last).astype(jnp.int32)

    greedy = lambda logits: jnp.argmax(logits, axis=-1).astype(jnp.int32)
    return jax.lax.cond(temperature > 0, sample, greedy, logits)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """log p(token) under the model's raw distribution (no temperature/truncation). [batch]"""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return jnp.take_along_axis(logp, tokens[:, None], axis=-1)[:, 0]


def row_step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
    """Per-row keys for one decoding step: fold the step into each row's key."""
    return jax.vmap(lambda k: jax.random.fold_in(k, step))(row_keys)
