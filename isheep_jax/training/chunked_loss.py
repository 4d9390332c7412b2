"""Token-level cross-entropy over the vocabulary in chunks of positions.

The full forward's f32 logits [rows, length, vocab] are the largest activation of a small
model's train step: 8 x 400 x 49152 x 4 bytes = 630 MB for SmolLM2-135M, and the
backward pass holds their gradient (softmax minus one-hot) as large again. Here the loss
starts from the final-norm hidden states [rows, length, hidden] instead; the head's
matmul, logsumexp and target logit run on one chunk of positions at a time (`lax.map`),
and each chunk is `jax.checkpoint`ed, so the backward pass recomputes that chunk's logits
instead of keeping every chunk's. At most one chunk's logits and their gradient are alive.

The hidden states come from the model's own forward (`final_hidden`, flax's
`capture_intermediates`), so they are bit for bit the ones the head sees there; the
forward's own head (its [rows, length, vocab] logits) is then dead code that XLA removes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import Params
from isheep_jax.model.transformer import Transformer
from isheep_jax.parallel.sharding import constrain

# The module whose output the head multiplies: Transformer's final RMSNorm (its params live
# under params["final_norm"]).
_FINAL_NORM = ("final_norm",)


def _is_final_norm(module, method_name: str) -> bool:
    """capture_intermediates filter: only the top-level final norm's output is recorded."""
    return method_name == "__call__" and module.path == _FINAL_NORM


def final_hidden(
    cfg: ModelConfig, params: Params, tokens: jax.Array, segment_ids: jax.Array, positions: jax.Array
) -> jax.Array:
    """The final-norm hidden states of the full forward: what the output head multiplies.

    Runs `Transformer` as `params.forward` does and records its final norm's output. The
    logits the module returns are dropped: under `jit` XLA removes their computation.

    Args:
      cfg: the model configuration.
      params: the parameter tree (stacked over `layers`).
      tokens: [B, T] int32.
      segment_ids: [B, T] int32; 0 marks padding.
      positions: [B, T] int32, the RoPE positions.

    Returns:
      hidden [B, T, E] in the compute dtype.

    Raises:
      RuntimeError: the model has no top-level module named 'final_norm' (its layout changed).
    """
    _, state = Transformer(cfg).apply(
        {"params": params},
        tokens,
        positions,
        segment_ids,
        capture_intermediates=_is_final_norm,
        mutable=["intermediates"],
    )
    try:
        (hidden,) = state["intermediates"]["final_norm"]["__call__"]
    except (KeyError, ValueError) as e:
        raise RuntimeError(
            "Transformer has no single top-level 'final_norm' call to read hidden states from"
        ) from e
    return hidden


def head_weight(cfg: ModelConfig, params: Params) -> tuple[jax.Array, bool]:
    """The output head's weight and whether it is the tied embedding.

    Args:
      cfg: the model configuration (`tie_embeddings`).
      params: the parameter tree.

    Returns:
      (lm_head kernel [E, V], False), or (the embedding [V, E], True) for a tied head.
    """
    if cfg.tie_embeddings:
        return params["embed"]["embedding"], True
    return params["lm_head"]["kernel"], False


def chunk_length(rows: int, length: int, chunk_tokens: int) -> int:
    """Positions per chunk: `chunk_tokens` tokens over all `rows` of a micro-batch.

    Args:
      rows: B, the rows of the micro-batch (over the whole mesh).
      length: T, the positions per row.
      chunk_tokens: the tokens whose logits may exist at once; 0: all of them (one chunk).

    Returns:
      C in [1, T]: chunk_tokens // rows, at least 1 and at most T; T when chunk_tokens is 0.

    Raises:
      ValueError: chunk_tokens is negative.
    """
    if chunk_tokens < 0:
        raise ValueError(f"chunk_tokens must be >= 0, got {chunk_tokens}")
    if chunk_tokens == 0:
        return length
    return max(1, min(length, chunk_tokens // rows))


def _chunk_nll(x: jax.Array, weight: jax.Array, targets: jax.Array, tied: bool, dtype) -> jax.Array:
    """NLL [B, C] f32 of one chunk: x [B, C, E], weight [V, E] (tied) or [E, V], targets [B, C].

    The head's matmul mirrors the model's (`transformer.tied_logits`, and `Projection`'s one
    [tokens, E] x [E, V] dot), in the compute dtype, then f32 like its logits.
    """
    b, c, e = x.shape
    x = x.astype(dtype)
    if tied:
        logits = jnp.einsum("bce,ve->bcv", x, weight)
    else:
        logits = jnp.dot(x.reshape(b * c, e), weight).reshape(b, c, -1)
    logits = constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))
    logz = jax.nn.logsumexp(logits, axis=-1)
    target = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
    return logz - target


def token_nll(
    hidden: jax.Array, weight: jax.Array, targets: jax.Array, tied: bool, dtype, chunk_len: int
) -> jax.Array:
    """-log p(target) at every position, the logits built `chunk_len` positions at a time.

    The positions are padded up to a multiple of `chunk_len` (the padding's NLL is cut off
    again); the chunks run one after another, each under `jax.checkpoint`, so neither the
    forward nor the backward pass keeps more than one chunk's [B, chunk_len, V] logits.

    Args:
      hidden: [B, T, E] final-norm hidden states (`final_hidden`).
      weight: the head: the embedding [V, E] when `tied`, else the lm_head kernel [E, V].
      targets: [B, T] int target token ids.
      tied: whether `weight` is the tied embedding [V, E].
      dtype: the compute dtype of the head's matmul (the model config's `dtype`).
      chunk_len: C, positions per chunk (`chunk_length`); C >= T is one chunk.

    Returns:
      nll [B, T] float32.

    Raises:
      ValueError: chunk_len < 1.
    """
    if chunk_len < 1:
        raise ValueError(f"chunk_len must be >= 1, got {chunk_len}")
    b, t, e = hidden.shape
    c = min(chunk_len, t)
    n = -(-t // c)
    pad = n * c - t
    # Chunks along the positions, rows kept whole: each chunk keeps the batch sharding.
    xs = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0))).reshape(b, n, c, e).swapaxes(0, 1)  # [n, B, C, E]
    ys = jnp.pad(targets, ((0, 0), (0, pad))).reshape(b, n, c).swapaxes(0, 1)  # [n, B, C]
    w = weight.astype(dtype)  # cast once, not once per chunk
    body = jax.checkpoint(functools.partial(_chunk_nll, tied=tied, dtype=jnp.dtype(dtype)))
    nll = jax.lax.map(lambda xy: body(xy[0], w, xy[1]), (xs, ys))  # [n, B, C]
    return nll.swapaxes(0, 1).reshape(b, n * c)[:, :t]
