"""Atomic writes: a rewrite replaces the file whole; JSONL errors name file and line."""

import pytest

from isheep_jax.core import io_utils


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


def test_file_helpers_never_start_a_jax_backend(tmp_path):
    """`isheep status` / `report` beside a running job must not take the host's accelerator:
    writes, reads and resume checks ask no backend outside a jax.distributed run."""
    import subprocess
    import sys

    code = (
        "from isheep_jax.core import io_utils; from jax._src import xla_bridge\n"
        f"p = {str(tmp_path / 'a.json')!r}\n"
        "io_utils.write_json(p, {'x': 1}); assert io_utils.exists(p) and io_utils.read_json(p) == {'x': 1}\n"
        "assert not xla_bridge._backends, xla_bridge._backends\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_torn_last_line_is_skipped_only_where_allowed(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')  # killed while appending step 3
    assert io_utils.read_jsonl(path, torn_tail_ok=True) == [{"step": 1}, {"step": 2}]
    with pytest.raises(io_utils.DataError, match=r"m.jsonl:3: invalid JSON.*a torn last line"):
        io_utils.read_jsonl(path)
    path.write_text('{"step": 1}\n{"ste\n{"step": 3}\n')  # a bad line inside is never skipped
    with pytest.raises(io_utils.DataError, match=r"m.jsonl:2: invalid JSON"):
        io_utils.read_jsonl(path, torn_tail_ok=True)


def test_metrics_resume_drops_redone_steps_and_a_torn_line(tmp_path):
    from isheep_jax.training.metrics import MetricsWriter, read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(f'{{"step": {s}, "loss": 1.0}}\n' for s in (1, 2, 3)) + '{"step": 4, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    w = MetricsWriter(path)
    w.truncate_after(2)  # resuming at the checkpoint of step 2
    w.write(3, {"loss": 0.5})
    assert read_metrics(path) == [
        {"step": 1, "loss": 1.0},
        {"step": 2, "loss": 1.0},
        {"step": 3, "loss": 0.5},
    ]


def test_a_full_disk_keeps_the_old_file_and_leaves_no_partial_one(tmp_path):
    """Writes beyond RLIMIT_FSIZE fail as on a full disk (EFBIG instead of ENOSPC)."""
    import subprocess
    import sys

    path = tmp_path / "rows.jsonl"
    io_utils.write_jsonl(path, [{"a": 1}])
    script = (
        "import resource, signal, sys\n"
        "from isheep_jax.core import io_utils\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "try:\n"
        "    io_utils.write_jsonl(sys.argv[1], [{'x': 'y' * 1000}] * 100)\n"
        "except OSError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script, str(path)], capture_output=True, text=True, timeout=120
    )
    assert f"cannot write {path}: File too large" in out.stdout, out.stdout + out.stderr
    assert io_utils.read_jsonl(path) == [{"a": 1}]
    assert [p.name for p in tmp_path.iterdir()] == ["rows.jsonl"]


def test_remove_tree_deletes_a_folder_and_ignores_a_missing_one(tmp_path):
    (tmp_path / "state" / "3" / "state").mkdir(parents=True)
    (tmp_path / "state" / "3" / "state" / "x").write_text("x")
    (tmp_path / "keep.txt").write_text("k")
    io_utils.remove_tree(tmp_path / "state")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    io_utils.remove_tree(tmp_path / "state")  # already gone: nothing to do
