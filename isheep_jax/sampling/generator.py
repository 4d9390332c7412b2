"""Batch driver (`Generator`): the user-facing sampler, thousands of prompts in, completions out in order.

This layer tokenises, sorts, batches, pads and buckets the prompts, runs each batch through
`sampling.decode_loop.decode` (which chooses tokens with `sampling.token_choice`), and turns
the tokens back into text.

Prompts are sorted by length and cut into batches; batch size, prompt length and token
capacity are rounded up to buckets so a long job compiles a handful of times. Each row's
random stream is keyed by (seed, row id), so outputs do not depend on batching, sort
order or mesh, and a resumed job reproduces an uninterrupted one.
"""

from __future__ import annotations

import bisect
import collections
import dataclasses
import functools
import gc
import time
from collections.abc import Callable, Sequence
from typing import Literal

import gin
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from isheep_jax.backends.cpu import kernels
from isheep_jax.core import choices, compile_clock, hooks
from isheep_jax.model import checkpoint
from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import Params
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.model.transformer import unstack_layers
from isheep_jax.parallel import distributed, sharding
from isheep_jax.sampling import continuous, decode_loop, prompt_tree

PROMPT_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)
# `score`'s rows, half a step finer: a prefill computes attention over its whole padded
# width ([rows, heads, P, P]), and a prompt tree's row is longer than a prompt, so a power of
# two would often pad it to nearly twice its tokens. Scoring keeps no cache to grow.
SCORE_BUCKETS = tuple(sorted({*PROMPT_BUCKETS, *(3 * b // 2 for b in PROMPT_BUCKETS[2:-1])}))
# A shared prefix is rounded down to one of these (shorter ones are not worth a separate
# prefill): the prompts of a stage share a template, and a job compiles once per length.
PREFIX_BUCKETS = (
    16,
    24,
    32,
    48,
    64,
    96,
    128,
    192,
    256,
    384,
    512,
    768,
    1024,
    1536,
    2048,
    3072,
    4096,
    6144,
    8192,
)
CAPACITY_BUCKETS = (8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192)
# How the sampler batches rows: 'continuous' refills each slot from the queue as its row
# ends (`sampling.continuous`); 'static' decodes each batch until its longest row ends.
Batching = Literal["continuous", "static"]
# Continuous batching stops decoding to refill once this fraction of the slots is free (at
# least one): refilling one slot at a time would prefill one row per call, and waiting for
# more leaves slots idle. 1/8 idles about 1/16 of the slot-steps on average.
REFILL_FRACTION = 8
SEGMENT_STEPS = 128  # decode steps between two looks at the slots (progress, refills)
# Why a completion ended: the token budget ran out, an EOS token, or a stop string.
FinishReason = Literal["length", "eos", "stop"]
FINISH_NAMES: dict[int, FinishReason] = {
    decode_loop.RUNNING: "length",
    decode_loop.EOS: "eos",
    decode_loop.STOP: "stop",
}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class SamplingSettings:
    """Sampling settings of one stage (temperature <= 0 is greedy; see token_choice.py for order).

    Attributes:
      max_new_tokens: at most this many generated tokens per prompt (>= 1).
      temperature: divides the logits; <= 0 means greedy.
      top_p: nucleus mass in (0, 1]; 1 disables top-p.
      top_k: tokens kept by top-k; <= 0 disables it.
      seed: the base of every row's random stream (with the row id).
      stop_strings: strings that end a completion; the text is cut before the first one.
      batch_size: prompts decoded at once (rows are padded up to a power of two).

    Raises:
      ValueError: max_new_tokens < 1, top_p outside (0, 1], or batch_size < 1.
    """

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 0.95
    top_k: int = 0
    seed: int = 0
    stop_strings: tuple[str, ...] = ()
    batch_size: int = 32

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class Completion:
    """One prompt's completion.

    Attributes:
      token_ids: generated token ids, EOS excluded (a stop string's tokens may end it).
      text: decoded text, cut before any stop string.
      finish_reason: 'length', 'eos' or 'stop'.
      logprobs: log p of each token of `token_ids` under the raw model distribution.
      prompt_tokens: tokens of the prompt, special tokens and any shared prefix included.
      raw_text: like `text` but with the special tokens kept (a chat-turn marker the model
        wrote mid-answer shows there, while `text` drops it): what filters should read.
    """

    token_ids: list[int]  # generated tokens, EOS excluded (a stop string's tokens may end it)
    text: str  # decoded text, cut before any stop string
    finish_reason: FinishReason
    logprobs: list[float]  # per generated token, raw model distribution
    prompt_tokens: int
    raw_text: str = ""  # the same with special tokens kept


def bucket(n: int, buckets: Sequence[int]) -> int:
    """Rounds `n` up to the smallest bucket that holds it.

    Args:
      n: a length.
      buckets: ascending bucket sizes.

    Returns:
      The smallest bucket >= n.

    Raises:
      ValueError: n exceeds the largest bucket.
    """
    i = bisect.bisect_left(buckets, n)
    if i == len(buckets):
        raise ValueError(f"length {n} exceeds the largest bucket {buckets[-1]}")
    return buckets[i]


def _pow2_at_least(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def packed_prefill_len(mask: np.ndarray, parts: int = 4) -> int | None:
    """Tokens a packed prefill computes for a prompt mask (`decode`'s `packed_len`).

    Args:
      mask: [B, P] bool prompt mask, True on real tokens.
      parts: the real tokens are rounded up to a multiple of B * P / parts: at most
        parts - 1 extra compiles per shape bucket.

    Returns:
      The rounded count; None when that is all of them (the padded prefill, no gathers).
    """
    unit = max(mask.size // parts, 1)
    n = -(-int(mask.sum()) // unit) * unit
    return None if n >= mask.size else n


def shared_prefix_len(prompts: Sequence[Sequence[int]]) -> int:
    """Tokens to prefill once for all prompts (the shared prefix's length).

    Args:
      prompts: token ids of every prompt, each a sequence of ints.

    Returns:
      Their longest common prefix, rounded down to a PREFIX_BUCKETS length, leaving every
      prompt at least one token of its own; 0 when that is below the smallest bucket (or
      there are no prompts).
    """
    if not prompts:
        return 0
    first, limit = prompts[0], min(len(x) for x in prompts) - 1
    n = 0
    while n < limit and all(x[n] == first[n] for x in prompts):
        n += 1
    return round_down_prefix(n)


def round_down_prefix(n: int) -> int:
    """`n` rounded down to a PREFIX_BUCKETS length (0 below the smallest).

    Args:
      n: a prefix length.

    Returns:
      The largest bucket <= n, or 0.
    """
    i = bisect.bisect_right(PREFIX_BUCKETS, n)
    return PREFIX_BUCKETS[i - 1] if i else 0


def _progress_bar(total: int, progress: bool | str, default: str) -> tqdm:
    """A per-prompt progress bar: `progress` a string names it, False hides it."""
    return tqdm(
        total=total,
        desc=progress if isinstance(progress, str) else default,
        unit="prompt",
        disable=not progress,
        leave=False,
    )


def _stop_array(tokenizer: Tokenizer, stop_strings: Sequence[str]) -> np.ndarray:
    """Stop strings as right-aligned token-id rows ([S, L], -1 = padding) for the device check."""
    seqs = [tokenizer.encode(s, add_special_tokens=False) for s in stop_strings]
    seqs = [s for s in seqs if s]
    width = max((len(s) for s in seqs), default=1)
    arr = np.full((len(seqs), width), -1, np.int32)
    for i, s in enumerate(seqs):
        arr[i, width - len(s) :] = s
    return arr


def _cut_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    cuts = [text.find(s) for s in stop_strings if s and s in text]
    return (text[: min(cuts)], True) if cuts else (text, False)


KV_CACHE_DTYPES = ("", "float32", "bfloat16", "float16")  # '' = the compute dtype


def check_kv_cache_dtype(name: str) -> str | None:
    """Checks a `Generator.kv_cache_dtype` value.

    Args:
      name: one of KV_CACHE_DTYPES ('' = the compute dtype).

    Returns:
      The dtype name, or None for the compute dtype ('').

    Raises:
      ValueError: `name` is not one of KV_CACHE_DTYPES.
    """
    if name not in KV_CACHE_DTYPES:
        raise ValueError(f"kv_cache_dtype must be one of {KV_CACHE_DTYPES}, got {name!r}")
    return name or None


@dataclasses.dataclass
class SamplerStats:
    """What one `Generator.generate` call did (for logs and benchmarks).

    Attributes:
      rows: prompts completed.
      tokens: tokens generated (each row's EOS or stop tokens included).
      decode_steps: decode steps run (each feeds one token to every slot of a batch).
      slot_steps: decode steps times the slots they ran on; a row's first token comes from
        its prefill, so `tokens - rows` of them did useful work.
      queued_slot_steps: continuous batching: the slot-steps run while prompts were
        waiting for a slot (before the queue ran dry and the last rows drained).
      queued_busy_steps: of which those that decoded a live row.
      seconds: wall time of the call.
      compile_seconds: of which tracing and compiling.
    """

    rows: int = 0
    tokens: int = 0
    decode_steps: int = 0
    slot_steps: int = 0
    queued_slot_steps: int = 0
    queued_busy_steps: int = 0
    seconds: float = 0.0
    compile_seconds: float = 0.0

    @property
    def utilisation(self) -> float:
        """Fraction of the slot-steps that decoded a live row (1.0 when there were none)."""
        return (self.tokens - self.rows) / self.slot_steps if self.slot_steps else 1.0

    @property
    def utilisation_while_queued(self) -> float:
        """Continuous batching's utilisation while prompts waited: the scheduler's own share
        of the idle slot-steps, without the drain at the end (1.0 when there were none)."""
        return self.queued_busy_steps / self.queued_slot_steps if self.queued_slot_steps else 1.0

    @property
    def tokens_per_second(self) -> float:
        """Generated tokens per second of wall time outside compilation."""
        run = self.seconds - self.compile_seconds
        return self.tokens / run if run > 0 else 0.0


@gin.configurable(
    allowlist=[
        "kv_cache_dtype",
        "share_prefix",
        "prompt_trees",
        "batching",
        "drain_min_slots",
        "score_batch_tokens",
    ]
)
class Generator:
    """Holds a model + tokenizer on a mesh and samples batches of prompts.

    Args:
      cfg: the model config.
      params: the model's (stacked) parameters; an unstacked copy is kept (see
        `model.unstack_layers`), so the caller may drop these afterwards.
      tokenizer: encodes prompts and decodes completions; gives the pad and EOS ids.
      mesh: the device mesh to sample on (default: `sharding.make_mesh()`).
      extra_eos_ids: token ids that end a completion besides the config's and the
        tokenizer's EOS ids.
      kv_cache_dtype: the KV cache's dtype ('' = the compute dtype). 'bfloat16' under f32
        compute halves the cache's memory (room for larger sampling batches; `isheep plan`
        counts it) at the price of rounding keys and values: tokens may differ from an f32
        cache's after a near-tie, so it is not the default. It need not speed up decoding
        on a CPU, where converting the keys and values can cost what the halved reads save
        (measurements: benchmarks/HISTORY.md).
      share_prefix: the prefix that all prompts of one `generate` call share (a chat
        template's system turn, a rating prompt's header, few-shot demonstrations; see
        `shared_prefix_len`) is prefilled once per batch instead of once per row. The
        caches have the shapes they would have without it, so decoding costs the same.
        Same results up to float summation order.
      prompt_trees: `score` (with `share_prefix`) prefills prompts that share a further
        prefix among themselves, such as the two rating prompts of one pair, as one tree:
        their common part once, then each prompt's own tokens (`sampling.prompt_tree`).
        Same results up to float summation order; False scores each prompt on its own row.
      batching: 'continuous' (default): `settings.batch_size` slots, each refilled with the
        next prompt as soon as its row ends, so no slot decodes past its row's end (see
        `sampling.continuous`); a call whose prompts fit in one batch has nothing to refill
        from and runs as one static batch. 'static': each batch decodes until its longest
        row ends. The same tokens either way wherever the logits agree to the last bit.
      drain_min_slots: continuous batching: once the queue is empty, whenever half or fewer
        of the slots hold a live row, those rows move into the fewest power-of-two slots
        that hold them but no fewer than this (`continuous.compact`), so the drain does not
        decode idle slots; same tokens. Each smaller slot count costs a compile of the decode
        segment (cached like the others), which pays only where a stage has many slots: 8 by
        default, so a call of 8 slots or fewer never compacts; 1 compacts down to one slot.
      score_batch_tokens: `score` puts at most this many padded prompt tokens (rows times
        the batch's SCORE_BUCKETS length) into one prefill, and never pads a row up to a longer
        bucket than its own: a prefill's activations and attention scores ([rows, heads,
        P, P]) stay bounded whatever `batch_size` asks for. The default, 8192, holds a
        judge's 32 rows of 256 tokens, or 8 of 1024. Same results for any value.

    Raises:
      ValueError: `kv_cache_dtype` is not one of KV_CACHE_DTYPES, or `batching` not one of
        `Batching`'s values.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        params: Params,
        tokenizer: Tokenizer,
        mesh: Mesh | None = None,
        extra_eos_ids: Sequence[int] = (),
        kv_cache_dtype: str = "",
        share_prefix: bool = True,
        prompt_trees: bool = True,
        batching: Batching = "continuous",
        drain_min_slots: int = 8,
        score_batch_tokens: int = 8192,
    ):
        # Decoding runs the layers unrolled on per-layer arrays (see model.unstack_layers); the
        # caller may drop the stacked params afterwards to free their memory.
        self.kv_cache_dtype = check_kv_cache_dtype(kv_cache_dtype)
        choices.check("Generator", "batching", batching, Batching)
        if drain_min_slots < 1:
            raise ValueError(f"Generator.drain_min_slots must be at least 1, got {drain_min_slots}")
        if score_batch_tokens < 1:
            raise ValueError(f"Generator.score_batch_tokens must be at least 1, got {score_batch_tokens}")
        self.batching, self.drain_min_slots = batching, drain_min_slots
        self.score_batch_tokens = score_batch_tokens
        self.last_stats = SamplerStats()  # of the last `generate` call
        kernels.load()  # the CPU decode kernel is built (or found) before anything is traced
        self.share_prefix, self.prompt_trees = share_prefix, prompt_trees
        self.cfg, self.tokenizer = cfg, tokenizer
        self.params = jax.jit(functools.partial(unstack_layers, head_dtype=cfg.dtype))(params)
        self.mesh = mesh or sharding.make_mesh()
        eos = set(cfg.eos_token_ids) | set(extra_eos_ids)
        if tokenizer.eos_id is not None:
            eos.add(tokenizer.eos_id)
        self.eos_ids = np.asarray(sorted(eos) or [-1], np.int32)
        self.pad_id = tokenizer.pad_id

    def encode_prompts(
        self, prompts: Sequence[str | Sequence[int]], add_special_tokens: bool = True
    ) -> list[list[int]]:
        """Token ids of every prompt: strings are tokenised, token-id sequences kept as they are.

        Args:
          prompts: each a string or a sequence of token ids.
          add_special_tokens: whether the tokenizer adds its special tokens (BOS) to strings.

        Returns:
          One list of int token ids per prompt, in input order.

        Raises:
          ValueError: a prompt has no tokens.
        """
        texts = [p for p in prompts if isinstance(p, str)]
        encoded = iter(self.tokenizer.encode_batch(texts, add_special_tokens) if texts else [])
        out = [list(next(encoded)) if isinstance(p, str) else [int(t) for t in p] for p in prompts]
        for i, ids in enumerate(out):
            if not ids:
                raise ValueError(f"prompt {i} is empty after tokenisation")
        return out

    def generate(
        self,
        prompts: Sequence[str | Sequence[int]],
        settings: SamplingSettings,
        row_ids: Sequence[int] | None = None,
        add_special_tokens: bool = True,
        progress: bool | str = True,
        groups: Sequence[int] | None = None,
        on_done: Callable[[int, Completion], None] | None = None,
    ) -> list[Completion]:
        """Samples a completion for every prompt; results come back in input order.

        Args:
          prompts: each a string or a sequence of token ids.
          settings: the sampling settings.
          row_ids: stable ids keying each row's random stream (default: the prompt index).
          add_special_tokens: whether to add the tokenizer's special tokens to string prompts.
            Chat prompts already rendered with their template should pass False.
          progress: show a progress bar (a string: with that description; False: none).
          groups: one int per prompt: prompts of a lower group are started first (longest
            prompt first within a group), so a caller that saves results group by group
            (`sampling.chunked`) sees its groups finish nearly in order while the slots stay
            full across their boundaries. Default: one group. Scheduling never changes a
            row's tokens (see `batching`).
          on_done: `on_done(i, completion)` is called as soon as prompt i's row has ended
            (in the order rows end), before the call returns.

        Returns:
          One `Completion` per prompt, in input order.

        Raises:
          ValueError: a prompt is empty, `row_ids` and `prompts` differ in length,
            `max_new_tokens` exceeds the largest capacity bucket, or a prompt plus the
            token capacity exceeds the model's max_position_embeddings.
        """
        ids = self.encode_prompts(prompts, add_special_tokens)
        row_ids = list(range(len(ids))) if row_ids is None else list(row_ids)
        if len(row_ids) != len(ids):
            raise ValueError(f"{len(row_ids)} row_ids for {len(ids)} prompts")
        groups = [0] * len(ids) if groups is None else list(groups)
        if len(groups) != len(ids):
            raise ValueError(f"{len(groups)} groups for {len(ids)} prompts")
        capacity = bucket(settings.max_new_tokens, CAPACITY_BUCKETS)
        too_long = [i for i, x in enumerate(ids) if len(x) + capacity > self.cfg.max_position_embeddings]
        if too_long:
            raise ValueError(
                f"prompts {too_long[:5]} (+{len(too_long) - 5 if len(too_long) > 5 else 0}) "
                f"plus {capacity} new tokens exceed max_position_embeddings="
                f"{self.cfg.max_position_embeddings}"
            )
        stop_arr = _stop_array(self.tokenizer, settings.stop_strings)
        # Decided for the whole call, not per batch, so results never depend on batching.
        prefix = ids[0][: shared_prefix_len(ids)] if self.share_prefix and ids else []
        order = sorted(range(len(ids)), key=lambda i: (groups[i], -len(ids[i])))
        results: list[Completion | None] = [None] * len(ids)
        base_key = jax.random.key(settings.seed)
        bar = _progress_bar(len(ids), progress, "sampling")
        stats, t0, c0 = SamplerStats(), time.perf_counter(), compile_clock.seconds()

        def done(i: int, c: Completion, steps: int, slot_steps: int) -> None:
            """Records prompt i's completion and the decode work that went into it."""
            results[i] = c
            if on_done is not None:
                on_done(i, c)
            stats.rows += 1
            stats.tokens += len(c.token_ids) + (c.finish_reason == "eos")
            stats.decode_steps += steps
            stats.slot_steps += slot_steps

        def tick(rows: int) -> None:
            """Moves the bar on, with tokens/s outside compilation and compile time apart."""
            stats.seconds, stats.compile_seconds = time.perf_counter() - t0, compile_clock.seconds() - c0
            hooks.after_sampling_batch()
            bar.update(rows)
            bar.set_postfix(tok_s=f"{stats.tokens_per_second:.1f}", compile_s=f"{stats.compile_seconds:.1f}")

        # Prompts that fit in one batch leave no queue to refill slots from: the static program
        # does the same slot-steps with one compile where slots take three (init, insert, decode).
        slots = self.batching == "continuous" and len(ids) > settings.batch_size
        if slots:
            self._run_slots(
                ids, order, row_ids, settings, capacity, stop_arr, base_key, prefix, done, tick, stats
            )
        for start in range(0, 0 if slots else len(order), settings.batch_size):
            chunk = order[start : start + settings.batch_size]
            out, b = self._run_batch(
                [ids[i][len(prefix) :] for i in chunk],
                [row_ids[i] for i in chunk],
                settings,
                capacity,
                stop_arr,
                base_key,
                prefix,
            )
            steps = max(len(c.token_ids) + (c.finish_reason == "eos") for c in out) - 1
            for j, (i, c) in enumerate(zip(chunk, out)):
                done(i, c, steps if j == 0 else 0, b * steps if j == 0 else 0)
            tick(len(chunk))
        bar.close()
        stats.seconds, stats.compile_seconds = time.perf_counter() - t0, compile_clock.seconds() - c0
        self.last_stats = stats
        return results  # type: ignore[return-value]

    def _sampling_args(self, settings: SamplingSettings, stop_arr: np.ndarray) -> tuple[jax.Array, ...]:
        """The traced arguments both decode loops take, in their order: EOS ids, stop
        sequences, max_new_tokens, temperature, top-k, top-p, pad id."""
        return (
            jnp.asarray(self.eos_ids),
            jnp.asarray(stop_arr),
            jnp.int32(settings.max_new_tokens),
            jnp.float32(settings.temperature),
            jnp.int32(settings.top_k),
            jnp.float32(settings.top_p),
            jnp.int32(self.pad_id),
        )

    def _run_slots(
        self,
        ids: list[list[int]],
        order: list[int],
        row_ids: list[int],
        settings: SamplingSettings,
        capacity: int,
        stop_arr: np.ndarray,
        base_key: jax.Array,
        prefix: list[int],
        done: Callable[[int, Completion, int, int], None],
        tick: Callable[[int], None],
        stats: SamplerStats,
    ) -> None:
        """Continuous batching over all prompts: slots refilled from the queue as rows end.

        Args:
          ids: every prompt's tokens (the shared prefix included).
          order: the queue of prompt indices, by group and longest first within a group
            (refills of similar lengths share a prompt bucket).
          row_ids: each prompt's row id.
          settings: the sampling settings (`batch_size` is the number of slots).
          capacity: N, the token capacity.
          stop_arr: stop sequences ([S, Ls], `_stop_array`).
          base_key: the seed's key; row r draws from fold_in(base_key, r).
          prefix: the shared prefix, prefilled once for the call.
          done: `done(i, completion, decode_steps, slot_steps)` records prompt i.
          tick: `tick(rows)` after each refill round that completed rows.
          stats: where the slot-steps run while prompts waited are counted.
        """
        cfg, c = self.cfg, len(prefix)
        b = min(_pow2_at_least(len(ids)), _pow2_at_least(settings.batch_size))
        length = bucket(max(len(x) for x in ids), PROMPT_BUCKETS) + capacity
        sampling_args = self._sampling_args(settings, stop_arr)
        with sharding.activation_sharding(self.mesh):
            shared = _shared_prefix_cache(cfg, self.params, jnp.asarray(prefix, jnp.int32)) if c else None
            state = continuous.init_slots(
                cfg,
                self.mesh,
                b,
                length,
                capacity,
                max(stop_arr.shape[1], 1),
                jnp.int32(self.pad_id),
                self.kv_cache_dtype,
            )
        queue = collections.deque(order)
        occupant = [-1] * b  # the prompt each slot holds, -1: free
        min_free = max(1, b // REFILL_FRACTION)
        pending = [0, 0]  # decode steps and slot-steps not yet credited to a finished row
        while queue or any(o >= 0 for o in occupant):
            free = [s for s in range(b) if occupant[s] < 0]
            if queue and free:
                take = [queue.popleft() for _ in range(min(len(free), len(queue)))]
                r = min(_pow2_at_least(len(take)), b)
                tokens, mask, packed_len = self._pad_batch([ids[i][c:] for i in take], r, prefix)
                slot_ids = free[: len(take)] + [b] * (r - len(take))  # filler rows go nowhere
                keys = jax.vmap(lambda x: jax.random.fold_in(base_key, x))(
                    jnp.asarray([row_ids[i] for i in take] + [0] * (r - len(take)), jnp.uint32)
                )
                with sharding.activation_sharding(self.mesh):
                    state = continuous.insert(
                        cfg,
                        self.params,
                        state,
                        tokens,
                        mask,
                        jnp.asarray(slot_ids, jnp.int32),
                        keys,
                        *sampling_args,
                        shared=shared,
                        packed_len=packed_len,
                        cache_dtype=self.kv_cache_dtype,
                    )
                for s, i in zip(slot_ids, take):
                    occupant[s] = i
            waiting = bool(queue)
            if queue:  # stop to refill once enough slots are free
                stop_at = min(min_free, len(queue))
            elif b // 2 >= self.drain_min_slots:  # the drain: stop once half or fewer are live
                stop_at = b - b // 2
            else:  # run until no row is live
                stop_at = b + 1
            with sharding.activation_sharding(self.mesh):
                state, steps, busy = continuous.decode_segment(
                    cfg,
                    self.params,
                    state,
                    *sampling_args,
                    jnp.int32(SEGMENT_STEPS),
                    jnp.int32(stop_at),
                )
            live, steps, busy = distributed.to_host((state.live, steps, busy))
            pending[0] += int(steps)
            pending[1] += b * int(steps)
            if waiting:
                stats.queued_slot_steps += b * int(steps)
                stats.queued_busy_steps += int(busy)
            ended = [s for s in range(b) if occupant[s] >= 0 and not live[s]]
            if ended:
                toks, lps, lens, fin = distributed.to_host(
                    (state.tokens, state.logprobs, state.lengths, state.finish)
                )
                for s in ended:
                    i, occupant[s] = occupant[s], -1
                    completion = self._completion(
                        toks[s, : lens[s]], lps[s, : lens[s]], int(fin[s]), len(ids[i]), settings.stop_strings
                    )
                    done(i, completion, *pending)
                    pending = [0, 0]
                tick(len(ended))
            held = [s for s in range(b) if occupant[s] >= 0]
            fewer = max(_pow2_at_least(len(held)), self.drain_min_slots)
            if not queue and held and fewer < b:
                spare = [s for s in range(b) if occupant[s] < 0]
                keep = held + spare[: fewer - len(held)]
                with sharding.activation_sharding(self.mesh):
                    state = continuous.compact(state, jnp.asarray(keep, jnp.int32))
                occupant, b = [occupant[s] for s in keep], len(keep)

    def _run_batch(
        self,
        batch_ids: list[list[int]],
        rows: list[int],
        settings: SamplingSettings,
        capacity: int,
        stop_arr: np.ndarray,
        base_key: jax.Array,
        prefix: list[int],
    ) -> tuple[list[Completion], int]:
        """Decodes one batch of at most `settings.batch_size` prompts (static batching).

        batch_ids: each prompt's tokens after the shared `prefix`; rows: their row ids.
        Returns the completions and the padded batch size.
        """
        n = len(batch_ids)
        b = min(_pow2_at_least(n), _pow2_at_least(settings.batch_size))
        tokens, mask, packed_len = self._pad_batch(batch_ids, b, prefix)
        row_keys = jax.vmap(lambda r: jax.random.fold_in(base_key, r))(
            jnp.asarray(rows + [0] * (b - n), jnp.uint32)
        )
        with sharding.activation_sharding(self.mesh):
            out = decode_loop.decode(
                self.cfg,
                self.params,
                tokens,
                mask,
                row_keys,
                *self._sampling_args(settings, stop_arr),
                capacity=capacity,
                cache_dtype=self.kv_cache_dtype,
                packed_len=packed_len,
                prefix=jnp.asarray(prefix, jnp.int32) if prefix else None,
            )
        toks, lps, lens, fin = distributed.to_host(out)
        completions = [
            self._completion(
                toks[r, : lens[r]],
                lps[r, : lens[r]],
                int(fin[r]),
                len(prefix) + len(batch_ids[r]),
                settings.stop_strings,
            )
            for r in range(n)
        ]
        return completions, b

    def _pad_batch(
        self, batch_ids: list[list[int]], b: int, prefix: list[int]
    ) -> tuple[jax.Array, jax.Array, int | None]:
        """Left-pads a batch's own tokens (after `prefix`) into b rows on the mesh.

        Args:
          batch_ids: each row's tokens after the shared prefix (at most b rows).
          b: the padded batch size.
          prefix: the shared prefix.

        Returns:
          (tokens [b, P] int32, mask [b, P] bool, both sharded over the batch; the packed
          prefill length or None), P rounded so that prefix + P is a PROMPT_BUCKETS length.
        """
        n = len(batch_ids)
        # The rows' own tokens fill the whole prompt bucket less the prefix: the cache has the
        # shape it would have without a shared prefix, and decoding costs the same.
        p = bucket(len(prefix) + max(len(x) for x in batch_ids), PROMPT_BUCKETS) - len(prefix)
        tokens = np.full((b, p), self.pad_id, np.int32)
        mask = np.zeros((b, p), bool)
        for r, x in enumerate(batch_ids):
            tokens[r, p - len(x) :] = x
            mask[r, p - len(x) :] = True
        mask[n:, -1] = True  # filler rows: one token so they are well defined
        batch_sharding = sharding.logical_to_sharding(("batch", "length"), (b, p), self.mesh)
        # Packing gathers tokens across rows, so only where rows are not split over devices.
        packed_len = packed_prefill_len(mask) if batch_sharding.shard_shape((b, p))[0] == b else None
        return (
            distributed.put_global(tokens, batch_sharding),
            distributed.put_global(mask, batch_sharding),
            packed_len,
        )

    def score(
        self,
        prompts: Sequence[str | Sequence[int]],
        select: Sequence[int],
        forced: Sequence[int] = (),
        batch_size: int = 32,
        add_special_tokens: bool = True,
        progress: bool | str = True,
    ) -> np.ndarray:
        """Log-probabilities of chosen next tokens after every prompt: prefill only, no decoding.

        Each prompt is followed by the `forced` tokens (teacher forcing), so a score that
        takes several tokens ("1", "0" for "10") is read from one prefill. With
        `share_prefix`, what all prompts share is prefilled once, and with `prompt_trees`
        prompts that share a further prefix among themselves (a pair's two rating prompts)
        are prefilled as one tree: their common part once, then each prompt's own tokens. Rows
        are sorted by length and batched within their SCORE_BUCKETS length, at most `batch_size`
        rows and `score_batch_tokens` padded tokens a batch.

        Args:
          prompts: each a string or a sequence of token ids.
          select: [K] token ids whose log-probabilities are returned.
          forced: [F] token ids appended to every prompt.
          batch_size: rows (prompts or trees) per prefill, padded up to a power of two.
          add_special_tokens: whether to add the tokenizer's special tokens to string prompts.
          progress: show a progress bar (a string: with that description; False: none).

        Returns:
          [N, F + 1, K] f32 array: entry [i, j, k] is log p(select[k]) after prompt i
          followed by forced[:j], under the raw model distribution.

        Raises:
          ValueError: a prompt is empty, `select` is empty or holds an id outside the
            vocabulary, or a prompt plus the forced tokens exceeds max_position_embeddings.
        """
        select = [int(t) for t in select]
        vocab = self.cfg.vocab_size
        if not select or any(not 0 <= t < vocab for t in select):
            raise ValueError(f"select must be non-empty token ids in [0, {vocab}), got {select[:8]}")
        ids = [x + [int(t) for t in forced] for x in self.encode_prompts(prompts, add_special_tokens)]
        too_long = [i for i, x in enumerate(ids) if len(x) > self.cfg.max_position_embeddings]
        if too_long:
            raise ValueError(
                f"prompts {too_long[:5]} plus {len(forced)} forced tokens exceed "
                f"max_position_embeddings={self.cfg.max_position_embeddings}"
            )
        own = len(forced) + 1  # the positions read from each prompt
        out = np.zeros((len(ids), own, len(select)), np.float32)
        if not ids:
            return out
        prefix = ids[0][: shared_prefix_len(ids)] if self.share_prefix and ids else []
        # The forced tokens are part of every row's own tokens: the prefix must leave them out.
        prefix = prefix[: max(min(len(x) for x in ids) - own, 0)]
        prefix = prefix[: round_down_prefix(len(prefix))]
        rest = [x[len(prefix) :] for x in ids]
        if self.share_prefix and self.prompt_trees:
            groups = prompt_tree.group_prompts(rest, own, max_row=SCORE_BUCKETS[-1] - len(prefix))
        else:
            groups = [prompt_tree.PromptGroup((i,), 0) for i in range(len(ids))]
        row_lens = [len(prefix) + g.row_len([len(x) for x in rest]) for g in groups]
        order = sorted(range(len(groups)), key=lambda g: -row_lens[g])
        bar = _progress_bar(len(ids), progress, "scoring")
        select_arr = jnp.asarray(select, jnp.int32)
        prefix_arr = jnp.asarray(prefix, jnp.int32) if prefix else None
        scored, t0 = 0, time.perf_counter()
        for chunk in self._score_batches(row_lens, order, batch_size):
            b = min(_pow2_at_least(len(chunk)), _pow2_at_least(batch_size))
            batch, packed_len = self._tree_batch([groups[g] for g in chunk], rest, b, len(prefix), own)
            with sharding.activation_sharding(self.mesh):
                lp = decode_loop.prompt_logprobs(
                    self.cfg, self.params, *batch, select_arr, packed_len=packed_len, prefix=prefix_arr
                )
            lp = np.asarray(distributed.to_host(lp))
            for r, g in enumerate(chunk):
                for j, i in enumerate(groups[g].members):
                    out[i] = lp[r, j * own : (j + 1) * own]
                    scored += len(ids[i])
            hooks.after_sampling_batch()
            bar.update(sum(len(groups[g].members) for g in chunk))
            bar.set_postfix(prompt_tok_s=f"{scored / (time.perf_counter() - t0):.0f}")
        bar.close()
        return out

    def _tree_batch(
        self, groups: list[prompt_tree.PromptGroup], rest: list[list[int]], b: int, prefix_len: int, own: int
    ) -> tuple[tuple[jax.Array, ...], int | None]:
        """A batch of prompt trees (`prompt_tree.layout`) on the mesh, for `prompt_logprobs`.

        Args:
          groups: the batch's trees (at most b).
          rest: every prompt's tokens after the shared prefix.
          b: the padded batch size.
          prefix_len: the shared prefix's tokens.
          own: the positions read from each prompt.

        Returns:
          (tokens, segment_ids, parent_ids, positions, logits_index, all sharded over the
          batch; the packed prefill length or None), the width rounded so that the prefix
          plus it is a SCORE_BUCKETS length.
        """
        lengths = [len(x) for x in rest]
        p = bucket(prefix_len + max(g.row_len(lengths) for g in groups), SCORE_BUCKETS) - prefix_len
        tree = prompt_tree.layout(groups, rest, b, p, own, self.pad_id)
        batch_sharding = sharding.logical_to_sharding(("batch", "length"), (b, p), self.mesh)
        # Packing gathers tokens across rows, so only where rows are not split over devices.
        split = batch_sharding.shard_shape((b, p))[0] != b
        # Eighths, not quarters: a prompt tree's batch has fewer real tokens than its members'
        # would in the same shape, and scoring has no decode steps to amortise the rounding.
        packed_len = None if split else packed_prefill_len(tree.segment_ids != 0, parts=8)
        index_sharding = sharding.logical_to_sharding(("batch", None), tree.logits_index.shape, self.mesh)
        arrays = tuple(distributed.put_global(a, batch_sharding) for a in tree[:4])
        return arrays + (distributed.put_global(tree.logits_index, index_sharding),), packed_len

    def _score_batches(
        self, lengths: Sequence[int], order: Sequence[int], batch_size: int
    ) -> list[list[int]]:
        """Splits rows sorted longest first into `score`'s prefill batches.

        A batch takes the next rows while they fall in its first row's SCORE_BUCKETS length
        (what `_tree_batch` pads the batch to), up to `batch_size` rows and
        `score_batch_tokens` padded tokens, rows padded up to a power of two (at least one row).

        Args:
          lengths: each row's tokens (a prompt or a prompt tree; shared prefix and forced
            tokens included), indexed like the rows.
          order: the rows' indices, longest first.
          batch_size: the most rows per batch.

        Returns:
          The batches, as lists of row indices.
        """
        batches: list[list[int]] = []
        p = 0  # the last batch's padded length
        for i in order:
            n = bucket(lengths[i], SCORE_BUCKETS)
            rows = len(batches[-1]) if batches else 0
            fits = rows < batch_size and _pow2_at_least(rows + 1) * p <= self.score_batch_tokens
            if batches and n == p and fits:
                batches[-1].append(i)
            else:
                batches.append([i])
                p = n
        return batches

    def _completion(
        self, toks: np.ndarray, lps: np.ndarray, finish: int, prompt_tokens: int, stop_strings: Sequence[str]
    ) -> Completion:
        """One row's `Completion`: the final EOS dropped, the text cut at any stop string."""
        toks, lps = toks.tolist(), lps.tolist()
        reason = FINISH_NAMES[finish]
        if reason == "eos":
            toks, lps = toks[:-1], lps[:-1]
        text, stopped = _cut_at_stop(self.tokenizer.decode(toks), stop_strings)
        raw, raw_stopped = _cut_at_stop(self.tokenizer.decode(toks, skip_special_tokens=False), stop_strings)
        if stopped or raw_stopped:
            reason = "stop"
        return Completion(
            token_ids=toks,
            text=text,
            finish_reason=reason,
            logprobs=lps,
            prompt_tokens=prompt_tokens,
            raw_text=raw,
        )


_shared_prefix_cache = jax.jit(decode_loop.shared_prefix_cache, static_argnames=("cfg",))


class GeneratorCache:
    """Holds the Generator of one checkpoint at a time.

    A 7B model and its unstacked copy are plenty of memory, so switching models frees the
    previous one first.

    Args:
      mesh: the device mesh to load the checkpoints onto and sample on (None: the default mesh).
    """

    def __init__(self, mesh: Mesh | None = None):
        self.mesh, self.dir, self.gen = mesh, None, None

    def get(self, model_dir: str) -> Generator:
        """The Generator of `model_dir`, loaded (after releasing the previous one) if not held.

        Args:
          model_dir: the checkpoint directory (`model.checkpoint.load_model`).

        Returns:
          Its `Generator`.
        """
        if self.dir != model_dir:
            self.release()
            cfg, params = checkpoint.load_model(model_dir, self.mesh)
            self.gen = Generator(cfg, params, Tokenizer(checkpoint.tokenizer_dir(model_dir)), self.mesh)
            del params
            self.dir = model_dir
        return self.gen

    def release(self) -> None:
        """Drops the held Generator and frees its memory now: garbage collected, and the pages
        handed back where the host heap retains them (`core.hooks.after_release`)."""
        self.dir, self.gen = None, None
        gc.collect()
        hooks.after_release()


def completion_row(o: Completion) -> dict:
    """The JSON-able result of one completion (what the run's chunk files store): "text",
    "finish_reason" and "num_tokens" (generated tokens, EOS excluded), and "raw_text"
    (special tokens kept) where it differs from "text"."""
    row = {"text": o.text, "finish_reason": o.finish_reason, "num_tokens": len(o.token_ids)}
    if o.raw_text != o.text:
        row["raw_text"] = o.raw_text
    return row


def completion_rows(
    gen: Generator,
    prompts: Sequence[str],
    row_ids: Sequence[int],
    settings: SamplingSettings,
    chat: bool,
    desc: str,
    groups: Sequence[int] | None = None,
    on_row: Callable[[int, dict], None] | None = None,
) -> list[dict]:
    """JSON-able results (`completion_row`) of rendered prompts, in one `generate` call.

    Args:
      gen: the generator to sample with.
      prompts: rendered prompt strings.
      row_ids: one stable id per prompt, keying its random stream.
      settings: the sampling settings.
      chat: the prompts were rendered with a chat template, which already holds the special
        tokens the tokenizer would otherwise add (BOS).
      desc: the progress bar's description.
      groups: the admission groups (`Generator.generate`); default one group.
      on_row: `on_row(i, row)` as soon as prompt i's row has ended.

    Returns:
      One dict per prompt, in input order.
    """
    outs = gen.generate(
        prompts,
        settings,
        row_ids=row_ids,
        add_special_tokens=not chat,
        progress=desc,
        groups=groups,
        on_done=None if on_row is None else lambda i, c: on_row(i, completion_row(c)),
    )
    return [completion_row(o) for o in outs]


def completion_stream(
    gen: Callable[[], Generator], settings: SamplingSettings, chat: bool, desc: str
) -> Callable[[Sequence[str], Sequence[int], Sequence[int], Callable[[int, dict], None]], None]:
    """`completion_rows` as a `sampling.chunked` stream: `stream(prompts, row_ids, groups,
    on_row)` samples them all in one call of `gen()`, called lazily (nothing loads when
    every chunk is on disk).

    Args:
      gen: returns the generator to sample with.
      settings: the sampling settings.
      chat: the prompts were rendered with a chat template (no BOS added).
      desc: the progress bar's description.

    Returns:
      The stream.
    """

    def stream(prompts, row_ids, groups, on_row) -> None:
        completion_rows(gen(), prompts, row_ids, settings, chat, desc, groups, on_row)

    return stream
