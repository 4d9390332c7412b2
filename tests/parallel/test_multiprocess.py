"""Two JAX processes on this machine (coordinator on 127.0.0.1, 2 CPU devices each) give the
same tokens, training losses, trained params and loop artifacts as one process with 4
devices, and write each artifact once."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax.core import io_utils
from isheep_jax.model.convert import hf

WORKER = os.path.join(os.path.dirname(__file__), "mp_worker.py")
PAIRS = [
    {"instruction": "write a short poem about the sea", "input": "", "response": "the sea is blue and wide"},
    {"instruction": "sort these numbers", "input": "3, 1, 2", "response": "1, 2, 3"},
    {"instruction": "what is the capital of france?", "input": "", "response": "paris is the capital."},
    {"instruction": "classify the sentiment", "input": "i love this movie", "response": "positive"},
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(nproc: int, model: str, pairs: str, root, timeout: int = 600) -> dict:
    port, out = _free_port(), str(root / "out.json")
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
