"""Parameters of the transformer: abstract shapes, logical axes, sharded init, forward.

maxtext's `get_abstract_state` pattern: `eval_shape(init)` gives shapes and logical
names without allocating; the rule table turns names into mesh shardings; `jit(init,
out_shardings=...)` then creates every parameter directly on its shards.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.transformer import Transformer
from isheep_jax.parallel import sharding

Params = Any  # nested dict of arrays (unboxed)


def _dummy_inputs() -> tuple[jax.Array, jax.Array, jax.Array]:
    """tokens, positions, segment_ids of shape [1, 1]."""
    tok = jnp.zeros((1, 1), jnp.int32)
    return tok, tok, jnp.ones((1, 1), jnp.int32)


def _init_module(cfg: ModelConfig) -> Transformer:
    """The module that creates parameters. They do not depend on the attention kernel, and
    init traces a forward pass: ours traces anywhere, cuDNN's only where a GPU is (planning
    a GPU run on a CPU host creates abstract params too)."""
    return Transformer(cfg.replace(attention_impl="xla"))


def _boxed_abstract(cfg: ModelConfig) -> Any:
    return jax.eval_shape(lambda: _init_module(cfg).init(jax.random.key(0), *_dummy_inputs())["params"])


def abstract_params(cfg: ModelConfig) -> tuple[Params, Any]:
    """Shapes and logical axis names of the parameters, with no memory allocated.

    Args:
      cfg: the model configuration.

    Returns:
      (a tree of `ShapeDtypeStruct`s in `cfg.param_dtype`, the matching tree of
      logical-axis-name tuples, one name per dim).
    """
    boxed = _boxed_abstract(cfg)
    names = nn.get_partition_spec(boxed)
    names = jax.tree.map(tuple, names, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return nn.meta.unbox(boxed), names


def param_shardings(
    cfg: ModelConfig, mesh: Mesh, rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
) -> Any:
    """The sharding of every parameter on `mesh`.

    Args:
      cfg: the model configuration.
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs (`sharding.logical_to_pspec`).

    Returns:
      A tree of `NamedSharding`s matching the parameter tree.
    """
    abstract, names = abstract_params(cfg)
    return sharding.tree_shardings(names, abstract, mesh, rules)


def init_params(
    cfg: ModelConfig, mesh: Mesh, seed: int = 0, rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
) -> Params:
    """Random parameters, created sharded over `mesh` (never whole on one device).

    Args:
      cfg: the model configuration.
      mesh: the mesh to shard over.
      seed: the seed of the initialisation's PRNG key.
      rules: (logical name, mesh axes) pairs (`sharding.logical_to_pspec`).

    Returns:
      The parameter tree (see `transformer`'s module docstring for its shapes) in
      `cfg.param_dtype`, each leaf laid out by `param_shardings`.
    """
    shardings = param_shardings(cfg, mesh, rules)

    @functools.partial(jax.jit, out_shardings=shardings)
    def init(key):
        return nn.meta.unbox(_init_module(cfg).init(key, *_dummy_inputs())["params"])

    return init(jax.random.key(seed))


def positions_from_segments(segment_ids: jax.Array) -> jax.Array:
    """Positions counting from 0 at the first real token of each segment (pads get 0).

    Works for left padding (segment 0 before the prompt) and for packed rows.

    Args:
      segment_ids: [batch, length] int; 0 marks padding, a change of id starts a segment.

    Returns:
      positions [batch, length] int32.
    """
    seg = segment_ids
    starts = jnp.concatenate([jnp.ones_like(seg[:, :1], bool), seg[:, 1:] != seg[:, :-1]], axis=1)
    idx = jnp.broadcast_to(jnp.arange(seg.shape[1]), seg.shape)
    start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
    return jnp.where(seg != 0, idx - start_idx, 0).astype(jnp.int32)


def forward(
    cfg: ModelConfig,
    params: Params,
    tokens: jax.Array,
    segment_ids: jax.Array | None = None,
    positions: jax.Array | None = None,
    logits_index: jax.Array | None = None,
) -> jax.Array:
    """Full forward (training, scoring) of `Transformer` on stacked params.

    Args:
      cfg: the model configuration.
      params: the parameter tree (stacked over `layers`, as `init_params` makes it).
      tokens: [batch, T] int32.
      segment_ids: [batch, T] int32; 0 marks padding, packed examples carry distinct ids
        (default: all ones, one segment per row).
      positions: [batch, T] int32 (default: `positions_from_segments(segment_ids)`).
      logits_index: [batch] int; logits only at that position of each row (default: all).

    Returns:
      logits [batch, T, vocab] float32, or [batch, 1, vocab] float32 with `logits_index`.
    """
    if segment_ids is None:
        segment_ids = jnp.ones_like(tokens, jnp.int32)
    if positions is None:
        positions = positions_from_segments(segment_ids)
    return Transformer(cfg).apply({"params": params}, tokens, positions, segment_ids, logits_index)
