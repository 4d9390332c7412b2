"""Token choice: how one token per row is chosen from one step's logits (greedy, temperature, top-k, top-p).

This layer knows nothing of prompts, caches or loops: its pure functions take a step's
logits [batch, vocab] and per-row PRNG keys and return [batch] tokens. The loop that calls
them step after step is `sampling.decode_loop`; the batch driver is `sampling.generator`.

Order (same as transformers' default warpers): temperature scales the logits first, then
top-k keeps the k most likely tokens, then top-p keeps the most likely tokens whose mass
reaches p (the most likely token is always kept; tokens tied at the cut-off are all
kept). All settings are traced values, so changing them never recompiles.

No full sort of the vocabulary: XLA:CPU sorts a [batch, vocab] array slowly compared with
the rest of a decode step (measurements: benchmarks/HISTORY.md). The top-k cut-off is
found by bisection on a threshold (`_bisect`, 32 halvings: exact to f32 resolution); the
top-p draw is a rejection sampler that never needs its cut-off (`sample_top_p`;
`top_p_mask` is the nucleus it samples from), and tokens are drawn by inverse CDF in
vocabulary order. A row's random stream depends only on (seed, row id, step), so results
do not depend on batching or on the mesh.
"""

from __future__ import annotations

from collections.abc import Callable

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
    """Marks the logits at or above the k-th largest of each row (top-k).

    Args:
      logits: [batch, vocab] float logits.
      k: scalar int32, traced; k <= 0 disables top-k.

    Returns:
      [batch, vocab] bool, True where a token is kept (all True when k <= 0). Ties at the
      k-th largest value are all kept, so a row may keep more than k tokens.
    """

    def cut(logits):
        hi = jnp.max(logits, -1)
        # Bisect over the finite logits: a -inf bound (a masked token) never halves.
        lo = jnp.min(jnp.where(jnp.isfinite(logits), logits, hi[:, None]), -1)
        t = _bisect(lo, hi, lambda t: jnp.sum(logits >= t[:, None], -1) >= k)
        return logits >= t[:, None]

    return jax.lax.cond(k > 0, cut, lambda l: jnp.ones(l.shape, bool), logits)


def top_p_mask(probs: jax.Array, p: jax.Array) -> jax.Array:
    """Marks the most likely tokens whose total probability reaches p (the top-p nucleus).

    The nucleus `sample_top_p` draws from (which never computes it); kept as its reference.

    Args:
      probs: [batch, vocab] float probabilities, each row summing to 1.
      p: scalar float, traced; p >= 1 disables top-p.

    Returns:
      [batch, vocab] bool, True where a token is in the nucleus (all True when p >= 1).
    """

    def cut(probs):
        hi = jnp.max(probs, -1)
        t = _bisect(
            jnp.zeros_like(hi), hi, lambda t: jnp.sum(jnp.where(probs >= t[:, None], probs, 0.0), -1) >= p
        )
        return probs >= t[:, None]

    return jax.lax.cond(p < 1.0, cut, lambda x: jnp.ones(x.shape, bool), probs)


def greedy_tokens(logits: jax.Array) -> jax.Array:
    """Greedy choice: the argmax of each row (the first of tied maxima).

    Computed as a max and a min rather than `jnp.argmax`: XLA:CPU lowers argmax as a
    two-output reduction, which is slower than two single-output ones (measurements:
    benchmarks/HISTORY.md).

    Args:
      logits: [batch, vocab] float logits.

    Returns:
      [batch] int32 token ids; a row of all NaN gives the last token id (vocab - 1).
    """
    v = logits.shape[-1]
    top = jnp.max(logits, axis=-1, keepdims=True)
    first = jnp.min(jnp.where(logits == top, jnp.arange(v, dtype=jnp.int32), v), axis=-1)
    return jnp.minimum(first, v - 1)  # an all-NaN row: the last token rather than out of range


_BLOCK = 128


def inverse_cdf(weights: jax.Array, u: jax.Array) -> jax.Array:
    """Draws by inverse CDF: per row, the index i with cdf[i-1] <= u < cdf[i].

    Two levels (block sums, then one block) instead of a cumulative sum over the vocabulary,
    which XLA:CPU runs as a slow reduce-window. Never returns a zero-weight index, even when
    round-off puts u at or past the total (a row of all-zero weights gives index 0).

    Args:
      weights: [batch, vocab] float, >= 0, not necessarily normalised.
      u: [batch] float in [0, total), total being the row's sum of weights.

    Returns:
      [batch] int32 indices into the vocabulary.
    """
    b, v = weights.shape
    nb = -(-v // _BLOCK)
    w = jnp.pad(weights, ((0, 0), (0, nb * _BLOCK - v))).reshape(b, nb, _BLOCK)
    block = jnp.sum(w, axis=-1)  # [B, nb]
    cum = jnp.cumsum(block, axis=-1)
    last_block = jnp.max(jnp.where(block > 0, jnp.arange(nb), 0), axis=-1)
    j = jnp.minimum(jnp.sum(cum <= u[:, None], axis=-1), last_block)
    before = jnp.where(j > 0, jnp.take_along_axis(cum, jnp.maximum(j - 1, 0)[:, None], axis=1)[:, 0], 0.0)
    inner = jnp.take_along_axis(w, j[:, None, None], axis=1)[:, 0]  # [B, block]
    last_in = jnp.max(jnp.where(inner > 0, jnp.arange(_BLOCK), 0), axis=-1)
    i = jnp.minimum(jnp.sum(before[:, None] + jnp.cumsum(inner, axis=-1) <= u[:, None], axis=-1), last_in)
    return (j * _BLOCK + i).astype(jnp.int32)


def sample_top_p(probs: jax.Array, keys: jax.Array, p: jax.Array) -> jax.Array:
    """Draws one token per row exactly from its top-p nucleus (`top_p_mask`) without finding its cut-off.

    Rejection, as FlashInfer samples: draw x from the tokens more likely than `low`
    (initially all); x is in the nucleus iff the tokens strictly more likely than x hold
    less than p; otherwise raise `low` to p(x) and draw again. An accepted draw is
    distributed as the nucleus renormalised; a round costs about three passes over the
    vocabulary (a threshold bisection costs 32). A row rejects with probability about
    1 - p per round, and the loop runs until every row has accepted, so a batch of 64 at
    p = 0.95 needs about 2-3 rounds. Round r of a row uses fold_in(key, r), so a row's token
    depends only on its own key. A p <= 0 degrades to greedy (the most likely tokens are
    always accepted) rather than looping forever.

    Args:
      probs: [batch, vocab] float probabilities (after temperature and top-k).
      keys: [batch] PRNG keys, one per row for this step.
      p: scalar float, traced; p >= 1 accepts every draw (plain sampling from `probs`).

    Returns:
      [batch] int32 token ids.
    """
    b = probs.shape[0]

    def cond(c):
        return ~jnp.all(c[3])

    def body(c):
        r, low, tok, done = c
        w = jnp.where(probs > low[:, None], probs, 0.0)
        u = jax.vmap(lambda k: jax.random.uniform(jax.random.fold_in(k, r), ()))(keys) * jnp.sum(w, -1)
        x = inverse_cdf(w, u)
        px = jnp.take_along_axis(probs, x[:, None], axis=1)[:, 0]
        above = jnp.sum(jnp.where(probs > px[:, None], probs, 0.0), axis=-1)
        # The most likely tokens (nothing above them) are always in the nucleus, whatever p:
        # a p <= 0 from a direct caller degrades to greedy rather than looping forever.
        accept = (above < p) | (p >= 1.0) | (above <= 0.0)
        tok = jnp.where(~done & accept, x, tok)
        low = jnp.where(done | accept, low, px)
        return r + 1, low, tok, done | accept

    init = (
        jnp.zeros((), jnp.int32),
        jnp.full((b,), -1.0, probs.dtype),
        jnp.zeros((b,), jnp.int32),
        jnp.zeros((b,), bool),
    )
    return jax.lax.while_loop(cond, body, init)[2]


def sample_tokens(
    logits: jax.Array, keys: jax.Array, temperature: jax.Array, top_k: jax.Array, top_p: jax.Array
) -> jax.Array:
    """Chooses one token per row: greedy, or temperature, then top-k, then top-p sampling.

    Args:
      logits: [batch, vocab] f32 raw logits of one step.
      keys: [batch] PRNG keys, one per row for this step (`row_step_keys`).
      temperature: scalar f32, traced; temperature <= 0 means greedy (keys unused).
      top_k: scalar int32, traced; top_k <= 0 disables top-k.
      top_p: scalar f32, traced; top_p >= 1 disables top-p.

    Returns:
      [batch] int32 token ids.
    """

    def sample(logits):
        scaled = logits / temperature
        keep = top_k_mask(scaled, top_k)
        probs = jax.nn.softmax(jnp.where(keep, scaled, -jnp.inf), axis=-1)
        return sample_top_p(probs, keys, top_p)

    return jax.lax.cond(temperature > 0, sample, greedy_tokens, logits)


def token_logprobs(logits: jax.Array, tokens: jax.Array) -> jax.Array:
    """Log-probability of each row's token under the model's raw distribution.

    No temperature or truncation is applied. The token's logit minus the row's logsumexp:
    no [batch, vocab] log-softmax is written.

    Args:
      logits: [batch, vocab] f32 raw logits.
      tokens: [batch] int32 token ids.

    Returns:
      [batch] f32 log p(token).
    """
    picked = jnp.take_along_axis(logits, tokens[:, None], axis=-1)[:, 0]
    return picked - jax.nn.logsumexp(logits, axis=-1)


def row_step_keys(row_keys: jax.Array, step: jax.Array) -> jax.Array:
    """Per-row keys for one decoding step: folds the step into each row's key.

    Args:
      row_keys: [batch] PRNG keys, one per row (keyed by seed and row id).
      step: int32, the index of the token being generated: a scalar, or [batch] (each
        row its own, as in continuous batching).

    Returns:
      [batch] PRNG keys for this step.
    """
    return jax.vmap(jax.random.fold_in)(row_keys, jnp.broadcast_to(step, row_keys.shape))
