"""Two JAX processes on this machine (coordinator on 127.0.0.1, 2 CPU devices each) give the
same tokens, training losses, trained params and loop artifacts as one process with 4
devices, and write each artifact once."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import TINY_PAIRS, assert_same_params, free_port, kill_when, make_hf_model

from isheep_jax.core import io_utils
from isheep_jax.model import checkpoint
from isheep_jax.model.convert import hf

WORKER = os.path.join(os.path.dirname(__file__), "mp_worker.py")
PAIRS = TINY_PAIRS


def _launch(nproc: int, model: str, pairs: str, root, timeout: int = 600) -> dict:
    port, out = free_port(), str(root / "out.json")
    env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={4 // nproc}"}
    procs = [
        subprocess.Popen(
            [sys.executable, WORKER, str(i), str(nproc), str(port), model, pairs, str(root / "work"), out],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(nproc)
    ]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    failed = [i for i, p in enumerate(procs) if p.returncode != 0]
    # Print every worker's tail: a barrier mismatch names the other process's barrier.
    assert not failed, "\n".join(
        f"--- worker {i} (rc {p.returncode}) ---\n{log[-3000:]}"
        for i, (p, log) in enumerate(zip(procs, logs))
    )
    with open(out) as f:
        return json.load(f)


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "llama", max_position_embeddings=4096)
    model = str(tmp_path / "model")
    hf.import_hf(hf_dir, model)
    pairs = str(tmp_path / "pairs.jsonl")
    io_utils.write_jsonl(pairs, PAIRS)
    one = _launch(1, model, pairs, tmp_path / "one")
    two = _launch(2, model, pairs, tmp_path / "two")
    assert two["greedy"] == one["greedy"] and two["sampled"] == one["sampled"]
    assert all(len(t) > 0 for t in one["greedy"])
    np.testing.assert_allclose(two["final_loss"], one["final_loss"], rtol=1e-5)
    assert two["params"].keys() == one["params"].keys()
    for k in one["params"]:
        np.testing.assert_allclose(two["params"][k], one["params"][k], rtol=1e-5, atol=1e-6, err_msg=k)
    # Both processes trained into one work directory: one metrics file, one row per step.
    rows = io_utils.read_jsonl(tmp_path / "two" / "work" / "metrics.jsonl")  # 4 pairs x 3 epochs / batch 4
    assert [r["step"] for r in rows] == [1, 2, 3]
    # One loop iteration: the same artifacts, written by process 0 only (no stray temporaries).
    assert two["candidates_parsed"] == one["candidates_parsed"]
    for name in ("instructions", "dropped", "summary"):
        ext = "json" if name == "summary" else "jsonl"
        a, b = (
            root / "work" / "run" / "iter_0" / f"{name}.{ext}"
            for root in (tmp_path / "one", tmp_path / "two")
        )
        if name == "summary":
            drop = ("stage_seconds",)
            assert {k: v for k, v in json.loads(a.read_text()).items() if k not in drop} == {
                k: v for k, v in json.loads(b.read_text()).items() if k not in drop
            }
        else:
            assert a.read_text() == b.read_text(), name
    assert not list((tmp_path / "two" / "work" / "run").rglob(".*.tmp-*"))


# ------------------------------------------------------------------ kill and resume, 2 processes
RESUME_WORKER = os.path.join(os.path.dirname(__file__), "mp_resume_worker.py")


@pytest.fixture(scope="module")
def mp_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("mp_resume")
    hf_dir = make_hf_model(str(root / "hf"), "llama", max_position_embeddings=4096)
    model = str(root / "model")
    hf.import_hf(hf_dir, model)
    pairs = str(root / "pairs.jsonl")
    io_utils.write_jsonl(pairs, PAIRS)
    return model, pairs


def _start(mode: str, model: str, pairs: str, work) -> list[subprocess.Popen]:
    """Both processes of a 2-process run (2 CPU devices each), each in a session of its own."""
    port = free_port()
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    os.makedirs(work, exist_ok=True)
    procs = []
    for i in range(2):
        log = open(os.path.join(work, f".worker{i}.log"), "a")
        cmd = [sys.executable, RESUME_WORKER, mode, str(i), "2", str(port), model, pairs, str(work)]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        )
    return procs


def _finish(procs, work, timeout: int = 900) -> None:
    for p in procs:
        p.wait(timeout=timeout)
    logs = [open(os.path.join(work, f".worker{i}.log")).read()[-3000:] for i in range(2)]
    assert all(p.returncode == 0 for p in procs), "\n".join(
        f"--- worker {i} (rc {p.returncode}) ---\n{log}" for i, (p, log) in enumerate(zip(procs, logs))
    )


def _last_checkpoint(work) -> int:
    d = work / "checkpoints"
    return max((int(p.name) for p in d.iterdir() if p.name.isdigit()), default=0) if d.exists() else 0


@pytest.mark.slow
def test_two_process_training_killed_then_resumed_equals_uninterrupted(mp_model, tmp_path):
    model, pairs = mp_model
    ref, work = tmp_path / "ref", tmp_path / "killed"
    _finish(_start("train", model, pairs, ref), ref)
    procs = _start("train", model, pairs, work)
    assert kill_when(procs, lambda: _last_checkpoint(work) >= 3), "training ended before the kill"
    assert not (work / "model").exists()
    _finish(_start("train", model, pairs, work), work)  # resumes at the last checkpoint
    assert_same_params(str(ref / "model"), str(work / "model"))
    rows, ref_rows = (io_utils.read_jsonl(d / "metrics.jsonl") for d in (work, ref))
    assert [r["step"] for r in rows] == [r["step"] for r in ref_rows] == list(range(1, len(ref_rows) + 1))
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows]


@pytest.mark.slow
def test_two_process_loop_killed_while_sampling_then_resumed_equals_uninterrupted(mp_model, tmp_path):
    model, pairs = mp_model
    ref, run = tmp_path / "ref", tmp_path / "run"
    _finish(_start("loop", model, pairs, ref), ref)
    synth = run / "iter_0" / "chunks" / "synthesize"
    procs = _start("loop", model, pairs, run)
    assert kill_when(procs, lambda: synth.exists() and len(list(synth.glob("*.jsonl"))) >= 2), "ended first"
    _finish(_start("loop", model, pairs, run), run)
    files = sorted(
        p.relative_to(ref)
        for p in (ref / "iter_0").rglob("*")
        if p.is_file()
        and p.suffix in (".jsonl", ".json")
        and "train" not in p.relative_to(ref).parts
        and p.name != "stage_seconds.json"  # wall times
    )
    assert len(files) > 8, files  # the stage artifacts and every chunk
    for rel in files:
        a, b = (ref / rel).read_text(), (run / rel).read_text()
        if rel.name == "summary.json":
            a, b = ({k: v for k, v in json.loads(t).items() if k != "stage_seconds"} for t in (a, b))
        assert a == b, rel
    if checkpoint.is_complete(ref / "iter_0" / "train" / "model"):
        assert_same_params(str(ref / "iter_0" / "train" / "model"), str(run / "iter_0" / "train" / "model"))
