"""Chunked sampling: a stage's prompts in resumable chunks, each chunk's results a file of its own.

This layer sits above the sampler: it only decides which prompts still need results and
hands them to a `generate` callable (typically wrapping `sampling.generator.completion_rows`).

Row ids are global prompt indices, so a row's random stream never depends on chunking or
restarts: a chunk computed after a restart is identical to one computed before.
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


def sample_in_chunks(
    chunk_dir: Any,
    prompts: Sequence[str],
    chunk_size: int,
    generate: Callable[[Sequence[str], Sequence[int]], list[dict]],
    desc: str,
) -> list[dict]:
    """Results for every prompt, computing only chunks not already on disk.

    Chunk c holds prompts [c * chunk_size, (c + 1) * chunk_size); the row ids passed to
    `generate` are those global prompt indices.

    Args:
      chunk_dir: directory (`epath.Path`, local or gs://) of the chunk files `<n>.jsonl`
        (n the chunk index, zero-padded to 5 digits).
      prompts: all prompts of the stage.
      chunk_size: prompts per chunk (>= 1).
      generate: `generate(prompts, row_ids)` returns one JSON-able dict per prompt.
      desc: name of the stage, for the log.

    Returns:
      One dict per prompt, in input order.

    Raises:
      ChunkError: a chunk file's length is wrong (a different config); never silently reused.
        Only the row count is checked: a file of the right length is reused as it is.
    """
    out: list[dict] = []
    n_chunks = math.ceil(len(prompts) / chunk_size)
    for c in range(n_chunks):
        lo, hi = c * chunk_size, min(len(prompts), (c + 1) * chunk_size)
        path = chunk_path(chunk_dir, c)
        if io_utils.exists(path):
            rows = io_utils.read_jsonl(path)
            if len(rows) != hi - lo:
                raise ChunkError(
                    f"{path}: has {len(rows)} rows, expected {hi - lo}; the chunk belongs to another "
                    "config. Delete the chunks directory to recompute it."
                )
        else:
            rows = generate(prompts[lo:hi], list(range(lo, hi)))
            io_utils.write_jsonl(path, rows)
        out.extend(rows)
        log.info("%s: chunk %d/%d done", desc, c + 1, n_chunks)
    return out
