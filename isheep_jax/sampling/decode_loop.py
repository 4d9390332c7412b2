"""Decode loop: one jit-compiled call that prefills a padded batch and decodes it in a `lax.while_loop`.

This layer runs one batch already tokenised and padded, over an explicit KV cache; how
each token is chosen from the logits is `sampling.token_choice`, and batching, bucketing
and text are `sampling.generator`.

Prompts are left-padded to a common length P, so every row writes the same cache slot at
each step (no per-row scatter); each row's positions start at 0 at its first real token
and padding slots are never attended to (`KVCache.valid`). A prefix that all prompts share
is prefilled once (`model.PrefixCache`); the rows' prefill attends to it before their own
tokens and writes it into the first slots of every row's cache. Static: the model config,
batch, P and the new-token capacity N; traced: max_new_tokens <= N, temperature, top-k,
top-p, seeds, EOS ids and stop sequences, so a long job compiles once per shape bucket.
The loop exits as soon as every row is done.

`prompt_logprobs` is the same prefill without the decode loop: the log-probabilities of
chosen tokens at chosen positions, what a judge's score is read from; its rows may hold
prompt trees (`sampling.prompt_tree`), a prefix shared by a few prompts computed once.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import positions_from_segments
from isheep_jax.model.transformer import KVCache, PrefixCache, decode_forward, init_cache, make_packing
from isheep_jax.sampling import token_choice

RUNNING, EOS, STOP = 0, 1, 2  # finish codes; RUNNING at the end means 'length'


class DecodeOutput(NamedTuple):
    """What `decode` returns for a batch of B rows with token capacity N.

    Attributes:
      tokens: [B, N] int32 generated token ids, `pad_id` after each row's end.
      logprobs: [B, N] f32 log p of each token under the raw model distribution (0 after the end).
      lengths: [B] int32 tokens generated, the terminating EOS / stop tokens included.
      finish: [B] int32 finish code: RUNNING (hit max_new_tokens or N), EOS or STOP.
    """

    tokens: jax.Array  # [B, N] int32, pad after the end
    logprobs: jax.Array  # [B, N] f32, log p of each token under the raw model distribution
    lengths: jax.Array  # [B] tokens generated, the terminating EOS / stop tokens included
    finish: jax.Array  # [B] RUNNING (hit max_new_tokens) | EOS | STOP


class _State(NamedTuple):
    step: jax.Array
    tokens: jax.Array
    logprobs: jax.Array
    lengths: jax.Array
    finish: jax.Array
    cache: KVCache
    recent: jax.Array  # [B, Ls] the last Ls generated tokens, for stop sequences


def stop_hit(recent: jax.Array, stop_seqs: jax.Array) -> jax.Array:
    """Which rows' last generated tokens end with a stop sequence.

    Args:
      recent: [B, L] int32 each row's last L generated tokens.
      stop_seqs: [S, L] int32 stop sequences, right-aligned, -1 = wildcard padding.

    Returns:
      [B] bool.
    """
    if stop_seqs.shape[0] == 0:
        return jnp.zeros(recent.shape[:1], bool)
    match = (stop_seqs[None] == -1) | (recent[:, None, :] == stop_seqs[None])
    nonempty = jnp.any(stop_seqs != -1, axis=-1)
    return jnp.any(jnp.all(match, axis=-1) & nonempty[None], axis=-1)


def shared_prefix_cache(cfg: ModelConfig, params: Any, prefix: jax.Array) -> PrefixCache:
    """Keys and values of a prefix every row shares, computed once (one row).

    In the compute dtype, as the rows' own keys: rounded to the cache's dtype only when
    written into it.

    Args:
      cfg: the model config.
      params: unstacked parameters.
      prefix: [C] int32 tokens, C >= 1.

    Returns:
      The `PrefixCache`: per layer k, v [1, kv_heads, C, head_dim].
    """
    c = prefix.shape[0]
    _, one = decode_forward(
        cfg,
        params,
        prefix[None],
        jnp.arange(c)[None],
        jnp.ones((1, c), jnp.int32),
        init_cache(cfg, 1, c),
        logits_index=jnp.zeros((1,), jnp.int32),
        fresh_cache=True,
    )
    return PrefixCache(one.k, one.v).constrained()


def prefill(
    cfg: ModelConfig,
    params: Any,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    capacity: int,
    cache_dtype: str | None,
    packed_len: int | None,
    shared: PrefixCache | None,
    logits_index: jax.Array,
) -> tuple[jax.Array, KVCache, jax.Array]:
    """Prefills left-padded prompts (after a shared prefix already computed) into a fresh cache.

    Args:
      cfg: the model config.
      params: unstacked parameters.
      prompt: [B, P] int32, left-padded.
      prompt_mask: [B, P] bool, False on padding.
      capacity: cache slots left empty after the prompts (the new tokens').
      cache_dtype: the cache's dtype (None: the compute dtype).
      packed_len: see `decode`.
      shared: the shared prefix's keys and values (`shared_prefix_cache`), or None.
      logits_index: [B] or [B, K] positions of `prompt` whose logits are returned.

    Returns:
      (logits [B, 1 or K, V] f32, the cache [prefix | prompts | `capacity` empty slots],
      its index after the prompts; prompt lengths [B] with the prefix).
    """
    b, p = prompt.shape
    c = 0 if shared is None else shared.k[0].shape[2]
    cache = init_cache(cfg, b, c + p + capacity, cache_dtype).constrained()
    seg = prompt_mask.astype(jnp.int32)
    positions = positions_from_segments(seg) + c
    packing = None if packed_len is None else make_packing(prompt_mask, packed_len)
    logits, cache = decode_forward(
        cfg,
        params,
        prompt,
        positions,
        seg,
        cache,
        logits_index=logits_index,
        fresh_cache=True,
        packing=packing,
        prefix=shared,
    )
    return logits, cache.constrained(), jnp.sum(seg, axis=1) + c


def _prefill(cfg, params, prompt, prompt_mask, capacity, cache_dtype, packed_len, prefix, logits_index):
    """`prefill` with the shared prefix given as tokens ([C] int32 or None)."""
    shared = None if prefix is None or not prefix.shape[0] else shared_prefix_cache(cfg, params, prefix)
    return prefill(cfg, params, prompt, prompt_mask, capacity, cache_dtype, packed_len, shared, logits_index)


@functools.partial(jax.jit, static_argnames=("cfg", "packed_len"))
def prompt_logprobs(
    cfg: ModelConfig,
    params: Any,
    tokens: jax.Array,
    segment_ids: jax.Array,
    parent_ids: jax.Array,
    positions: jax.Array,
    logits_index: jax.Array,
    select: jax.Array,
    packed_len: int | None = None,
    prefix: jax.Array | None = None,
) -> jax.Array:
    """Next-token log-probabilities of chosen tokens at chosen prompt positions: a prefill, no decoding.

    What a judge's score is read from: the distribution at the answer position (and, for
    scores that take several tokens, after each forced token), without sampling a reply.
    A row holds one prompt or a prompt tree (`sampling.prompt_tree`): a trunk that several
    prompts share, then each prompt's own tokens, attending to the trunk and themselves
    only. Only the `logits_index` positions reach the vocabulary projection, and only the
    `select` columns leave the device.

    Args:
      cfg: the model config (static).
      params: unstacked parameters (`model.unstack_layers`).
      tokens: [B, P] int32 token ids, left-padded.
      segment_ids: [B, P] int32, 0 on padding (`prompt_tree.TreeBatch`).
      parent_ids: [B, P] int32, the segment each token's segment continues (0: none).
      positions: [B, P] int32 positions after the shared prefix (which the function adds).
      logits_index: [B, K] int32 positions of each row whose log-probabilities are returned.
      select: [S] int32 token ids whose log-probabilities are returned.
      packed_len: see `decode` (static).
      prefix: [C] int32 tokens every row's prompts start with, prefilled once; None: none.

    Returns:
      [B, K, S] f32: entry [b, k, s] is log p(select[s] | the tokens row b's position
      logits_index[b, k] sees, itself included), under the raw model distribution.
    """
    b, p = tokens.shape
    shared = None if prefix is None or not prefix.shape[0] else shared_prefix_cache(cfg, params, prefix)
    c = 0 if shared is None else shared.k[0].shape[2]
    packing = None if packed_len is None else make_packing(segment_ids != 0, packed_len)
    logits, _ = decode_forward(
        cfg,
        params,
        tokens,
        positions + c,
        segment_ids,
        init_cache(cfg, b, c + p).constrained(),
        logits_index=logits_index,
        fresh_cache=True,
        packing=packing,
        prefix=shared,
        parent_ids=parent_ids,
    )
    return jnp.take(jax.nn.log_softmax(logits, axis=-1), select, axis=-1)


@functools.partial(jax.jit, static_argnames=("cfg", "capacity", "cache_dtype", "packed_len"))
def decode(
    cfg: ModelConfig,
    params: Any,
    prompt: jax.Array,
    prompt_mask: jax.Array,
    row_keys: jax.Array,
    eos_ids: jax.Array,
    stop_seqs: jax.Array,
    max_new_tokens: jax.Array,
    temperature: jax.Array,
    top_k: jax.Array,
    top_p: jax.Array,
    pad_id: jax.Array,
    capacity: int,
    cache_dtype: str | None = None,
    packed_len: int | None = None,
    prefix: jax.Array | None = None,
) -> DecodeOutput:
    """Prefills a batch of left-padded prompts and samples up to `max_new_tokens` per row.

    Jit-compiled; `cfg`, `capacity`, `cache_dtype` and `packed_len` are static (along with
    the shapes), every other argument is traced.

    Args:
      cfg: the model config (static).
      params: unstacked parameters (`model.unstack_layers`).
      prompt: [B, P] int32 token ids, left-padded.
      prompt_mask: [B, P] bool, False on padding.
      row_keys: [B] PRNG keys, one per row (keyed by seed and row id).
      eos_ids: [E] int32 token ids that end a row (finish EOS).
      stop_seqs: [S, Ls] int32 stop sequences of token ids, right-aligned, -1 = wildcard
        padding (S may be 0); a row whose last generated tokens match one ends (finish STOP).
      max_new_tokens: scalar int32, at most this many tokens per row (also capped at `capacity`).
      temperature: scalar f32; <= 0 means greedy.
      top_k: scalar int32; <= 0 disables top-k.
      top_p: scalar f32; >= 1 disables top-p.
      pad_id: scalar int32 written after each row's end.
      capacity: N, the cache slots for new tokens and the width of the outputs (static).
      cache_dtype: the KV cache's dtype (default: compute dtype); bfloat16 under f32
        compute halves the bytes each decode step reads.
      packed_len: prefill only the real prompt tokens, padded to this many (>= the mask's
        count; see `model.Packing`); None computes the padded batch. Same results either way.
      prefix: [C] int32 tokens every row's prompt starts with (`prompt` then holds what
        follows them, left-padded): prefilled once for all rows. None or C = 0: no shared
        prefix.

    Returns:
      A `DecodeOutput`: tokens and logprobs [B, N], lengths and finish codes [B].
    """
    b, p = prompt.shape
    logits, cache, prompt_len = _prefill(
        cfg,
        params,
        prompt,
        prompt_mask,
        capacity,
        cache_dtype,
        packed_len,
        prefix,
        jnp.full((b,), p - 1),
    )

    def emit(state: _State, logits: jax.Array) -> _State:
        """Samples token `step` for every row and records it (pads rows already done)."""
        keys = token_choice.row_step_keys(row_keys, state.step)
        tok = token_choice.sample_tokens(logits, keys, temperature, top_k, top_p)
        done = state.finish != RUNNING
        tok = jnp.where(done, pad_id, tok)
        lp = jnp.where(done, 0.0, token_choice.token_logprobs(logits, tok))
        recent = jnp.concatenate([state.recent[:, 1:], tok[:, None]], axis=1)
        finish = jnp.where(
            done,
            state.finish,
            jnp.where(jnp.isin(tok, eos_ids), EOS, jnp.where(stop_hit(recent, stop_seqs), STOP, RUNNING)),
        )
        return state._replace(
            step=state.step + 1,
            tokens=state.tokens.at[:, state.step].set(tok),
            logprobs=state.logprobs.at[:, state.step].set(lp),
            lengths=state.lengths + (~done).astype(jnp.int32),
            finish=finish,
            recent=recent,
        )

    state = _State(
        step=jnp.zeros((), jnp.int32),
        tokens=jnp.full((b, capacity), pad_id, jnp.int32),
        logprobs=jnp.zeros((b, capacity), jnp.float32),
        lengths=jnp.zeros((b,), jnp.int32),
        finish=jnp.full((b,), RUNNING, jnp.int32),
        cache=cache,
        recent=jnp.full((b, max(stop_seqs.shape[1], 1)), -1, jnp.int32),
    )
    state = emit(state, logits[:, 0])
    limit = jnp.minimum(max_new_tokens, capacity)

    def cond(state: _State) -> jax.Array:
        """Continues while the token budget lasts and some row is still running."""
        return (state.step < limit) & jnp.any(state.finish == RUNNING)

    def body(state: _State) -> _State:
        """One decode step: feeds each row's last token through the model, then samples the next."""
        last = state.tokens[:, state.step - 1][:, None]
        pos = (prompt_len + state.step - 1)[:, None]
        logits, cache = decode_forward(cfg, params, last, pos, jnp.ones_like(last), state.cache)
        return emit(state._replace(cache=cache.constrained()), logits[:, 0])

    state = jax.lax.while_loop(cond, body, state)
    return DecodeOutput(state.tokens, state.logprobs, state.lengths, state.finish)
