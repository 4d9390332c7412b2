"""Resumable chunked sampling: finished chunks are reused, foreign ones refused."""

import pytest

from isheep_jax.core import io_utils
from isheep_jax.sampling.chunked import ChunkError, chunk_files, per_group, sample_in_chunks, stream_in_chunks


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


class _Killed(Exception):
    pass


def test_stream_in_chunks_writes_each_chunk_when_its_last_row_ends(tmp_path):
    """One stream call for every missing chunk; rows end out of order; a chunk's file appears
    with its last row, so a kill mid-stage keeps the chunks already complete."""
    d = io_utils.as_path(tmp_path / "chunks")
    prompts = [f"p{i}" for i in range(7)]
    calls, written = [], []

    def stream(kill_after=None):
        def run(ps, ids, groups, on_row):
            calls.append((list(ids), list(groups)))
            # Rows end in an order unlike the input's: a long row of chunk 0 ends last.
            ends = sorted(range(len(ps)), key=lambda k: (ids[k] == 1, -groups[k], k))
            for n, k in enumerate(ends):
                if n == kill_after:
                    raise _Killed
                on_row(k, {"text": ps[k].upper(), "row": ids[k]})
                written.append(sorted(p.name for p in chunk_files(d)))

        return run

    with pytest.raises(_Killed):
        stream_in_chunks(d, prompts, 3, stream(kill_after=4), "test")
    assert calls == [([0, 1, 2, 3, 4, 5, 6], [0, 0, 0, 1, 1, 1, 2])]
    # Chunk 2 (row 6) and chunk 1 (rows 3-5) ended first and are on disk; chunk 0 waits on row 1.
    assert [p.name for p in chunk_files(d)] == ["00001.jsonl", "00002.jsonl"]
    assert written[0] == ["00002.jsonl"] and written[3] == ["00001.jsonl", "00002.jsonl"]
    calls.clear()
    out = stream_in_chunks(d, prompts, 3, stream(), "test")
    assert calls == [([0, 1, 2], [0, 0, 0])]  # only the unfinished chunk is sampled again
    assert [r["row"] for r in out] == list(range(7)) and out[4]["text"] == "P4"
    assert io_utils.read_jsonl(d / "00000.jsonl") == out[:3]


def test_stream_in_chunks_refuses_a_stream_that_drops_or_repeats_rows(tmp_path):
    d = io_utils.as_path(tmp_path / "chunks")

    def drops(ps, ids, groups, on_row):
        on_row(0, {"text": "a"})

    with pytest.raises(RuntimeError, match=r"without rows of chunks \[1\]"):
        stream_in_chunks(d, ["a", "b"], 1, drops, "test")
    assert [p.name for p in chunk_files(d)] == ["00000.jsonl"]  # the finished chunk is kept

    def repeats(ps, ids, groups, on_row):
        on_row(0, {"text": "b"})
        on_row(0, {"text": "b"})

    with pytest.raises(RuntimeError, match="row 1 reported twice"):
        stream_in_chunks(d, ["a", "b", "c"], 1, repeats, "test")


def test_per_group_runs_a_batch_function_once_per_group_in_order():
    seen, got = [], {}

    def batch(ps, ids):
        seen.append(list(ids))
        return [{"row": i} for i in ids]

    per_group(batch)(["a", "b", "c", "d"], [10, 11, 12, 13], [1, 0, 1, 0], got.__setitem__)
    assert seen == [[11, 13], [10, 12]] and got == {k: {"row": 10 + k} for k in range(4)}
