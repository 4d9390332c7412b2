"""Atomic writes: a rewrite replaces the file whole; JSONL errors name file and line."""

import pytest

from isheep_jax import io_utils


def test_atomic_write_overwrites_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "sub" / "rows.jsonl"
    io_utils.write_jsonl(path, [{"a": 1}])
    io_utils.write_jsonl(path, [{"a": 2}, {"a": 3}])
    assert io_utils.read_jsonl(path) == [{"a": 2}, {"a": 3}]
    assert [p.name for p in path.parent.iterdir()] == ["rows.jsonl"]


def test_bad_jsonl_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n{oops\n')
    with pytest.raises(io_utils.DataError, match=r"x.jsonl:2: invalid JSON"):
        io_utils.read_jsonl(path)


def test_read_jsonl_missing_file(tmp_path):
    assert io_utils.read_jsonl(tmp_path / "none.jsonl", missing_ok=True) == []
    with pytest.raises(FileNotFoundError):
        io_utils.read_jsonl(tmp_path / "none.jsonl")
