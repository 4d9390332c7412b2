"""Resumable chunked sampling: finished chunks are reused, foreign ones refused."""

import pytest

from isheep_jax.core import io_utils
from isheep_jax.sampling.chunked import ChunkError, chunk_files, sample_in_chunks


def test_sample_in_chunks_reuses_finished_chunks(tmp_path):
    calls = []

    def generate(prompts, ids):
        calls.append(list(ids))
        return [{"text": p.upper(), "row": i} for p, i in zip(prompts, ids)]

    d = io_utils.as_path(tmp_path / "chunks")
    prompts = [f"p{i}" for i in range(5)]
    first = sample_in_chunks(d, prompts, 2, generate, "test")
    assert calls == [[0, 1], [2, 3], [4]] and [r["row"] for r in first] == list(range(5))
    (tmp_path / "chunks" / "00001.jsonl").unlink()  # as if killed while writing chunk 1
    calls.clear()
    assert sample_in_chunks(d, prompts, 2, generate, "test") == first
    assert calls == [[2, 3]]  # only the missing chunk is recomputed, with its global row ids
    io_utils.write_jsonl(d / "00002.jsonl", [])
    with pytest.raises(ChunkError, match="00002.jsonl: has 0 rows, expected 1"):
        sample_in_chunks(d, prompts, 2, generate, "test")


def test_chunk_files_skip_a_temporary_copy_left_by_a_killed_write(tmp_path):
    d = io_utils.as_path(tmp_path / "chunks")
    assert chunk_files(d) == []
    rows = [{"text": "a", "num_tokens": 3}]
    io_utils.write_jsonl(d / "00000.jsonl", rows)
    io_utils.write_jsonl(d / "00001.jsonl", rows)
    # On gs:// a rename is a copy and a delete: a kill between them leaves both names.
    (tmp_path / "chunks" / ".00001.jsonl.tmp-0123abcd").write_text(
        (tmp_path / "chunks" / "00001.jsonl").read_text()
    )
    assert [p.name for p in chunk_files(d)] == ["00000.jsonl", "00001.jsonl"]
