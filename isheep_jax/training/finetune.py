"""`isheep train`: supervised fine-tuning of a checkpoint on a user's JSONL files.

The loop's own pieces, used as they are: one SeqIO task over the files
(`sft_data.register_sft_task`: pair, Alpaca or one-turn chat rows, response tokens only),
`sft_data.load_examples`, and `trainer.train` (full fine-tuning, or LoRA when
`TrainConfig.lora_rank > 0`; resumable from WORK/checkpoints). WORK keeps the trainer's
layout (`trainer` module docstring) plus WORK/data.json, what the data was.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Sequence

from jax.sharding import Mesh

from isheep_jax.core import io_utils
from isheep_jax.model import checkpoint
from isheep_jax.model.tokenizer import PromptStyle
from isheep_jax.parallel import distributed
from isheep_jax.training import sft_data
from isheep_jax.training.optim import OptimizerConfig
from isheep_jax.training.trainer import TrainConfig, TrainingError, TrainResult, train

log = logging.getLogger(__name__)

# What the trainer (and this module) write into WORK; anything else there is the user's.
WORK_ENTRIES = frozenset({"checkpoints", "metrics.jsonl", "tensorboard", "model", "adapter", "data.json"})


def check_work_dir(work_dir: str | os.PathLike) -> None:
    """Refuses a WORK that holds files the trainer did not write (they would be mixed in).

    Args:
      work_dir: WORK; absent or empty is fine, and so is an earlier run's WORK (resumed).

    Raises:
      TrainingError: WORK is a file, or holds entries outside `WORK_ENTRIES`.
    """
    work = io_utils.absolute(work_dir)
    problem = None
    if not distributed.is_writer() or not io_utils.exists(work):
        pass
    elif not work.is_dir():
        problem = f"{work}: exists and is not a directory"
    elif foreign := sorted(p.name for p in work.iterdir() if p.name not in WORK_ENTRIES):
        problem = (
            f"{work}: holds {', '.join(foreign[:5])}{' ...' if len(foreign) > 5 else ''}, which "
            "`isheep train` did not write; pick a new or empty folder (nothing was changed)"
        )
    if not distributed.agree(problem is None):
        raise TrainingError(problem or f"{work}: refused by process 0 (it sees files there)")


def finetune(
    init_model_dir: str | os.PathLike,
    data_files: Sequence[str | os.PathLike],
    work_dir: str | os.PathLike,
    prompt_style: PromptStyle = "chat",
    tc: TrainConfig = TrainConfig(),  # noqa: B008 (frozen: one shared default is safe)
    oc: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    mesh: Mesh | None = None,
    progress: bool = True,
) -> TrainResult:
    """Fine-tunes `init_model_dir` on the pairs in `data_files` into WORK (resumable).

    Args:
      init_model_dir: the checkpoint to start from.
      data_files: JSONL files of pairs (`sft_data.read_pairs`: instruction / input / output
        or response, or `messages` of one user and one assistant turn).
      work_dir: WORK; run the same call again to resume a killed run.
      prompt_style: how the user turn is rendered for training ('chat' for chat models;
        sample the result with the same style).
      tc: what and how long to train (full, or LoRA with `lora_rank > 0`).
      oc: the optimizer settings.
      mesh: the device mesh; None builds the default one.
      progress: show the trainer's progress bar.

    Returns:
      The trainer's `TrainResult`; the model is WORK/model.

    Raises:
      TrainingError: WORK holds files that are not the trainer's, or its checkpoint was
        written for other data or settings.
      DataError: a data file is missing or malformed (file and line named), or no pair fits
        the token budgets.
    """
    check_work_dir(work_dir)
    work = io_utils.absolute(work_dir)
    files = [os.fspath(f) for f in data_files]
    if not files:
        raise io_utils.DataError("no data file given")
    # The task's name only has to be unique in this process; the trainer's fingerprint is
    # what ties WORK to its data.
    name = "isheep_train_" + hashlib.sha256("\0".join([os.fspath(work), *files]).encode()).hexdigest()[:12]
    sft_data.register_sft_task(name, files, checkpoint.tokenizer_dir(init_model_dir), prompt_style)
    data = sft_data.load_examples(name, tc.max_prompt_len, tc.max_response_len, tc.pack)
    if data.num_too_long:
        log.warning(
            "%d of %d pairs longer than the budget (TrainConfig.max_prompt_len = %d, "
            "max_response_len = %d) are left out",
            data.num_too_long,
            data.num_examples,
            tc.max_prompt_len,
            tc.max_response_len,
        )
    result = train(init_model_dir, data, work, tc, oc, mesh, progress=progress)
    # Written once training is done: a resumed call with other data fails in `train` (its
    # fingerprint) before it could overwrite the description of what WORK was trained on.
    if distributed.is_writer():
        io_utils.write_json(
            work / "data.json",
            {
                "init_model": os.fspath(init_model_dir),
                "data_files": files,
                "prompt_style": prompt_style,
                "pairs": data.num_examples,
                "pairs_too_long": data.num_too_long,
                "rows": data.num_rows,
                "target_tokens": data.num_target_tokens,
            },
        )
    return result
