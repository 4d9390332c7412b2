"""The decoder-only transformer (Llama 1/2/3, Qwen2/Qwen1.5) in flax linen.

Layers are stacked with `nn.scan` (one compiled layer body, params with a leading
`layers` axis); every parameter carries logical axis names. The same parameters serve
the full forward pass (training, with packing via segment ids) and cached decoding.

Parameter tree (shapes; L = layers, E = hidden, H = heads, K = kv heads, D = head dim):
  embed/embedding [V, E]
  layers/attn/{q_proj [L,E,H,D], k_proj, v_proj [L,E,K,D], o_proj [L,H,D,E]}/kernel (+ bias)
  layers/mlp/{gate_proj, up_proj [L,E,F], down_proj [L,F,E]}/kernel
  layers/{input_norm, post_attn_norm}/scale [L, E]
  final_norm/scale [E];  lm_head/kernel [E, V] (absent when embeddings are tied)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from isheep_jax import layers
from isheep_jax.config import ModelConfig
from isheep_jax.sharding import constrain

_KERNEL_INIT = nn.initializers.normal(stddev=0.02)


class KVCache(NamedTuple):
    """Decoding state. k, v [layers, batch, slots, kv_heads, head_dim]; valid [batch, slots]."""

    k: jax.Array
    v: jax.Array
    valid: jax.Array
    index: jax.Array  # int32 scalar: the slot the next token is written to (same for all rows)

    @staticmethod
    def logical_axes() -> "KVCache":
        kv = ("layers", "batch", "cache_length", "act_kv_heads", "kv")
        return KVCache(kv, kv, ("batch", "cache_length"), ())


def init_cache(cfg: ModelConfig, batch: int, slots: int) -> KVCache:
    shape = (cfg.num_layers, batch, slots, cfg.num_kv_heads, cfg.head_dim)
    dt = jnp.dtype(cfg.dtype)
    return KVCache(jnp.zeros(shape, dt), jnp.zeros(shape, dt),
                   jnp.zeros((batch, slots), bool), jnp.zeros((), jnp.int32))


def _param(module: nn.Module, name: str, shape: tuple[int, ...], axes: tuple[str, ...],
           init=_KERNEL_INIT) -> jax.Array:
    cfg: ModelConfig = module.cfg
    return module.param(name, nn.with_logical_partitioning(init, axes), shape,
                        jnp.dtype(cfg.param_dtype))


class RMSNorm(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = _param(self, "scale", (x.shape[-1],), ("norm",), nn.initializers.ones)
        return layers.rms_norm(x, scale, self.cfg.rms_norm_eps, jnp.dtype(self.cfg.dtype))


class Projection(nn.Module):
    """x[..., in] @ kernel[in..., out...] (+ bias[out...]); kernel named by logical axes."""

    cfg: ModelConfig
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    axes: tuple[str, ...]
    use_bias: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dt = jnp.dtype(self.cfg.dtype)
        kernel = _param(self, "kernel", self.in_shape + self.out_shape, self.axes)
        n_in = len(self.in_shape)
        y = jax.lax.dot_general(
            x.astype(dt), kernel.astype(dt),
            ((tuple(range(x.ndim - n_in, x.ndim)), tuple(range(n_in))), ((), ())))
        if self.use_bias:
            bias = _param(self, "bias", self.out_shape, self.axes[n_in:], nn.initializers.zeros)
            y = y + bias.astype(dt)
        return y


class Attention(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, mask, k_cache=None, v_cache=None, cache_index=None):
        cfg = self.cfg
        e, h, kv, d = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        q = Projection(cfg, (e,), (h, d), ("embed", "heads", "kv"), cfg.qkv_bias, name="q_proj")(x)
        k = Projection(cfg, (e,), (kv, d), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="k_proj")(x)
        v = Projection(cfg, (e,), (kv, d), ("embed", "kv_heads", "kv"), cfg.qkv_bias, name="v_proj")(x)
        q = constrain(q, ("batch", "length", "act_heads", "kv"))
        inv_freq = layers.rope_inv_freq(d, cfg.rope_theta, cfg.rope_scaling_dict)
        q = layers.apply_rope(q, positions, inv_freq)
        k = layers.apply_rope(k, positions, inv_freq)
        if k_cache is not None:
            # Write the new keys/values at slots [cache_index, cache_index + T).
            k_cache = jax.lax.dynamic_update_slice_in_dim(k_cache, k.astype(k_cache.dtype), cache_index, 1)
            v_cache = jax.lax.dynamic_update_slice_in_dim(v_cache, v.astype(v_cache.dtype), cache_index, 1)
            k, v = k_cache, v_cache
        out = layers.attention(q, k, v, mask)
        out = constrain(out, ("batch", "length", "act_heads", "kv"))
        y = Projection(cfg, (h, d), (e,), ("heads", "kv", "embed"), cfg.o_bias, name="o_proj")(out)
        return y, k_cache, v_cache


class MLP(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.cfg
        e, f = cfg.hidden_size, cfg.intermediate_size
        gate = Projection(cfg, (e,), (f,), ("embed", "mlp"), name="gate_proj")(x)
        up = Projection(cfg, (e,), (f,), ("embed", "mlp"), name="up_proj")(x)
        hidden = constrain(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
        return Projection(cfg, (f,), (e,), ("mlp", "embed"), name="down_proj")(hidden)


class DecoderLayer(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self, x, positions, mask, cache_index, kv):
        k_cache, v_cache = kv if kv is not None else (None, None)
        h, k_cache, v_cache = Attention(self.cfg, name="attn")(
            RMSNorm(self.cfg, name="input_norm")(x), positions, mask, k_cache, v_cache, cache_index)
        x = x + h
        x = x + MLP(self.cfg, name="mlp")(RMSNorm(self.cfg, name="post_attn_norm")(x))
        x = constrain(x, ("batch", "length", "act_embed"))
        return x, (None if k_cache is None else (k_cache, v_cache))


def _remat_policy(name: str):
    return {"full": jax.checkpoint_policies.nothing_saveable,
            "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}[name]


class Transformer(nn.Module):
    """tokens [batch, T] -> logits [batch, T, vocab] (f32), and the updated cache if given."""

    cfg: ModelConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: jax.Array, segment_ids: jax.Array,
                 cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
        cfg = self.cfg
        dt = jnp.dtype(cfg.dtype)
        embedding = Embed(cfg, name="embed")()
        x = jnp.take(embedding, tokens, axis=0).astype(dt)
        x = constrain(x, ("batch", "length", "act_embed"))

        if cache is None:
            mask, cache_index, kv = layers.segment_causal_mask(segment_ids), None, None
        else:
            valid = jax.lax.dynamic_update_slice_in_dim(cache.valid, segment_ids != 0, cache.index, 1)
            mask = layers.cache_mask(valid, cache.index, tokens.shape[1])
            cache_index, kv = cache.index, (cache.k, cache.v)

        layer_cls = DecoderLayer
        if cfg.remat_policy != "none":
            layer_cls = nn.remat(layer_cls, policy=_remat_policy(cfg.remat_policy), prevent_cse=False)
        stack = nn.scan(
            layer_cls,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            in_axes=(nn.broadcast, nn.broadcast, nn.broadcast, 0),
            length=cfg.num_layers,
            metadata_params={nn.PARTITION_NAME: "layers"},
        )
        x, new_kv = stack(cfg, name="layers")(x, positions, mask, cache_index, kv)
        x = RMSNorm(cfg, name="final_norm")(x)

        if cfg.tie_embeddings:
            logits = jnp.einsum("bte,ve->btv", x, embedding.astype(dt))
        else:
            logits = Projection(cfg, (cfg.hidden_size,), (cfg.vocab_size,), ("embed", "vocab"),
                                name="lm_head")(x)
        logits = constrain(logits.astype(jnp.float32), ("batch", "length", "act_vocab"))

        new_cache = None
        if cache is not None:
            new_cache = KVCache(new_kv[0], new_kv[1], valid, cache.index + tokens.shape[1])
        return logits, new_cache


class Embed(nn.Module):
    cfg: ModelConfig

    @nn.compact
    def __call__(self) -> jax.Array:
        return _param(self, "embedding", (self.cfg.vocab_size, self.cfg.hidden_size), ("vocab", "embed"),
                      nn.initializers.normal(stddev=1.0))
