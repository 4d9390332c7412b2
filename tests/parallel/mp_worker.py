"""One process of tests/test_multiprocess.py: joins a JAX multi-process run (or runs alone),
samples, trains a few steps with checkpoints, reloads the exported model, runs one small
loop iteration, and (process 0) writes what it saw as JSON.
Usage: mp_worker.py PROCESS_ID NUM_PROCESSES PORT MODEL PAIRS WORK OUT"""

import json
import os
import sys
import time

pid, nproc, port, model, pairs, work, out = sys.argv[1:8]
os.environ["ISHEEP_COORDINATOR"] = f"127.0.0.1:{port}" if int(nproc) > 1 else ""
os.environ["ISHEEP_NUM_PROCESSES"], os.environ["ISHEEP_PROCESS_ID"] = nproc, pid

import jax  # noqa: E402
import numpy as np  # noqa: E402

from isheep_jax.core import io_utils
from isheep_jax.loop.run_dir import RunDir  # noqa: E402
from isheep_jax.loop.runner import Loop, LoopConfig  # noqa: E402
from isheep_jax.model import checkpoint  # noqa: E402
from isheep_jax.model.tokenizer import Tokenizer  # noqa: E402
from isheep_jax.parallel import distributed, sharding
from isheep_jax.sampling.generator import Generator, SamplingSettings  # noqa: E402
from isheep_jax.training import sft_data
from isheep_jax.training.optim import OptimizerConfig  # noqa: E402
from isheep_jax.training.trainer import TrainConfig, train  # noqa: E402

distributed.initialize_from_env()
assert jax.process_count() == int(nproc) and jax.device_count() == 4, (
    jax.process_count(),
    jax.device_count(),
)

# A resume check must give every process the same answer even when process 0 writes the file
# at once and another process looks late (the run then takes one path everywhere).
os.makedirs(work, exist_ok=True)
marker = os.path.join(work, "race_marker")
if not distributed.is_writer():
    time.sleep(2.0)
seen = io_utils.exists(marker)
if distributed.is_writer():
    open(marker, "w").close()
assert not seen, "a process saw a file written after process 0 had checked for it"
mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2)

cfg, params = checkpoint.load_model(model, mesh)
gen = Generator(cfg, params, Tokenizer(checkpoint.tokenizer_dir(model)), mesh)
prompts = ["hello world", "write a short poem about the sea", "sort these numbers: 3, 1, 2"]
greedy = gen.generate(
    prompts, SamplingSettings(max_new_tokens=8, temperature=0.0, batch_size=4), progress=False
)
sampled = gen.generate(
    prompts, SamplingSettings(max_new_tokens=8, temperature=1.0, seed=3, batch_size=4), progress=False
)
del gen, params

sft_data.register_sft_task("mp_task", [pairs], checkpoint.tokenizer_dir(model), "chat")
data = sft_data.load_examples("mp_task", 48, 32)
res = train(
    model,
    data,
    work,
    TrainConfig(batch_size=4, num_epochs=3.0, save_every_steps=1, seed=0),
    OptimizerConfig(learning_rate=1e-3, warmup_steps=1, schedule="constant"),
    mesh,
    progress=False,
)
_, trained = checkpoint.load_model(res.model_dir, mesh)
host = distributed.to_host(trained)

small = SamplingSettings(max_new_tokens=24, batch_size=4)
lc = LoopConfig(
    base_model=model,
    iterations=1,
    synthesis_prompts=4,
    chunk_size=2,
    score_threshold=0,
    synth_sampling=small,
    respond_sampling=small,
    rate_sampling=small,
)
run_dir = os.path.join(work, "run")
RunDir(run_dir).open("multi-process test\n")
summary = Loop(lc, run_dir, mesh=mesh).run_all()[0]
if distributed.is_writer():
    with open(out, "w") as f:
        json.dump(
            {
                "greedy": [o.token_ids for o in greedy],
                "sampled": [o.token_ids for o in sampled],
                "final_loss": res.final_loss,
                "candidates_parsed": summary["candidates_parsed"],
                "params": {
                    jax.tree_util.keystr(k): np.asarray(v, np.float64).ravel()[:64].tolist()
                    for k, v in jax.tree_util.tree_leaves_with_path(host)
                },
            },
            f,
        )
