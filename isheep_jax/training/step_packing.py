"""A step's examples re-packed into the fewest rows, so a train step computes no empty slots.

Unpacked SFT rows hold one pair each, padded to the longest pair the data allows: the
demo's pairs fill about a quarter of their 400-token rows, and the last step of an epoch
holds a few pairs in otherwise empty rows. The loss is token-weighted over the whole step
(`train_step`), so where a step's examples sit does not change it: `repack` moves each
example (a segment: its tokens, targets, weights and positions) into the fewest rows that
hold them (first fit, longest first), and the step runs on that many rows, one of a few
counts so that it compiles a few times per run. Pure numpy, on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SEGMENT_KEY = "decoder_segment_ids"


def row_options(batch_rows: int, micro_batches: int, data_parallel: int) -> list[int]:
    """The row counts a re-packed step may take, ascending.

    Powers of two times what every micro-batch needs (`micro_batches * data_parallel`
    rows: one per batch shard in each), up to the step's own rows, which always hold it.

    Args:
      batch_rows: the step's rows (`TrainConfig.batch_size`).
      micro_batches: micro-batches per step; divides `batch_rows`.
      data_parallel: the batch shards of one micro-batch's rows (1: not sharded).

    Returns:
      The row counts, the largest `batch_rows`.
    """
    unit = micro_batches * data_parallel
    options, n = [], unit
    while n < batch_rows:
        options.append(n)
        n *= 2
    return options + [batch_rows]


def _segments(seg: np.ndarray) -> list[tuple[int, int, int]]:
    """(row, start, end) of every example in [rows, length] segment ids (each contiguous)."""
    spans = []
    for r, row in enumerate(seg):
        ids = row[row > 0]
        for s in np.unique(ids):
            where = np.flatnonzero(row == s)
            spans.append((r, int(where[0]), int(where[-1]) + 1))
    return spans


def repack(batch: dict[str, np.ndarray], options: Sequence[int]) -> dict[str, np.ndarray]:
    """The step's examples in the fewest rows of `options` that hold them.

    Args:
      batch: `sft_data.MODEL_KEYS` -> int32 [rows, length] arrays, packed or not; segment
        ids > 0 mark each example's tokens (contiguous within its row), 0 padding.
      options: the row counts allowed (`row_options`), ascending.

    Returns:
      The same keys -> int32 [R, length]: every example's values unchanged, each in a row of
      its own segment id (1, 2, ... within the row), R the smallest option that holds them
      by first fit longest first; `batch` itself when that is not fewer rows.
    """
    seg = batch[SEGMENT_KEY]
    rows, length = seg.shape
    spans = sorted(_segments(seg), key=lambda x: -(x[2] - x[1]))
    fill: list[int] = []  # tokens used in each new row
    place = []  # (new row, offset) of each span
    for _, start, end in spans:
        n = end - start
        r = next((i for i, used in enumerate(fill) if used + n <= length), None)
        if r is None:
            r = len(fill)
            fill.append(0)
        place.append((r, fill[r]))
        fill[r] += n
    target = next((o for o in options if o >= len(fill)), rows)
    if target >= rows:
        return batch
    out = {k: np.zeros((target, length), v.dtype) for k, v in batch.items()}
    count = [0] * target
    for (r, start, end), (new, at) in zip(spans, place):
        count[new] += 1
        for k, v in batch.items():
            out[k][new, at : at + end - start] = v[r, start:end]
        out[SEGMENT_KEY][new, at : at + end - start] = count[new]
    return out
