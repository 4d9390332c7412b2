"""Chunked sampling: a stage's prompts in resumable chunks, each chunk's results a file of its own.

This layer sits above the sampler: it only decides which prompts still need results and
hands them, all at once, to a `stream` callable (typically wrapping
`sampling.generator.completion_rows`), which reports each row as it ends; a chunk's file is
written as soon as its last row is in. One sampler call for the whole stage keeps every slot
busy across chunk boundaries (a chunk no longer drains before the next one starts), and a
kill loses only the chunks still in flight. Batch functions that return a chunk's rows at
once (prefill-only scoring) run chunk by chunk through `per_group`.

Row ids are global prompt indices, so a row's random stream never depends on chunking or
restarts: a chunk computed after a restart draws the same random numbers as before, and
gives the same rows wherever the model's logits agree to the last bit (the batch it shares
with other rows changes only the summation order).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from isheep_jax.core import io_utils

log = logging.getLogger(__name__)


_CHUNK_NAME = re.compile(r"\d{5}\.jsonl")


class ChunkError(ValueError):
    """A chunk file on disk that does not fit the prompts asked for (another config wrote it)."""


def chunk_path(chunk_dir: Any, c: int) -> Any:
    """The file of chunk `c` in `chunk_dir`: `<c, zero-padded to 5 digits>.jsonl`."""
    return chunk_dir / f"{c:05d}.jsonl"


def chunk_files(chunk_dir: Any) -> list[Any]:
    """The finished chunk files in `chunk_dir`, sorted; [] when it does not exist.

    Only `NNNNN.jsonl` names count: a run killed inside a write can leave its temporary
    sibling behind (on gs:// a rename is a copy then a delete), and that copy of a chunk
    must not be counted twice.
    """
    if not io_utils.exists(chunk_dir):
        return []
    return sorted(p for p in chunk_dir.iterdir() if _CHUNK_NAME.fullmatch(p.name))


OnRow = Callable[[int, dict], None]
# stream(prompts, row_ids, groups, on_row): calls on_row(k, row) once for every prompt k.
Stream = Callable[[Sequence[str], Sequence[int], Sequence[int], OnRow], object]
Batch = Callable[[Sequence[str], Sequence[int]], list[dict]]


def per_group(generate: Batch) -> Stream:
    """A `Stream` that runs a batch function once per group, lowest group first.

    Args:
      generate: `generate(prompts, row_ids)` returns one JSON-able dict per prompt.

    Returns:
      `stream(prompts, row_ids, groups, on_row)`.
    """

    def stream(prompts: Sequence[str], row_ids: Sequence[int], groups: Sequence[int], on_row: OnRow) -> None:
        for g in sorted(set(groups)):
            ks = [k for k, x in enumerate(groups) if x == g]
            rows = generate([prompts[k] for k in ks], [row_ids[k] for k in ks])
            if len(rows) != len(ks):
                raise RuntimeError(f"generate returned {len(rows)} rows for {len(ks)} prompts")
            for k, row in zip(ks, rows):
                on_row(k, row)

    return stream


def stream_in_chunks(
    chunk_dir: Any, prompts: Sequence[str], chunk_size: int, stream: Stream, desc: str
) -> list[dict]:
    """Results for every prompt, computing in one `stream` call only the chunks not on disk.

    Chunk c holds prompts [c * chunk_size, (c + 1) * chunk_size). The missing chunks' prompts
    go to `stream` with their global prompt indices as row ids and their chunk index as
    group; each chunk file is written when its last row is reported.

    Args:
      chunk_dir: directory (`epath.Path`, local or gs://) of the chunk files `<n>.jsonl`
        (n the chunk index, zero-padded to 5 digits).
      prompts: all prompts of the stage.
      chunk_size: prompts per chunk (>= 1).
      stream: `stream(prompts, row_ids, groups, on_row)` calls `on_row(k, row)` (k: the
        index in the prompts it was given, row: a JSON-able dict) once for every prompt,
        in any order.
      desc: name of the stage, for the log.

    Returns:
      One dict per prompt, in input order.

    Raises:
      ChunkError: a chunk file's length is wrong (a different config); never silently reused.
        Only the row count is checked: a file of the right length is reused as it is.
      RuntimeError: `stream` returned without reporting every row.
    """
    out: list[dict | None] = [None] * len(prompts)
    n_chunks = math.ceil(len(prompts) / chunk_size)
    bounds = [(c * chunk_size, min(len(prompts), (c + 1) * chunk_size)) for c in range(n_chunks)]
    missing = []
    for c, (lo, hi) in enumerate(bounds):
        path = chunk_path(chunk_dir, c)
        if not io_utils.exists(path):
            missing.append(c)
            continue
        rows = io_utils.read_jsonl(path)
        if len(rows) != hi - lo:
            raise ChunkError(
                f"{path}: has {len(rows)} rows, expected {hi - lo}; the chunk belongs to another "
                "config. Delete the chunks directory to recompute it."
            )
        out[lo:hi] = rows
    if missing:
        log.info(
            "%s: %d of %d chunks on disk, sampling %d", desc, n_chunks - len(missing), n_chunks, len(missing)
        )
        todo = [k for c in missing for k in range(*bounds[c])]
        left = {c: bounds[c][1] - bounds[c][0] for c in missing}

        def on_row(j: int, row: dict) -> None:
            k = todo[j]
            c = k // chunk_size
            if out[k] is not None:
                raise RuntimeError(f"{desc}: row {k} reported twice")
            out[k] = row
            left[c] -= 1
            if not left[c]:
                io_utils.write_jsonl(chunk_path(chunk_dir, c), out[slice(*bounds[c])])
                log.info("%s: chunk %d/%d done", desc, c + 1, n_chunks)

        stream([prompts[k] for k in todo], todo, [k // chunk_size for k in todo], on_row)
        unfinished = [c for c in missing if left[c]]
        if unfinished:
            raise RuntimeError(f"{desc}: the sampler returned without rows of chunks {unfinished[:5]}")
    return out  # type: ignore[return-value]


def sample_in_chunks(
    chunk_dir: Any,
    prompts: Sequence[str],
    chunk_size: int,
    generate: Batch,
    desc: str,
) -> list[dict]:
    """Results for every prompt, computing only chunks not already on disk, one call per chunk.

    `stream_in_chunks` with `per_group(generate)`: for batch functions that return a chunk's
    rows at once (prefill-only scoring), where finished rows cannot free a slot.

    Args:
      chunk_dir: directory (`epath.Path`, local or gs://) of the chunk files.
      prompts: all prompts of the stage.
      chunk_size: prompts per chunk (>= 1).
      generate: `generate(prompts, row_ids)` returns one JSON-able dict per prompt; the row
        ids are global prompt indices.
      desc: name of the stage, for the log.

    Returns:
      One dict per prompt, in input order.

    Raises:
      ChunkError: a chunk file's length is wrong (a different config).
    """
    return stream_in_chunks(chunk_dir, prompts, chunk_size, per_group(generate), desc)
