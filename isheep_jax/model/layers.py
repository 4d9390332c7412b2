"""Pure building blocks of the transformer: RMSNorm math, RoPE, masks, attention.

One choice is made while tracing: a decode step's attention on one CPU device runs as the
C++ kernel of `backends.cpu.kernels` (see `_cpu_kernel_applies`), everywhere else as the XLA code here.

RoPE uses the Hugging Face half-split (`rotate_half`) layout, so Hugging Face weights
convert without permuting Q/K (llama.cpp's GGUF files are un-permuted on import).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from isheep_jax.backends.cpu import kernels
from isheep_jax.parallel import sharding

# A large finite negative: fully masked rows (padding queries) stay finite, never NaN.
MASK_VALUE = -0.7 * float(np.finfo(np.float32).max)


def rms_norm(x: jax.Array, scale: jax.Array, eps: float, dtype: Any) -> jax.Array:
    """RMSNorm computed in f32 like Hugging Face's LlamaRMSNorm, cast to `dtype`.

    The normalised values are cast to `dtype` before the scale multiplies them (as in
    LlamaRMSNorm).

    Args:
      x: [..., hidden] in any float dtype.
      scale: [hidden], the learned scale.
      eps: added to the mean square before the reciprocal square root.
      dtype: the output (compute) dtype.

    Returns:
      [..., hidden] in `dtype`.
    """
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return y.astype(dtype) * scale.astype(dtype)


def rope_inv_freq(head_dim: int, theta: float, scaling: Mapping[str, Any] | None) -> np.ndarray:
    """Inverse frequencies [head_dim // 2], with Llama-3 or linear scaling as in transformers.

    Args:
      head_dim: the per-head dimension D (even).
      theta: the RoPE base.
      scaling: None or empty for no scaling, else a mapping with `rope_type` 'linear'
        (and `factor`) or 'llama3' (and `factor`, `low_freq_factor`, `high_freq_factor`,
        `original_max_position_embeddings`).

    Returns:
      inv_freq [head_dim // 2] float32 (numpy, a constant while tracing).

    Raises:
      ValueError: `rope_type` is neither 'linear' nor 'llama3'.
    """
    inv = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    if not scaling:
        return inv.astype(np.float32)
    kind = scaling.get("rope_type")
    factor = float(scaling["factor"])
    if kind == "linear":
        return (inv / factor).astype(np.float32)
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_ctx = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > old_ctx / low, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_ctx / high) & (wavelen <= old_ctx / low)
        return np.where(medium, smoothed, scaled).astype(np.float32)
    raise ValueError(f"unsupported rope_type {kind!r}")


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: np.ndarray) -> jax.Array:
    """Rotates x by positions in the half-split (`rotate_half`) layout, computed in f32.

    Args:
      x: [batch, length, heads, head_dim] queries or keys.
      positions: [batch, length] int.
      inv_freq: [head_dim // 2] float32 (`rope_inv_freq`).

    Returns:
      [batch, length, heads, head_dim] in `x`'s dtype.
    """
    freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]  # [B, T, 1, D]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(emb) + rotated * jnp.sin(emb)).astype(x.dtype)


def segment_causal_mask(segment_ids: jax.Array, parent_ids: jax.Array | None = None) -> jax.Array:
    """Attention mask: causal, within one segment (or into its parent), never a padding key.

    A padding query sees no key at all (its row is fully masked; see `MASK_VALUE`). With
    `parent_ids`, a row holds prompt trees: a segment that names a parent also sees that
    parent's tokens before it (a prefix its sibling segments share), never its siblings'.

    Args:
      segment_ids: [batch, T] int; 0 marks padding.
      parent_ids: [batch, T] int, the segment each token's segment continues (0: none), or
        None: no segment has a parent.

    Returns:
      mask [batch, 1, T, T] bool, True where query t may attend to key s.
    """
    t = segment_ids.shape[1]
    causal = jnp.tril(jnp.ones((t, t), dtype=bool))
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    if parent_ids is not None:
        same = same | (parent_ids[:, :, None] == segment_ids[:, None, :])
    valid_key = (segment_ids != 0)[:, None, :]
    return (causal[None] & same & valid_key)[:, None]


def cache_mask(kv_valid: jax.Array, cache_index: jax.Array, num_queries: int) -> jax.Array:
    """Mask for T new queries at slots cache_index.. over a cache of S slots.

    Args:
      kv_valid: [batch, S] bool, the slots that hold a real key (the new tokens' included).
      cache_index: int32, the slot of the first new query: a scalar (the same for every
        row) or [batch] (each row its own, as in continuous batching).
      num_queries: T, the number of new queries.

    Returns:
      mask [batch, 1, T, S] bool: query t sees valid slots up to cache_index + t.
    """
    s = kv_valid.shape[1]
    q_slot = jnp.reshape(cache_index, (-1, 1)) + jnp.arange(num_queries)  # [1 or batch, T]
    causal = jnp.arange(s)[None, None, :] <= q_slot[:, :, None]  # [1 or batch, T, S]
    return (causal & kv_valid[:, None, :])[:, None]


def causal_blocks(t: int) -> int:
    """Query blocks for causal self-attention over T tokens (see `attention`).

    From T = 256 on: one block per 128 queries, at most 8 (past that the per-block overhead
    eats the saving); `causal_block_bounds` cuts T into that many nearly equal blocks, so T
    need not be a multiple of anything (a prompt bucket less a shared prefix is not).

    Args:
      t: the number of queries T.

    Returns:
      The number of blocks n (1: no split).
    """
    return 1 if t < 256 else min(t // 128, 8)


def causal_block_bounds(t: int) -> list[tuple[int, int]]:
    """The (start, end) of each of `causal_blocks(t)` query blocks: nearly equal, covering T."""
    n = causal_blocks(t)
    return [(i * t // n, (i + 1) * t // n) for i in range(n)]


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, causal: bool = False) -> jax.Array:
    """Grouped-query attention, scores and softmax in f32.

    With causal=True the queries are cut into `causal_blocks(T)` blocks, each scoring only
    the keys up to its own end: the same result without most of the masked upper triangle
    ((n + 1) / 2n of the work for n blocks when S = T). A single query (T = 1) that is not
    causal runs as the C++ kernel `kernels.decode_attention` where `_cpu_kernel_applies`
    (f32 operands, one CPU device), else as `_decode_attention`.

    Args:
      q: [batch, T, heads, D].
      k: [batch, kv_heads, S, D]; heads is a multiple of kv_heads.
      v: [batch, kv_heads, S, D].
      mask: [batch, 1, T, S] bool, True where a query may attend to a key.
      causal: the caller guarantees that the last T keys are the queries' own tokens, with
        a mask that hides every one of them after its query, and that the first S - T keys
        (a prompt prefix already in the cache, or none) come before all queries (training,
        a prompt's prefill).

    Returns:
      [batch, T, heads, D] in `v`'s dtype.

    Raises:
      ValueError: causal=True with fewer keys than queries (S < T, T > 1).
    """
    b, t, h, d = q.shape
    kvh, g = k.shape[1], h // k.shape[1]
    if t == 1:
        # Only a cached decode step (causal=False) takes the kernel: it has no gradient, and a
        # length-1 training or scoring forward (causal) must stay differentiable.
        if not causal and _cpu_kernel_applies(q, k, v):
            mask = jnp.broadcast_to(mask, (b, 1, 1, k.shape[2]))
            return jax.lax.platform_dependent(
                q, k, v, mask, cpu=kernels.decode_attention, default=_decode_attention
            )
        return _decode_attention(q, k, v, mask)
    before = k.shape[2] - t  # keys every query sees (causal)
    if causal and before < 0:
        raise ValueError(f"causal attention needs at least as many keys as queries, got {k.shape[2]} and {t}")
    # Scale q (T x D values), not the scores (T x S); the G query heads that share a kv head
    # become extra query rows: one [G * T, D] x [D, S] product per (batch, kv head).
    q = (q * np.asarray(1 / np.sqrt(d), q.dtype)).reshape(b, t, kvh, g, d).transpose(0, 2, 3, 1, 4)
    bias = jnp.where(mask, jnp.float32(0), jnp.float32(MASK_VALUE))  # [B, 1, T, S]
    outs = []
    for lo, hi in causal_block_bounds(t) if causal else [(0, t)]:
        size, keys = hi - lo, before + hi if causal else k.shape[2]
        qi = q[:, :, :, lo:hi].reshape(b, kvh, g * size, d)
        bi = jnp.broadcast_to(bias[:, :, None, lo:hi, :keys], (b, 1, g, size, keys)).reshape(
            b, 1, g * size, keys
        )
        scores = jnp.einsum("bkqd,bksd->bkqs", qi, k[:, :, :keys], preferred_element_type=jnp.float32) + bi
        probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
        outs.append(jnp.einsum("bkqs,bksd->bkqd", probs, v[:, :, :keys]).reshape(b, kvh, g, size, d))
    out = outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=3)
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d)


def fused_attention(
    q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array, implementation: str | None = "cudnn"
) -> jax.Array:
    """`attention` through `jax.nn.dot_product_attention` (cuDNN's fused kernel on NVIDIA GPUs).

    Args:
      q: [batch, T, heads, D].
      k: [batch, T, kv_heads, D] (the projections' layout, before `attention`'s transpose).
      v: [batch, T, kv_heads, D].
      mask: [batch, 1, T, T] bool, True where a query may attend to a key.
      implementation: passed to `jax.nn.dot_product_attention` ('cudnn', 'xla', or None
        to let JAX choose).

    Returns:
      [batch, T, heads, D] in the operands' dtype.
    """
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def _cpu_kernel_applies(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether decode attention runs as `kernels.decode_attention` when lowered for the
    CPU: f32 operands, and one device (the custom call has no partitioning rule, so over a
    mesh XLA would gather the cache onto every device; meshes keep XLA's formulation)."""
    return (
        jax.default_backend() == "cpu"
        and sharding.mesh_size() == 1
        and kernels.decode_attention_supported(q, k, v)
        and kernels.available()
    )


def _decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """`attention` for one new token per row, as products and sums instead of dots.

    A decode step reads the whole cache for a few flops per element: memory bound. XLA:CPU
    streams the cache slowly through [group, D] x [D, S] batched dots, while it fuses a
    product and a reduction into one pass at memory speed (measurements:
    benchmarks/HISTORY.md). Accumulation in f32, like the dots.

    q [batch, 1, heads, D]; k, v [batch, kv_heads, S, D]; mask [batch, 1, 1, S] bool.
    Returns [batch, 1, heads, D] in `v`'s dtype.
    """
    b, _, h, d = q.shape
    kvh = k.shape[1]
    qg = q.reshape(b, kvh, h // kvh, 1, d).astype(jnp.float32)  # [B, K, G, 1, D]
    scores = jnp.sum(qg * k[:, :, None].astype(jnp.float32), axis=-1)  # [B, K, G, S]
    scores = scores / np.sqrt(d).astype(np.float32)
    scores = jnp.where(mask[:, :, 0, None, :], scores, MASK_VALUE)  # mask [B, 1, 1, S]
    probs = jax.nn.softmax(scores, axis=-1)
    out = jnp.sum(probs[..., None] * v[:, :, None].astype(jnp.float32), axis=3)  # [B, K, G, D]
    return out.astype(v.dtype).reshape(b, 1, h, d)
