"""The jit-compiled SFT train step: token-weighted loss, gradient accumulation, sharded state.

Loss = sum of cross-entropy over target (response) tokens / number of target tokens in the
whole optimizer batch. Micro-batches accumulate (gradient of the sum, loss sum, count) and
divide once, so the objective does not depend on how a batch is split (DESIGN §4).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import Params, abstract_params, forward
from isheep_jax.parallel import sharding
from isheep_jax.training import chunked_loss

Batch = dict[str, jax.Array]  # sft_data.MODEL_KEYS -> int32 [micro, rows, length]


class TrainState(NamedTuple):
    """The training state: step count, parameters and optimizer state, as one pytree.

    Attributes:
      step: int32 scalar, the number of optimizer steps taken.
      params: the model parameters.
      opt_state: the optimizer's state (`optim.make_optimizer`).
    """

    step: jax.Array  # int32 scalar
    params: Params
    opt_state: optax.OptState


def token_nll(cfg: ModelConfig, params: Params, batch: Batch, chunk_tokens: int = 0) -> jax.Array:
    """-log p(target) at every position of batch arrays [rows, length].

    Args:
      cfg: the model config.
      params: the model parameters.
      batch: `sft_data.MODEL_KEYS` -> int32 [rows, length] arrays.
      chunk_tokens: 0: from the forward's full [rows, length, vocab] f32 logits; > 0: from
        the logits of about that many tokens at a time (`chunked_loss`; the same values and
        gradients to float round-off).

    Returns:
      nll [rows, length] float32 (unweighted: padding and prompt positions included).
    """
    tokens, targets = batch["decoder_input_tokens"], batch["decoder_target_tokens"]
    if chunk_tokens:
        hidden = chunked_loss.final_hidden(
            cfg, params, tokens, batch["decoder_segment_ids"], batch["decoder_positions"]
        )
        weight, tied = chunked_loss.head_weight(cfg, params)
        chunk_len = chunked_loss.chunk_length(tokens.shape[0], tokens.shape[1], chunk_tokens)
        return chunked_loss.token_nll(hidden, weight, targets, tied, cfg.dtype, chunk_len)
    logits = forward(
        cfg,
        params,
        tokens,
        segment_ids=batch["decoder_segment_ids"],
        positions=batch["decoder_positions"],
    )
    logz = jax.nn.logsumexp(logits, axis=-1)
    return logz - jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


def loss_sums(
    cfg: ModelConfig, params: Params, batch: Batch, chunk_tokens: int = 0
) -> tuple[jax.Array, jax.Array]:
    """(sum of target-token NLL, number of target tokens) for batch arrays [rows, length].

    Args:
      cfg: the model config.
      params: the model parameters.
      batch: one micro-batch: `sft_data.MODEL_KEYS` -> int32 [rows, length] arrays.
      chunk_tokens: see `token_nll`.

    Returns:
      Two float32 scalars: the NLL summed over tokens, weighted by `decoder_loss_weights`,
      and the sum of those weights (the number of target tokens).
    """
    weights = batch["decoder_loss_weights"].astype(jnp.float32)
    return jnp.sum(token_nll(cfg, params, batch, chunk_tokens) * weights), jnp.sum(weights)


def per_segment_loss(
    cfg: ModelConfig, params: Params, batch: Batch, max_segments: int, chunk_tokens: int = 0
) -> tuple[jax.Array, jax.Array]:
    """Per-example (loss sum, count) [rows, max_segments] indexed by segment id - 1 (packing checks).

    Args:
      cfg: the model config.
      params: the model parameters.
      batch: `sft_data.MODEL_KEYS` -> int32 [rows, length] arrays, packed or not; segment id
        0 marks padding.
      max_segments: the number of segment slots per row; segments with a larger id are not
        counted.
      chunk_tokens: see `token_nll`.

    Returns:
      (loss sums, target-token counts), both float32 [rows, max_segments]; entry [r, s]
      belongs to segment id s + 1 of row r and is 0 where the row has no such segment.
    """
    nll = token_nll(cfg, params, batch, chunk_tokens)
    w = batch["decoder_loss_weights"].astype(jnp.float32)
    onehot = jax.nn.one_hot(batch["decoder_segment_ids"] - 1, max_segments)  # pads (id 0) -> all zeros
    return jnp.einsum("bt,bts->bs", nll * w, onehot), jnp.einsum("bt,bts->bs", w, onehot)


def make_train_step(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    loss_chunk_tokens: int = 0,
    model_params: Callable[[Any, Any], Params] | None = None,
):
    """(state, batch [micro, rows, length]) -> (state, metrics); pure, to be jit-compiled.

    Args:
      cfg: the model config.
      optimizer: the gradient transformation (`optim.make_optimizer`).
      loss_chunk_tokens: tokens per chunk of the vocabulary cross-entropy (`loss_sums`'
        chunk_tokens; 0: unchunked).
      model_params: None: `state.params` are the model's params (full fine-tuning).
        Otherwise `model_params(state.params, frozen)` builds the model's params from the
        trained tree and the step's `frozen` argument (LoRA: `lora.merge` of the adapters
        onto the frozen base); gradients and optimizer state are the trained tree's only.

    Returns:
      `step(state, batch, frozen=None)`, where `batch` maps `sft_data.MODEL_KEYS` to int32
      [micro_batches, rows, length] arrays. It returns the next `TrainState` and float32
      scalar metrics: `loss` (mean NLL per target token over the whole batch),
      `target_tokens` and `grad_norm` (global norm of the token-averaged gradient, before
      the optimizer's clipping).
    """

    def sums_and_grads(params, micro, frozen):
        """((loss sum, token count), gradient of the loss sum) of one micro-batch [rows, length]."""

        def objective(p):
            return loss_sums(
                cfg, p if model_params is None else model_params(p, frozen), micro, loss_chunk_tokens
            )

        return jax.value_and_grad(objective, has_aux=True)(params)

    def micro_step(params, frozen, carry, micro):
        grads_acc, loss_acc, count_acc = carry
        (loss_sum, count), grads = sums_and_grads(params, micro, frozen)
        grads_acc = jax.tree.map(jnp.add, grads_acc, grads)
        return (grads_acc, loss_acc + loss_sum, count_acc + count), None

    def step(state: TrainState, batch: Batch, frozen: Any = None) -> tuple[TrainState, dict[str, jax.Array]]:
        if (
            batch["decoder_input_tokens"].shape[0] == 1
        ):  # no accumulation: skip a zeroed gradient tree and its add
            (loss_sum, count), grad_sum = sums_and_grads(
                state.params, jax.tree.map(lambda x: x[0], batch), frozen
            )
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            init = (zeros, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.float32))
            (grad_sum, loss_sum, count), _ = jax.lax.scan(
                functools.partial(micro_step, state.params, frozen), init, batch
            )
        denom = jnp.maximum(count, 1.0)
        grads = jax.tree.map(lambda g: g / denom, grad_sum)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss_sum / denom, "target_tokens": count, "grad_norm": optax.global_norm(grads)}
        return TrainState(state.step + 1, params, opt_state), metrics

    return step


def state_shardings(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """(abstract TrainState, its shardings): optimizer state follows its parameter's sharding.

    Args:
      cfg: the model config.
      optimizer: the gradient transformation whose state is laid out.
      mesh: the device mesh.
      rules: logical-axis rules (logical axis name -> mesh axes).

    Returns:
      A `TrainState` of `jax.ShapeDtypeStruct`s (nothing allocated) and a `TrainState` of
      `NamedSharding`s. The step and optimizer leaves that are no parameter's (e.g. counts)
      are replicated.
    """
    abstract, names = abstract_params(cfg)
    return tree_state_shardings(abstract, names, optimizer, mesh, rules)


def tree_state_shardings(
    abstract: Any,
    names: Any,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """`state_shardings` for any trained tree (the params, or LoRA adapters).

    Args:
      abstract: the trained tree as `ShapeDtypeStruct`s.
      names: the matching tree of logical-axis-name tuples.
      optimizer: the gradient transformation whose state is laid out.
      mesh: the device mesh.
      rules: logical-axis rules (logical axis name -> mesh axes).

    Returns:
      (abstract `TrainState`, `TrainState` of `NamedSharding`s), as `state_shardings`.
    """
    p_shard = sharding.tree_shardings(names, abstract, mesh, rules)
    abstract_opt = jax.eval_shape(optimizer.init, abstract)
    rep = sharding.replicated(mesh)
    o_shard = optax.tree_map_params(
        optimizer,
        lambda _, s: s,
        abstract_opt,
        p_shard,
        transform_non_params=lambda _: rep,
        is_leaf=lambda x: isinstance(x, NamedSharding),
    )
    abstract_state = TrainState(jax.ShapeDtypeStruct((), jnp.int32), abstract, abstract_opt)
    return abstract_state, TrainState(rep, p_shard, o_shard)


def owned_state(state: TrainState, shardings: TrainState) -> TrainState:
    """A copy of `state` in buffers the runtime owns, so the donated step updates it in place.

    With the copy, every leaf is updated in place from the step's first run. Arrays restored
    from a checkpoint can be zero-copy views of host memory on the CPU; the runtime cannot
    donate those, so the first step writes such leaves to fresh buffers (some of them,
    varying with the host buffers' alignment). On XLA:CPU those land above that step's
    temporary block in the host heap, and the block can then no longer merge back into the
    heap's top: the heap grows by a whole temporary block on the next step (measurements:
    benchmarks/HISTORY.md). The copy costs one pass over the state, once. Other backends
    return `state` as it is: their restored arrays live in device memory the runtime owns,
    and a copy would double the state's footprint there.

    Args:
      state: the train state, e.g. as restored from a checkpoint.
      shardings: the state's shardings (`state_shardings`); the copy keeps them.

    Returns:
      On the CPU backend a copy of `state`; on other backends `state` itself.
    """
    if jax.default_backend() != "cpu":
        return state
    return jax.jit(lambda st: jax.tree.map(jnp.copy, st), out_shardings=shardings)(state)


def batch_sharding(
    mesh: Mesh, shape: tuple[int, ...], rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
) -> NamedSharding:
    """[micro, rows, length] arrays: rows over the batch axes.

    Args:
      mesh: the device mesh.
      shape: the batch arrays' shape (micro_batches, rows, length).
      rules: logical-axis rules; rows follow the 'batch' rule, length the 'length' rule (an
        axis whose size does not divide is replicated).

    Returns:
      The `NamedSharding` of every batch array.
    """
    return sharding.logical_to_sharding((None, "batch", "length"), shape, mesh, rules)


def compile_train_step(
    cfg: ModelConfig,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    batch_shape: tuple[int, int, int],
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
    loss_chunk_tokens: int = 0,
):
    """The jit'd step with explicit in/out shardings; the state argument is donated.

    Args:
      cfg: the model config.
      optimizer: the gradient transformation.
      mesh: the device mesh.
      batch_shape: (micro_batches, rows, length) of every batch array.
      rules: logical-axis rules for parameters, batch and activations.
      loss_chunk_tokens: tokens per chunk of the vocabulary cross-entropy (0: unchunked;
        see `loss_sums`).

    Returns:
      The jitted `make_train_step` step: `(state, batch) -> (state, metrics)`, taking a
      `TrainState` laid out as `state_shardings` gives and a batch of int32
      [micro_batches, rows, length] arrays laid out as `batch_sharding` gives; the metrics
      come back replicated. The passed-in state is donated: use only the returned one.
    """
    _, shard = state_shardings(cfg, optimizer, mesh, rules)
    b_shard = batch_sharding(mesh, batch_shape, rules)
    step = make_train_step(cfg, optimizer, loss_chunk_tokens)

    def traced(state, batch):
        with sharding.activation_sharding(mesh, rules):
            return step(state, batch)

    return jax.jit(
        traced,
        in_shardings=(shard, b_shard),
        out_shardings=(shard, sharding.replicated(mesh)),
        donate_argnums=0,
    )
