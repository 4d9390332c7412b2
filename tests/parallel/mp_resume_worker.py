"""One process of the multi-process kill-and-resume tests (tests/parallel/test_multiprocess.py).

Usage: mp_resume_worker.py MODE PROCESS_ID NUM_PROCESSES PORT MODEL PAIRS WORK
MODE 'train': trains many small steps with a checkpoint after each one (resumes if WORK
holds checkpoints). MODE 'loop': one loop iteration with one prompt per sampling chunk.
"""

import os
import sys

mode, pid, nproc, port, model, pairs, work = sys.argv[1:8]
os.environ["ISHEEP_COORDINATOR"] = f"127.0.0.1:{port}" if int(nproc) > 1 else ""
os.environ["ISHEEP_NUM_PROCESSES"], os.environ["ISHEEP_PROCESS_ID"] = nproc, pid

from isheep_jax.loop.run_dir import RunDir  # noqa: E402
from isheep_jax.loop.runner import Loop, LoopConfig  # noqa: E402
from isheep_jax.model import checkpoint  # noqa: E402
from isheep_jax.parallel import distributed, sharding  # noqa: E402
from isheep_jax.sampling.generator import SamplingSettings  # noqa: E402
from isheep_jax.training import sft_data  # noqa: E402
from isheep_jax.training.optim import OptimizerConfig  # noqa: E402
from isheep_jax.training.trainer import TrainConfig, train  # noqa: E402

distributed.initialize_from_env()
mesh = sharding.make_mesh(data=1, fsdp=2, tensor=2)
if mode == "train":
    sft_data.register_sft_task("mp_resume", [pairs], checkpoint.tokenizer_dir(model), "chat")
    data = sft_data.load_examples("mp_resume", 48, 32)
    train(
        model,
        data,
        work,
        TrainConfig(batch_size=2, num_epochs=12.0, save_every_steps=1, keep_checkpoints=2, seed=0),
        OptimizerConfig(learning_rate=1e-3, warmup_steps=1, schedule="constant"),
        mesh,
        progress=False,
    )
else:
    small = SamplingSettings(max_new_tokens=24, batch_size=4)
    lc = LoopConfig(
        base_model=model,
        iterations=1,
        synthesis_prompts=4,
        chunk_size=1,
        score_threshold=0,
        synth_sampling=small,
        respond_sampling=small,
        rate_sampling=small,
    )
    RunDir(work).open("multi-process resume test\n")
    Loop(lc, work, mesh=mesh).run_all()
