"""Continuous batching: a fixed set of decoding slots, refilled from a queue as their rows finish.

A static batch decodes until its longest row ends, so the slots of rows that ended early
idle; with early EOS and a cap of 1000 tokens that is half or more of the decode steps.
Here each of the B slots holds one row with its own cache region, write slot, position and
token count (`KVCache.index` per row). `decode_segment` runs decode steps until enough
slots have finished; the host then reads the finished rows back and `insert` prefills new
prompts into those slots, until the queue is empty. Then, as the last rows drain, `compact`
moves them into half as many slots whenever half or fewer are live.

A row's tokens do not depend on which slot it runs in or when: its random stream is keyed
by its row id and the index of the token drawn (as in `decode_loop.decode`), its positions
start at 0 at its first real token, and it attends only to its own cache slots. So the
tokens equal the static sampler's wherever the logits agree to the last bit (always for
greedy decoding away from near-ties), and the log-probabilities agree to float round-off.

Static: the model config, the slots B, the cache length S and the token capacity N (one
compile of `decode_segment` per stage, and one per halving of B in the drain); `insert`
compiles once per (rows, prompt length) bucket.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import Mesh

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.transformer import KVCache, PrefixCache, decode_forward, init_cache
from isheep_jax.sampling import token_choice
from isheep_jax.sampling.decode_loop import EOS, RUNNING, STOP, prefill, stop_hit


class Slots(NamedTuple):
    """The decoding state of B slots with token capacity N (a JAX pytree).

    Attributes:
      cache: the `KVCache` of S slots per row, `index` [B]: each row's next write slot.
      tokens: [B, N] int32 the row's generated tokens, `pad_id` after its end.
      logprobs: [B, N] f32 log p of each token under the raw model distribution.
      lengths: [B] int32 tokens generated (the terminating EOS / stop tokens included).
      finish: [B] int32 RUNNING (a live row, or one that hit its budget), EOS or STOP.
      live: [B] bool, the slot holds a row that is still decoding.
      row_keys: [B] PRNG keys of the slots' rows (keyed by seed and row id).
      prompt_len: [B] int32 prompt tokens of the slot's row, shared prefix included.
      recent: [B, Ls] int32 the last Ls generated tokens, for stop sequences.
    """

    cache: KVCache
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finish: jax.Array
    live: jax.Array
    row_keys: jax.Array
    prompt_len: jax.Array
    recent: jax.Array


@functools.partial(
    jax.jit, static_argnames=("cfg", "mesh", "slots", "length", "capacity", "stop_width", "cache_dtype")
)
def init_slots(
    cfg: ModelConfig,
    mesh: Mesh,
    slots: int,
    length: int,
    capacity: int,
    stop_width: int,
    pad_id: jax.Array,
    cache_dtype: str | None = None,
) -> Slots:
    """B empty slots, none live.

    Call it under `sharding.activation_sharding(mesh)`: the slots are laid out on the mesh
    as the sampler's activations are.

    Args:
      cfg: the model config (static).
      mesh: the mesh the slots live on (static: with no array inputs, nothing else would
        tell a compiled version for one mesh from another's).
      slots: B (static).
      length: S, cache slots per row: at least the shared prefix, the longest prompt and
        the token capacity together (static).
      capacity: N, the most tokens a row generates (static).
      stop_width: Ls, the longest stop sequence in tokens (>= 1; static).
      pad_id: scalar int32, the token written after each row's end.
      cache_dtype: the KV cache's dtype (None: the compute dtype; static).

    Returns:
      `Slots` with an empty cache, `live` all False.
    """
    cache = init_cache(cfg, slots, length, cache_dtype)
    return Slots(
        cache=cache._replace(index=jnp.zeros((slots,), jnp.int32)).constrained(),
        tokens=jnp.full((slots, capacity), pad_id, jnp.int32),
        logprobs=jnp.zeros((slots, capacity), jnp.float32),
        lengths=jnp.zeros((slots,), jnp.int32),
        finish=jnp.full((slots,), RUNNING, jnp.int32),
        live=jnp.zeros((slots,), bool),
        row_keys=jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(
            jnp.arange(slots, dtype=jnp.uint32)
        ),
        prompt_len=jnp.zeros((slots,), jnp.int32),
        recent=jnp.full((slots, stop_width), -1, jnp.int32),
    )


def _emit(
    state: Slots,
    logits: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    limit: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    pad_id: jax.Array,
) -> Slots:
    """Samples every live row's next token from `logits` [B, V] and records it.

    The token's key folds the row's own token index into its row key, as
    `decode_loop.decode` does: the draw depends on the row, never on the slot or the step
    of the stage.
    """
    b, n = state.tokens.shape
    step = state.lengths  # the index of the token drawn, per row
    keys = token_choice.row_step_keys(state.row_keys, step)
    tok = token_choice.sample_tokens(logits, keys, temperature, top_k, top_p)
    live = state.live
    tok = jnp.where(live, tok, pad_id)
    lp = jnp.where(live, token_choice.token_logprobs(logits, tok), 0.0)
    recent = jnp.where(
        live[:, None], jnp.concatenate([state.recent[:, 1:], tok[:, None]], axis=1), state.recent
    )
    ended = jnp.where(jnp.isin(tok, eos_ids), EOS, jnp.where(stop_hit(recent, stop_seqs), STOP, RUNNING))
    finish = jnp.where(live, ended, state.finish)
    col = jnp.where(live, step, n)  # rows not live write nowhere
    rows = jnp.arange(b)
    lengths = state.lengths + live.astype(jnp.int32)
    return state._replace(
        tokens=state.tokens.at[rows, col].set(tok, mode="drop"),
        logprobs=state.logprobs.at[rows, col].set(lp, mode="drop"),
        lengths=lengths,
        finish=finish,
        live=live & (finish == RUNNING) & (lengths < limit),
        recent=recent,
    )


@functools.partial(jax.jit, static_argnames=("cfg", "packed_len", "cache_dtype"), donate_argnames=("state",))
def insert(
    cfg: ModelConfig,
    params: Any,
    state: Slots,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    slot_ids: jax.Array,
    row_keys: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    max_new_tokens: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    pad_id: jax.Array,
    shared: PrefixCache | None = None,
    packed_len: int | None = None,
    cache_dtype: str | None = None,
) -> Slots:
    """Prefills R new prompts into the given slots and draws each one's first token.

    Args:
      cfg: the model config (static).
      params: unstacked parameters.
      state: the `Slots` (donated: updated in place).
      prompt: [R, P] int32 the prompts' tokens after the shared prefix, left-padded.
      prompt_mask: [R, P] bool, False on padding.
      slot_ids: [R] int32 the slot each prompt goes to; B (out of range) for filler rows,
        which are dropped.
      row_keys: [R] PRNG keys of the prompts' rows.
      eos_ids: [E] int32 token ids that end a row.
      stop_seqs: [S, Ls] int32 stop sequences, right-aligned, -1 = wildcard padding.
      max_new_tokens: scalar int32, at most this many tokens per row (at most N).
      temperature, top_k, top_p: scalars, as in `decode_loop.decode`.
      pad_id: scalar int32.
      shared: the stage's shared prefix (`decode_loop.shared_prefix_cache`), or None.
      packed_len: see `decode_loop.decode` (static).
      cache_dtype: the cache's dtype, the same as `init_slots`' (static).

    Returns:
      The `Slots` with the new rows live in their slots (unless their first token ended
      them).
    """
    r, p = prompt.shape
    b, length = state.cache.valid.shape
    c = 0 if shared is None else shared.k[0].shape[2]
    logits, new, prompt_len = prefill(
        cfg,
        params,
        prompt,
        prompt_mask,
        length - c - p,
        cache_dtype,
        packed_len,
        shared,
        jnp.full((r,), p - 1),
    )

    def put(dst: jax.Array, src: jax.Array) -> jax.Array:
        return dst.at[slot_ids].set(src.astype(dst.dtype), mode="drop")

    cache = KVCache(
        tuple(put(d, s) for d, s in zip(state.cache.k, new.k)),
        tuple(put(d, s) for d, s in zip(state.cache.v, new.v)),
        put(state.cache.valid, new.valid),
        put(state.cache.index, jnp.full((r,), c + p, jnp.int32)),
    ).constrained()
    n = state.tokens.shape[1]
    fresh = Slots(  # the new rows on their own, [R, ...]; `_emit` draws their first tokens
        cache=new,
        tokens=jnp.full((r, n), pad_id, jnp.int32),
        logprobs=jnp.zeros((r, n), jnp.float32),
        lengths=jnp.zeros((r,), jnp.int32),
        finish=jnp.full((r,), RUNNING, jnp.int32),
        live=jnp.ones((r,), bool),
        row_keys=row_keys,
        prompt_len=prompt_len,
        recent=jnp.full((r, state.recent.shape[1]), -1, jnp.int32),
    )
    limit = jnp.minimum(max_new_tokens, n)
    fresh = _emit(fresh, logits[:, 0], eos_ids, stop_seqs, limit, temperature, top_k, top_p, pad_id)
    return Slots(
        cache=cache,
        tokens=put(state.tokens, fresh.tokens),
        logprobs=put(state.logprobs, fresh.logprobs),
        lengths=put(state.lengths, fresh.lengths),
        finish=put(state.finish, fresh.finish),
        live=put(state.live, fresh.live),
        row_keys=state.row_keys.at[slot_ids].set(row_keys, mode="drop"),
        prompt_len=put(state.prompt_len, fresh.prompt_len),
        recent=put(state.recent, fresh.recent),
    )


# Not donated: no output has an input's shape, so XLA could reuse none of its buffers (JAX
# warns on every call); the old state is freed once the caller drops it.
@jax.jit
def compact(state: Slots, keep: jax.Array) -> Slots:
    """The slots `keep` of `state`, in that order, as a state of fewer slots.

    Once the queue is empty no refill takes a finished row's place, so the slots of the
    last rows' batch idle as those rows drain. Moving the live rows into a state of half
    as many slots halves what each drain step computes; a row's tokens stay the same, as
    in any other slot (module docstring).

    Args:
      state: the `Slots` of B slots.
      keep: [B'] int32 distinct slot indices, every live slot among them.

    Returns:
      `Slots` of B' slots: slot j is `state`'s slot keep[j].
    """

    def take(x: jax.Array) -> jax.Array:
        return x[keep]

    cache = state.cache
    return state._replace(
        cache=KVCache(
            tuple(take(x) for x in cache.k),
            tuple(take(x) for x in cache.v),
            take(cache.valid),
            take(cache.index),
        ).constrained(),
        **{f: take(getattr(state, f)) for f in Slots._fields if f != "cache"},
    )


@functools.partial(jax.jit, static_argnames=("cfg",), donate_argnames=("state",))
def decode_segment(
    cfg: ModelConfig,
    params: Any,
    state: Slots,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    max_new_tokens: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    pad_id: jax.Array,
    max_steps: jax.Array,
    min_free: jax.Array,
) -> tuple[Slots, jax.Array, jax.Array]:
    """Decode steps for every slot until `min_free` slots are not live, or `max_steps`.

    Also stops when no slot is live. Slots that are not live compute a step too (the
    batch's shape is fixed) but record nothing.

    Args:
      cfg: the model config (static).
      params: unstacked parameters.
      state: the `Slots` (donated: updated in place).
      eos_ids, stop_seqs, max_new_tokens, temperature, top_k, top_p, pad_id: as in `insert`.
      max_steps: scalar int32, the most decode steps to run.
      min_free: scalar int32, stop once this many slots are not live (B + 1: only when
        none is).

    Returns:
      (the updated `Slots`, scalar int32 decode steps run, scalar int32 slot-steps of those
      that decoded a live row).
    """
    b, n = state.tokens.shape
    limit = jnp.minimum(max_new_tokens, n)
    rows = jnp.arange(b)

    def cond(carry: tuple[jax.Array, jax.Array, Slots]) -> jax.Array:
        """Runs while steps remain, some row is live and too few slots are free."""
        k, _, st = carry
        free = b - jnp.sum(st.live.astype(jnp.int32))
        return (k < max_steps) & (free < min_free) & jnp.any(st.live)

    def body(carry: tuple[jax.Array, jax.Array, Slots]) -> tuple[jax.Array, jax.Array, Slots]:
        """Feeds each row's last token through the model, then samples its next one."""
        k, busy, st = carry
        busy = busy + jnp.sum(st.live.astype(jnp.int32))
        last = st.tokens[rows, jnp.maximum(st.lengths - 1, 0)][:, None]
        pos = (st.prompt_len + jnp.maximum(st.lengths - 1, 0))[:, None]
        # Rows that are not live write their (ignored) key into their current slot and keep
        # it valid, so that every row attends to at least one slot (no empty softmax).
        logits, cache = decode_forward(cfg, params, last, pos, jnp.ones_like(last), st.cache)
        cache = cache._replace(index=st.cache.index + st.live.astype(jnp.int32)).constrained()
        st = _emit(
            st._replace(cache=cache),
            logits[:, 0],
            eos_ids,
            stop_seqs,
            limit,
            temperature,
            top_k,
            top_p,
            pad_id,
        )
        return k + 1, busy, st

    zero = jnp.zeros((), jnp.int32)
    steps, busy, state = jax.lax.while_loop(cond, body, (zero, zero, state))
    return state, steps, busy
