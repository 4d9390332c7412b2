"""The decoder-only transformer (Llama 1/2/3, Qwen2/Qwen1.5) in flax linen.

Layers are stacked with `nn.scan` (one compiled layer body, or unrolled with
`ModelConfig.scan_layers=False`; params with a leading `layers` axis either way); every
parameter carries logical axis names. The same parameters serve the full forward pass (training,
with packing via segment ids) and cached decoding.

Parameter tree (shapes; L = layers, V = vocab, E = hidden, F = MLP width, H = heads,
K = kv heads, D = head dim):
  embed/embedding [V, E]
  layers/attn/{q_proj [L,E,H,D], k_proj, v_proj [L,E,K,D], o_proj [L,H,D,E]}/kernel (+ bias)
  layers/mlp/{gate_proj, up_proj [L,E,F], down_proj [L,F,E]}/kernel
  layers/{input_norm, post_attn_norm}/scale [L, E]
  final_norm/scale [E];  lm_head/kernel [E, V] (absent when embeddings are tied)
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from isheep_jax.model import layers
from isheep_jax.model.config import ModelConfig
from isheep_jax.parallel.sharding import constrain

_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Decoding state: the keys and values of every layer, and which slots hold a token.

    Slots sit next to head_dim so attention reads the cache as a plain batched matmul (no
    per-step transpose of the whole cache).

    Attributes:
      k: one [batch, kv_heads, slots, head_dim] array per layer, in the cache dtype.
      v: one [batch, kv_heads, slots, head_dim] array per layer, in the cache dtype.
      valid: [batch, slots] bool, the slots that hold a real (non-padding) token.
      index: int32, the slot the next token is written to: a scalar, the same for all rows
        (a batch decoded together), or [batch], each row its own (continuous batching,
        one token per step).
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]
    valid: jax.Array
    index: jax.Array  # int32 [] or [batch]: the slot the next token is written to

    def constrained(self) -> KVCache:
        """The cache with its logical sharding applied (batch over data/fsdp, kv heads over tensor).

        Returns:
          The same cache under `constrain` (unchanged outside `activation_sharding`).
        """
        kv = ("batch", "act_kv_heads", "cache_length", "kv")
        return KVCache(
            tuple(constrain(x, kv) for x in self.k),
            tuple(constrain(x, kv) for x in self.v),
            constrain(self.valid, ("batch", "cache_length")),
            self.index,
        )


class PrefixCache(NamedTuple):
    """Keys and values of a prompt prefix that every row of a batch shares.

    Such a prefix (a chat template's system turn, a rating rubric's header, few-shot
    demonstrations) is prefilled once for the batch instead of once per row. The rows'
    prefill attends to it before their own tokens and writes it into the first C slots of
    every row's cache, so decoding is unchanged.

    Attributes:
      k: one [1, kv_heads, C, head_dim] array per layer.
      v: one [1, kv_heads, C, head_dim] array per layer.
    """

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]

    def constrained(self) -> PrefixCache:
        """The prefix with its logical sharding applied (kv heads over tensor).

        Returns:
          The same prefix under `constrain` (unchanged outside `activation_sharding`).
        """
        kv = (None, "act_kv_heads", "cache_length", "kv")
        return PrefixCache(tuple(constrain(x, kv) for x in self.k), tuple(constrain(x, kv) for x in self.v))


def init_cache(cfg: ModelConfig, batch: int, slots: int, dtype: str | None = None) -> KVCache:
    """An empty cache; k and v in `dtype` (default: the compute dtype).

    New keys and values are rounded to it when written; attention reads them back in f32
    or the compute dtype.

    Args:
      cfg: the model configuration (layers, kv heads, head dim, compute dtype).
      batch: the number of rows.
      slots: S, the number of token slots per row.
      dtype: the dtype of k and v (default: `cfg.dtype`).

    Returns:
      A `KVCache` of zeros: k, v [batch, kv_heads, S, head_dim] per layer, valid [batch, S]
      all False, index 0.
    """
    shape = (batch, cfg.num_kv_heads, slots, cfg.head_dim)
    dt = jnp.dtype(dtype or cfg.dtype)
    zeros = tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers))
    return KVCache(
        zeros,
        tuple(jnp.zeros(shape, dt) for _ in range(cfg.num_layers)),
        jnp.zeros((batch, slots), bool),
        jnp.zeros((), jnp.int32),
    )


class Packing(NamedTuple):
    """A left-padded prompt batch [B, P] reduced to its real tokens, for the prefill's token-wise work.

    The token-wise work is the projections, MLP and norms: rows of mixed lengths padded to
    a bucket are a third padding or more, which a padded prefill computes like real
    tokens. Attention runs on the padded layout.

    Attributes:
      pack: [Tp] int32, flat indices (into B * P) of the tokens computed, real ones first
        (the rest repeat slot 0 and are never read back).
      unpack: [B, P] int32, each slot's index into the packed tokens, Tp for padding (reads
        a zero row).
    """

    pack: jax.Array
    unpack: jax.Array


def make_packing(mask: jax.Array, packed_len: int) -> Packing:
    """Packing of a [B, P] bool mask.

    Args:
      mask: [B, P] bool, True on real tokens.
      packed_len: Tp, the caller's bucket; at least the number of True entries (not checked:
        the tokens past Tp would be dropped).

    Returns:
      The `Packing`: pack [Tp] int32, unpack [B, P] int32.
    """
    flat = mask.reshape(-1)
    pack = jnp.nonzero(flat, size=packed_len, fill_value=0)[0].astype(jnp.int32)
    unpack = jnp.where(flat, jnp.cumsum(flat) - 1, packed_len).astype(jnp.int32).reshape(mask.shape)
    return Packing(pack, unpack)


def pack_tokens(x: jax.Array, packing: Packing) -> jax.Array:
    """Gathers the packed tokens of a padded batch: [B, P, ...] -> [1, Tp, ...].

    Args:
      x: [B, P, ...], e.g. tokens [B, P] or activations [B, P, E].
      packing: from `make_packing`.

    Returns:
      [1, Tp, ...] in `x`'s dtype.
    """
    return x.reshape((-1,) + x.shape[2:])[packing.pack][None]


def unpack_tokens(x: jax.Array, packing: Packing) -> jax.Array:
    """Scatters packed tokens back to the padded layout: [1, Tp, ...] -> [B, P, ...], zeros on padding.

    Args:
      x: [1, Tp, ...] packed values.
      packing: from `make_packing`.

    Returns:
      [B, P, ...] in `x`'s dtype.
    """
    rows = jnp.concatenate([x[0], jnp.zeros((1,) + x.shape[2:], x.dtype)])
    return rows[packing.unpack]


def _param(
    module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...], init=_KERNEL_INIT
) -> jax.Array:
    cfg: ModelConfig = module.cfg
    return module.param(name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
    """RMSNorm over the last axis with a learned scale [hidden] (`layers.rms_norm`).

    Attributes:
      cfg: the model configuration (epsilon, compute and parameter dtypes).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises `x`.

        Args:
          x: [..., hidden].

        Returns:
          [..., hidden] in the compute dtype.
        """
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        return layers.rms_norm(x, scale, self.cfg.rms_norm_eps, jnp.dtype(self.cfg.dtype))


class Projection(nn.Module):
    """x[..., in] @ kernel[in..., out...] (+ bias[out...]); kernel named by logical axes.

    Attributes:
      cfg: the model configuration (compute and parameter dtypes).
      in_shape: the contracted trailing dims of `x`, e.g. (E,) or (H, D).
      out_shape: the dims the projection produces, e.g. (H, D) or (E,).
      axes: logical names of the kernel's dims, in_shape's then out_shape's (the bias takes
        the latter).
      use_bias: whether to add a bias [*out_shape].
    """

    cfg: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Projects `x`.

        Args:
          x: [..., *in_shape].

        Returns:
          [..., *out_shape] in the compute dtype.
        """
        dt = jnp.dtype(self.cfg.dtype)
        kernel = _param(self, "kernel", self.in_shape + self.out_shape, self.axes)
        # One [tokens, in] x [in, out] matmul: with the token axes kept apart ([B, T, E]
        # operands) XLA:CPU's backward pass transposes the SwiGLU gradients through strided
        # copies (measurements: benchmarks/HISTORY.md). The reshapes are of contiguous axes,
        # free on every backend.
        n_in = len(self.in_shape)
        size_in, size_out = math.prod(self.in_shape), math.prod(self.out_shape)
        y = jnp.dot(x.astype(dt).reshape(-1, size_in), kernel.astype(dt).reshape(size_in, size_out))
        y = y.reshape(x.shape[: x.ndim - n_in] + self.out_shape)
        if self.use_bias:
            bias = _param(self, "bias", self.out_shape, self.axes[n_in:], nn.initializers.zeros)
            y = y + bias.astype(dt)
        return y


class Attention(nn.Module):
    """Grouped-query self-attention with RoPE: q/k/v projections, cache update, attention, o_proj.

    Attributes:
      cfg: the model configuration.
      fresh_cache: the cache is empty (see the comment on the field).
    """

    cfg: ModelConfig
    # The cache is empty (a prompt's prefill; its contents are never read): attend over the
    # shared prefix and the new keys only, mask [B, 1, T, C + T] (not over all S slots, most
    # of them empty, whose scores would be prefill work for nothing), and build the cache as
    # [prefix | new keys | empty] in one pass.
    fresh_cache: bool = False

    @nn.compact
    def __call__(
        self,
        x,
        positions,
        mask,
        cache=None,
        cache_index=None,
        packing: Packing | None = None,
        prefix: tuple[jax.Array, jax.Array] | None = None,
    ):
        """Attention of T new tokens, with or without a cache.

        Args:
          x: [B, T, E] normalised activations ([1, Tp, E] packed tokens with `packing`).
          positions: [B, T] int32, the RoPE positions.
          mask: [B, 1, T, keys] bool: keys = T without a cache, C + T into a fresh cache
            (C: the prefix length, 0 without one), S into a cache of S slots.
          cache: None, or this layer's (k, v), each [B, K, S, D]; the new slots are written
            in place.
          cache_index: int32, the slot of the first new token (a cache that is not fresh):
            a scalar, or [B] for one new token per row at each row's own slot.
          packing: x is [1, Tp, E] packed tokens (a fresh cache's prefill); positions and
            mask are of the padded [B, P] layout attention runs on.
          prefix: this layer's shared prefix (k, v), each [1, K, C, D], seen by every row
            before its new tokens (a fresh cache's prefill).

        Returns:
          (y [B, T, E] in the compute dtype ([1, Tp, E] with `packing`), the updated (k, v)
          cache, or None without one).
        """
        cfg = self.cfg
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Projection(cfg, (e,), (h, d), ("embed", "heads", "kv"), cfg.qkv_bias, name="q_proj")(x)
        k = Projection(cfg, (e,), (kv, d), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="k_proj")(x)
        v = Projection(cfg, (e,), (kv, d), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="v_proj")(x)
        if packing is not None:
            q, k, v = (unpack_tokens(a, packing) for a in (q, k, v))
        q = constrain(q, ("batch", "length", "act_heads", "kv"))
        inv_freq = layers.rope_inv_freq(d, cfg.rope_theta, cfg.rope_scaling_dict)
        q = layers.apply_rope(q, positions, inv_freq)
        k = layers.apply_rope(k, positions, inv_freq)
        if cache is None and cfg.attention_impl == "cudnn":
            out = layers.fused_attention(q, k, v, mask)
        else:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]
            if cache is not None and self.fresh_cache:
                if prefix is not None:  # the same keys for every row, ahead of the row's own
                    k, v = (
                        jnp.concatenate(
                            [jnp.broadcast_to(p.astype(new.dtype), (new.shape[0],) + p.shape[1:]), new],
                            axis=2,
                        )
                        for p, new in zip(prefix, (k, v))
                    )
                cache = tuple(
                    jnp.concatenate(
                        [
                            new.astype(c.dtype),
                            jnp.zeros(c.shape[:2] + (c.shape[2] - new.shape[2],) + c.shape[3:], c.dtype),
                        ],
                        axis=2,
                    )
                    for c, new in zip(cache, (k, v))
                )
            elif cache is not None:
                cache = tuple(
                    _write_slots(c, new.astype(c.dtype), cache_index) for c, new in zip(cache, (k, v))
                )
                k, v = cache
            # Without a cache, or into an empty one, the keys are the prefix and these tokens: causal.
            out = layers.attention(q, k, v, mask, causal=cache is None or self.fresh_cache)
        out = constrain(out, ("batch", "length", "act_heads", "kv"))
        if packing is not None:
            out = pack_tokens(out, packing)
        y = Projection(cfg, (h, d), (e,), ("heads", "kv", "embed"), cfg.o_bias, name="o_proj")(out)
        return y, cache


def _write_slots(cache: jax.Array, new: jax.Array, index: jax.Array) -> jax.Array:
    """Writes new keys (or values) into a cache, in place.

    Args:
      cache: [B, K, S, D].
      new: [B, K, T, D] in the cache's dtype.
      index: int32 scalar, the slot of the first new token in every row; or [B], each row's
        own slot (T must be 1): a scatter of one [K, D] entry per row.

    Returns:
      The updated cache [B, K, S, D].
    """
    if index.ndim == 0:
        return jax.lax.dynamic_update_slice_in_dim(cache, new, index, 2)
    return cache.at[jnp.arange(cache.shape[0]), :, index].set(new[:, :, 0], mode="drop")


class MLP(nn.Module):
    """The SwiGLU MLP: down_proj(silu(gate_proj(x)) * up_proj(x)).

    Attributes:
      cfg: the model configuration.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the MLP.

        Args:
          x: [B, T, E] normalised activations.

        Returns:
          [B, T, E] in the compute dtype.
        """
        cfg = self.cfg
        e, f = cfg.hidden_size, cfg.intermediate_size
        gate = Projection(cfg, (e,), (f,), ("embed", "mlp"), name="gate_proj")(x)
        up = Projection(cfg, (e,), (f,), ("embed", "mlp"), name="up_proj")(x)
        hidden = constrain(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return Projection(cfg, (f,), (e,), ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    """One pre-norm decoder layer: x + attn(norm(x)), then + mlp(norm(x)).

    Attributes:
      cfg: the model configuration.
      fresh_cache: the cache is empty (see `Attention`).
    """

    cfg: ModelConfig
    fresh_cache: bool = False  # see Attention

    @nn.compact
    def __call__(self, carry, positions, mask, cache_index, packing: Packing | None = None, prefix=None):
        """Runs the layer; the signature is `nn.scan`'s (carry, broadcast inputs).

        Args:
          carry: (x [B, T, E] in the compute dtype ([1, Tp, E] with `packing`), this layer's
            (k, v) cache or None).
          positions: [B, T] int32.
          mask: [B, 1, T, keys] bool (see `Attention`).
          cache_index: int32 [] or [B], the slot of the first new token (or None without a cache).
          packing: the prefill's `Packing`, or None.
          prefix: this layer's shared prefix (k, v), each [1, K, C, D], or None.

        Returns:
          ((x, cache) as in `carry`, updated; None), scan's (carry, output) pair.
        """
        x, cache = carry
        h, cache = Attention(self.cfg, self.fresh_cache, name="attn")(
            RMSNorm(self.cfg, name="input_norm")(x), positions, mask, cache, cache_index, packing, prefix
        )
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="post_attn_norm")(x))
        x = constrain(x, ("batch", "length", "act_embed"))
        return (x, cache), None


def _remat_policy(name: str):
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


class Embed(nn.Module):
    """The token embedding table as a parameter, initialised from N(0, 1).

    Attributes:
      cfg: the model configuration (vocabulary, hidden size, parameter dtype).
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        """The table.

        Returns:
          embedding [V, E] in the parameter dtype.
        """
        return _param(
            self,
            "embedding",
            (self.cfg.vocab_size, self.cfg.hidden_size),
            ("vocab", "embed"),
            nn.initializers.normal(stddev=1.0),
        )


def embed_tokens(cfg: ModelConfig, embedding: jax.Array, tokens: jax.Array) -> jax.Array:
    """Looks the tokens up in the embedding table.

    Args:
      cfg: the model configuration (compute dtype).
      embedding: [V, E].
      tokens: [B, T] int.

    Returns:
      x [B, T, E] in the compute dtype.
    """
    x = jnp.take(embedding, tokens, axis=0).astype(jnp.dtype(cfg.dtype))
    return constrain(x, ("batch", "length", "act_embed"))


def tied_logits(cfg: ModelConfig, x: jax.Array, embedding: jax.Array) -> jax.Array:
    """Logits of a tied head: x times the embedding table, transposed.

    Args:
      cfg: the model configuration (compute dtype).
      x: [B, T, E] final-norm activations.
      embedding: [V, E] (the embedding, or `tied_head`: its copy in the compute dtype).

    Returns:
      logits [B, T, V] in the compute dtype.
    """
    dt = jnp.dtype(cfg.dtype)
    return jnp.einsum("bte,ve->btv", x.astype(dt), embedding.astype(dt))


def _gather_positions(
    x: jax.Array, logits_index: jax.Array | None, packing: Packing | None = None
) -> jax.Array:
    """x at each row's logits_index: [B] -> [B, 1, E], [B, K] -> [B, K, E] (x [1, Tp, E] when packed)."""
    if logits_index is None:
        return x
    index = logits_index.astype(jnp.int32)
    index = index[:, None] if index.ndim == 1 else index
    if packing is not None:
        return x[0, packing.unpack[jnp.arange(index.shape[0])[:, None], index]]
    return jnp.take_along_axis(x, index[:, :, None], axis=1)


def _finish_logits(logits: jax.Array) -> jax.Array:
    return constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))


class Transformer(nn.Module):
    """Full forward: tokens [batch, T] -> logits [batch, T, vocab] f32 (training, scoring).

    Cached decoding uses `decode_forward` on the same parameters, unstacked.

    Attributes:
      cfg: the model configuration.
    """

    cfg: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens: jax.Array,
        positions: jax.Array,
        segment_ids: jax.Array,
        logits_index: jax.Array | None = None,
    ) -> jax.Array:
        """Runs the full forward.

        Args:
          tokens: [batch, T] int32.
          positions: [batch, T] int32, the RoPE positions.
          segment_ids: [batch, T] int32: 0 marks padding; packed examples carry distinct ids
            and never attend to each other.
          logits_index: [batch] int: logits only at that position of each row, so a long
            prompt never materialises [batch, T, vocab] logits (None: every position).

        Returns:
          logits [batch, T, vocab] float32, or [batch, 1, vocab] float32 with `logits_index`.
        """
        cfg = self.cfg
        embedding = Embed(cfg, name="embed")()
        x = embed_tokens(cfg, embedding, tokens)
        mask = layers.segment_causal_mask(segment_ids)
        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
        stack = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
            length=cfg.num_layers,
            unroll=1 if cfg.scan_layers else cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        (x, _), _ = stack(cfg, name="layers")((x, None), positions, mask, None)
        x = RMSNorm(cfg, name="final_norm")(_gather_positions(x, logits_index))
        if cfg.tie_embeddings:
            return _finish_logits(tied_logits(cfg, x, embedding))
        return _finish_logits(
            Projection(cfg, (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"), name="lm_head")(x)
        )


def unstack_layers(params: Any, head_dtype: Any = None) -> Any:
    """Params in the layout `decode_forward` takes: `layers` as a tuple of per-layer trees.

    Decoding runs the layers unrolled so each layer's KV cache is its own buffer, updated in
    place; XLA:CPU copies a cache stacked over layers in a scan carry whole at every layer.
    A tied head multiplies by the embedding [V, E] itself: it needs no transposed [E, V]
    copy, and neither layout is the faster one on every CPU (measurements:
    benchmarks/HISTORY.md).

    Args:
      params: the stacked parameter tree (every `layers` leaf has a leading [L] axis).
      head_dtype: the compute dtype. Where it is not the embedding's, a tied head gets its
        own copy in it (`tied_head`), cast once here instead of at every step (None: no copy).

    Returns:
      A shallow copy of `params` with `layers` a tuple of L per-layer trees (leaves without
      the [L] axis) and, for a tied head in another dtype, `tied_head` [V, E] in `head_dtype`.
    """
    n = jax.tree.leaves(params["layers"])[0].shape[0]
    out = dict(params)
    out["layers"] = tuple(jax.tree.map(lambda a, i=i: a[i], params["layers"]) for i in range(n))
    embedding = params["embed"]["embedding"]
    if "lm_head" not in params and head_dtype is not None and jnp.dtype(head_dtype) != embedding.dtype:
        out["tied_head"] = embedding.astype(head_dtype)
    return out


def decode_forward(
    cfg: ModelConfig,
    params: Any,
    tokens: jax.Array,
    positions: jax.Array,
    segment_ids: jax.Array,
    cache: KVCache,
    logits_index: jax.Array | None = None,
    fresh_cache: bool = False,
    packing: Packing | None = None,
    prefix: PrefixCache | None = None,
    parent_ids: jax.Array | None = None,
) -> tuple[jax.Array, KVCache]:
    """Cached forward of T new tokens (prefill or one decode step) on unstacked params.

    Args:
      cfg: the model configuration.
      params: the parameters in `unstack_layers`' layout.
      tokens: [B, T] int32, the new tokens.
      positions: [B, T] int32, their RoPE positions.
      segment_ids: [B, T] int32, 0 marking padding (those slots stay invalid in the cache).
      cache: the `KVCache` of S slots; the tokens are written from `cache.index` on (from
        slot C, after the prefix, with `fresh_cache`).
      logits_index: [B] int: logits only at that position of each row; [B, K] int: at those
        K positions of each row (None: every position).
      fresh_cache: the cache is empty (only its shapes are used): the tokens attend to the
        prefix and among themselves only, and the cache is rebuilt as [prefix | tokens |
        empty slots], its index after the tokens.
      packing: compute only the packed tokens outside attention (a fresh cache's prefill,
        needs logits_index); results equal the padded computation's on every real token.
      prefix: a prefix every row attends to before its tokens (a fresh cache's prefill; the
        positions count it).
      parent_ids: [B, T] int, the segment each token's segment continues (a fresh cache's
        prefill of prompt trees, `layers.segment_causal_mask`; the positions count the
        parent's tokens), or None.

    Returns:
      (logits [B, T, V] float32, or [B, 1, V] / [B, K, V] float32 with `logits_index`; the updated
      `KVCache`, its index advanced past the tokens).

    Raises:
      ValueError: `packing` without `fresh_cache` and `logits_index`, `prefix` or
        `parent_ids` without `fresh_cache`, or a per-row cache index with T > 1.
    """
    if packing is not None and (not fresh_cache or logits_index is None):
        raise ValueError("packing is for a fresh cache's prefill with logits_index")
    if (prefix is not None or parent_ids is not None) and not fresh_cache:
        raise ValueError("a shared prefix or parent segments are for a fresh cache's prefill")
    x = embed_tokens(
        cfg, params["embed"]["embedding"], tokens if packing is None else pack_tokens(tokens, packing)
    )
    b, t = segment_ids.shape
    if fresh_cache:  # the cache becomes [prefix | tokens | empty slots]
        c = 0 if prefix is None else prefix.k[0].shape[2]
        valid = jnp.concatenate(
            [jnp.ones((b, c), bool), segment_ids != 0, jnp.zeros((b, cache.valid.shape[1] - c - t), bool)],
            axis=1,
        )
        index = jnp.int32(c)
        mask = layers.segment_causal_mask(segment_ids, parent_ids)
        if c:  # every row sees the whole prefix
            mask = jnp.concatenate([jnp.ones((b, 1, t, c), bool), mask], axis=-1)
    elif cache.index.ndim:  # each row writes its one new token at its own slot
        if t != 1:
            raise ValueError(f"a per-row cache index takes one new token per row, got {t}")
        index = cache.index
        valid = cache.valid.at[jnp.arange(b), index].set(segment_ids[:, 0] != 0, mode="drop")
        mask = layers.cache_mask(valid, index, t)
    else:
        valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids != 0, cache.index, 1)
        index = cache.index
        mask = layers.cache_mask(valid, index, t)
    ks, vs = [], []
    shared = zip(prefix.k, prefix.v) if prefix is not None else [None] * len(cache.k)
    for layer_params, k, v, layer_prefix in zip(params["layers"], cache.k, cache.v, shared):
        (x, (k, v)), _ = DecoderLayer(cfg, fresh_cache).apply(
            {"params": layer_params}, (x, (k, v)), positions, mask, index, packing, layer_prefix
        )
        ks.append(k)
        vs.append(v)
    x = RMSNorm(cfg).apply({"params": params["final_norm"]}, _gather_positions(x, logits_index, packing))
    if "lm_head" in params:
        logits = Projection(cfg, (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab")).apply(
            {"params": params["lm_head"]}, x
        )
    else:
        logits = tied_logits(cfg, x, params.get("tied_head", params["embed"]["embedding"]))
    return _finish_logits(logits), KVCache(tuple(ks), tuple(vs), valid, index + t)
