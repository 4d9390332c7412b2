"""SFT driver: data arrays in, trained model out, resumable at any checkpoint.

Layout of a training directory WORK:
    WORK/checkpoints/<step>/   orbax CheckpointManager: TrainState + data/config metadata;
                               deleted once WORK/model is complete, unless
                               TrainConfig.keep_trainer_state (`delete_trainer_state`)
    WORK/metrics.jsonl         one row per step (loss, grad norm, lr, tokens/s, ...)
    WORK/tensorboard/          the same scalars as TensorBoard event files
    WORK/model/                params-only export (checkpoint.save_model) once training ends;
                               with LoRA (TrainConfig.lora_rank > 0) the MERGED model, so
                               whatever samples from it pays nothing for the adapters
    WORK/adapter/              LoRA runs only: the adapters alone (`model.convert.peft`;
                               `isheep export-peft` turns it into a PEFT adapter folder)

The batch of step s is a pure function of (seed, s) (`batch_rows`), so the data position
of a resumed run is just its step and resuming reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh
from tqdm.auto import tqdm

from isheep_jax.core import hooks, io_utils
from isheep_jax.model import checkpoint
from isheep_jax.model.config import ModelConfig
from isheep_jax.model.convert import peft
from isheep_jax.model.params import abstract_params, param_shardings
from isheep_jax.parallel import distributed, sharding
from isheep_jax.training import lora, step_packing
from isheep_jax.training.metrics import MetricsWriter, read_metrics
from isheep_jax.training.optim import OptimizerConfig, learning_rate_schedule, make_optimizer
from isheep_jax.training.sft_data import MODEL_KEYS, SFTArrays
from isheep_jax.training.train_step import (
    TrainState,
    batch_sharding,
    compile_train_step,
    owned_state,
    state_shardings,
)

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot go on (non-finite loss, a checkpoint of another run, bad settings)."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """What and how long to train.

    batch_size counts sequences per optimizer step (global); it is split into
    `micro_batches` accumulated micro-batches.

    Attributes:
      batch_size: sequences (rows) per optimizer step, over all devices and processes.
      micro_batches: accumulated micro-batches per step; must divide batch_size.
      max_prompt_len: token budget of a prompt; longer pairs are left out
        (`sft_data.load_examples`).
      max_response_len: token budget of a response including EOS; likewise.
      pack: pack several pairs per row.
      repack_steps: each step's pairs move into the fewest rows that hold them
        (`step_packing`: a power of two times the micro-batches' and batch shards' need,
        at most batch_size), so a step computes no empty rows. The same pairs, loss and
        gradients to float round-off; each row count compiles once. False: every step
        computes batch_size rows.
      num_epochs: passes over the data (fractions allowed); <= 0 leaves the length to
        `max_steps`.
      max_steps: > 0 caps the number of steps.
      compute_dtype: '' keeps the model config's dtype.
      remat_policy: '' keeps the model config's; 'none' | 'dots' | 'full' (see `isheep plan`).
      scan_layers: None keeps the model config's (see ModelConfig.scan_layers).
      attention_impl: '' keeps the model config's; 'xla' | 'cudnn' (see
        ModelConfig.attention_impl).
      seed: seeds the data order (`batch_rows`).
      save_every_steps: checkpoint interval in steps; 0: only at the end.
      keep_checkpoints: how many checkpoints the checkpoint manager keeps.
      loss_chunk_tokens: the vocabulary cross-entropy builds the f32 logits of about this
        many tokens of a micro-batch at a time (`chunked_loss`), never the whole
        [rows, length, vocab]; the backward pass recomputes each chunk's. 0: unchunked.
        Loss and gradients are the same to float round-off.
      keep_trainer_state: keep WORK/checkpoints (params and optimizer state, e.g. to train
        on from them) after the params-only export WORK/model. By default it is deleted
        once the export is complete (`delete_trainer_state`): each checkpoint is 3x the f32
        model (params and two Adam moments) and a finished run resumes from the export.
      lora_rank: 0: full fine-tuning. r > 0: LoRA of rank r (`training/lora.py`): only the
        adapters of `lora_targets` are trained and hold optimizer state; the base params
        are frozen. WORK/model is the merged model, WORK/adapter the adapters.
      lora_alpha: the adapters' delta is scaled by lora_alpha / lora_rank (PEFT's
        `lora_alpha`).
      lora_dropout: must be 0 for now (see `__post_init__`); recorded in the adapter.
      lora_targets: PEFT-style names of the adapted projections, among q_proj, k_proj,
        v_proj, o_proj, gate_proj, up_proj, down_proj (the default: all seven).

    Raises:
      ValueError: micro_batches does not divide a positive batch_size, neither num_epochs
        nor max_steps is positive, loss_chunk_tokens is negative, or a LoRA setting is
        out of range (a negative rank, a non-positive alpha, a dropout other than 0,
        unknown or repeated targets).
    """

    batch_size: int = 8
    micro_batches: int = 1
    max_prompt_len: int = 256
    max_response_len: int = 256
    pack: bool = False
    repack_steps: bool = True
    num_epochs: float = 2.0
    max_steps: int = 0  # > 0 caps the number of steps
    compute_dtype: str = ""  # '' keeps the model config's dtype
    remat_policy: str = ""  # '' keeps the model config's; 'none' | 'dots' | 'full' (see `isheep plan`)
    scan_layers: bool | None = None  # None keeps the model config's (see ModelConfig.scan_layers)
    attention_impl: str = ""  # '' keeps the model config's; 'xla' | 'cudnn' (see ModelConfig.attention_impl)
    seed: int = 0
    save_every_steps: int = 0  # 0: only at the end
    keep_checkpoints: int = 2
    loss_chunk_tokens: int = 1024  # 0: the full [rows, length, vocab] logits at once
    keep_trainer_state: bool = False  # False: WORK/checkpoints is deleted after the export
    lora_rank: int = 0  # 0: full fine-tuning; r > 0: LoRA adapters of rank r
    lora_alpha: float = 16.0
    lora_dropout: float = 0.0
    lora_targets: tuple[str, ...] = peft.ALL_TARGETS

    def __post_init__(self):
        """Checks the batch split, that the run has a length, and the loss chunk."""
        if self.batch_size < 1 or self.micro_batches < 1 or self.batch_size % self.micro_batches:
            raise ValueError(
                f"batch_size ({self.batch_size}) must be a positive multiple of "
                f"micro_batches ({self.micro_batches})"
            )
        if self.num_epochs <= 0 and self.max_steps <= 0:
            raise ValueError("set num_epochs > 0 or max_steps > 0")
        if self.loss_chunk_tokens < 0:
            raise ValueError(f"loss_chunk_tokens must be >= 0 (0: unchunked), got {self.loss_chunk_tokens}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ValueError(
                f"lora_rank must be an integer >= 0 (0: full fine-tuning), got {self.lora_rank!r}"
            )
        # gin passes lists; a tuple keeps the config hashable and its fingerprint stable.
        object.__setattr__(self, "lora_targets", peft.check_targets(self.lora_targets))
        if not self.lora_alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.lora_alpha!r}")
        if self.lora_dropout != 0:
            # The step trains the merged kernels W + (alpha / r) A @ B (one matmul per
            # projection, as in full fine-tuning), where the adapter has no input of its own
            # to drop out; dropout needs the adapter path computed apart from W.
            raise ValueError(
                f"lora_dropout = {self.lora_dropout}: only 0 is supported (the step trains the merged "
                "weights, where dropout on the adapter input has no place)"
            )

    def lora_spec(self) -> lora.LoraSpec | None:
        """The LoRA settings of a LoRA run (None: full fine-tuning, lora_rank = 0)."""
        if self.lora_rank == 0:
            return None
        return lora.LoraSpec(self.lora_rank, self.lora_alpha, self.lora_targets)

    def model_config(self, base: ModelConfig) -> ModelConfig:
        """The checkpoint's model config with this run's compute dtype / remat / scan / attention
        overrides.

        Args:
          base: the model config stored with the checkpoint.

        Returns:
          `base` with every override that is set ('' and None keep `base`'s value).
        """
        changes = {
            "dtype": self.compute_dtype,
            "remat_policy": self.remat_policy,
            "scan_layers": self.scan_layers,
            "attention_impl": self.attention_impl,
        }
        return base.replace(**{k: v for k, v in changes.items() if v not in ("", None)})


@dataclasses.dataclass(frozen=True)
class TrainResult:
    """What `train` produced.

    Attributes:
      model_dir: the params-only export, WORK/model.
      steps: optimizer steps of the run.
      final_loss: loss of the last step run (for a finished work directory: the last one
        recorded); None when there is none.
      metrics_path: WORK/metrics.jsonl.
    """

    model_dir: str
    steps: int
    final_loss: float | None
    metrics_path: str


def total_steps(num_rows: int, tc: TrainConfig) -> int:
    """Optimizer steps of a run over `num_rows` rows.

    Args:
      num_rows: rows of training data.
      tc: the training settings.

    Returns:
      ceil(num_epochs * num_rows / batch_size), capped at max_steps when that is > 0;
      max_steps itself when num_epochs <= 0.
    """
    steps = math.ceil(tc.num_epochs * num_rows / tc.batch_size) if tc.num_epochs > 0 else tc.max_steps
    return min(steps, tc.max_steps) if tc.max_steps > 0 else steps


def batch_rows(num_rows: int, batch_size: int, step: int, seed: int, num_epochs: float) -> np.ndarray:
    """Row indices of step `step`'s batch; -1 marks a slot past the last epoch (zero weight).

    Sample k of the stream is row perm_e[k mod N] of epoch e = k // N, each epoch with its
    own permutation seeded by (seed, e).

    Args:
      num_rows: N, the rows of training data.
      batch_size: rows per step.
      step: the step (0-based).
      seed: the data-order seed.
      num_epochs: epochs in the stream (fractions allowed); slots at sample k >=
        ceil(num_epochs * N) are -1. <= 0 marks no slot.

    Returns:
      Integer array [batch_size] of row indices or -1.
    """
    k = np.arange(step * batch_size, (step + 1) * batch_size)
    epoch, within = k // num_rows, k % num_rows
    out = np.empty_like(k)
    for e in np.unique(epoch):
        perm = np.random.default_rng([seed, int(e)]).permutation(num_rows)
        out[epoch == e] = perm[within[epoch == e]]
    if num_epochs > 0:
        out[k >= math.ceil(num_epochs * num_rows)] = -1
    return out


def make_batch(
    data: SFTArrays, rows: np.ndarray, micro_batches: int, options: Sequence[int] = ()
) -> dict[str, np.ndarray]:
    """Arrays [micro, rows / micro, length]; -1 rows become all-padding (no loss, no attention).

    Args:
      data: the training arrays.
      rows: row indices from `batch_rows`, [batch_size].
      micro_batches: how many micro-batches the rows split into.
      options: row counts the step's pairs may be re-packed into (`step_packing.repack`;
        each divisible by micro_batches); empty: batch_size rows as they are.

    Returns:
      `MODEL_KEYS` -> int32 [micro_batches, R / micro_batches, length] arrays, R =
      batch_size or the re-packed row count.
    """
    safe = np.maximum(rows, 0)
    batch = {k: data.arrays[k][safe] for k in MODEL_KEYS}
    for k in MODEL_KEYS:
        batch[k][rows < 0] = 0
    if options:
        batch = step_packing.repack(batch, options)
    return {k: v.reshape(micro_batches, -1, v.shape[-1]) for k, v in batch.items()}


_NOT_FINGERPRINTED = (
    "scan_layers",
    "attention_impl",
    "loss_chunk_tokens",
    "keep_trainer_state",
    "repack_steps",
)
_LORA_FIELDS = ("lora_rank", "lora_alpha", "lora_dropout", "lora_targets")


def _fingerprint(data: SFTArrays, tc: TrainConfig, oc: OptimizerConfig, cfg: ModelConfig) -> str:
    h = hashlib.sha256()
    for k in MODEL_KEYS:
        h.update(np.ascontiguousarray(data.arrays[k]).tobytes())
    for c in (tc, oc, cfg):
        # These change how the step is compiled or what is kept after it, not its math; leaving
        # them out also keeps the fingerprints of runs started before the fields existed.
        fields = {k: v for k, v in dataclasses.asdict(c).items() if k not in _NOT_FINGERPRINTED}
        if isinstance(c, TrainConfig) and c.lora_rank == 0:
            # Full fine-tuning: the LoRA fields do not enter its math, and leaving them out
            # keeps the fingerprints of full runs started before they existed.
            fields = {k: v for k, v in fields.items() if k not in _LORA_FIELDS}
        h.update(json.dumps(fields, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _manager(work_dir: Any, keep: int) -> ocp.CheckpointManager:
    # Synchronous saves: a step's checkpoint is complete (or absent) when save() returns.
    # Orbax writes to a temporary directory and renames it at the end, so a killed save
    # never leaves a step directory that restores as valid.
    opts = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(work_dir / "checkpoints", options=opts)


# A step folder of a save that orbax had not finalized when the process died.
_ORBAX_TMP_STEP = re.compile(r"^\d+\.orbax-checkpoint-tmp")


def _foreign_state_entries(state_dir: Any) -> list[str]:
    """Entries of WORK/checkpoints that are not orbax step folders of ours.

    Ours: a folder named by its step holding orbax's `_CHECKPOINT_METADATA` or our `state`
    item (a save killed on a bucket, which orbax writes in place), or a temporary step folder
    of a killed local save.
    """
    foreign = []
    for p in sorted(state_dir.iterdir(), key=lambda q: q.name):
        if _ORBAX_TMP_STEP.match(p.name) and p.is_dir():
            continue
        if (
            p.name.isdigit()
            and p.is_dir()
            and any((p / n).exists() for n in ("_CHECKPOINT_METADATA", "state"))
        ):
            continue
        foreign.append(p.name)
    return foreign


def delete_trainer_state(work_dir: str | os.PathLike) -> bool:
    """Deletes WORK/checkpoints (params + optimizer state) once the WORK/model export is complete.

    Only WORK/checkpoints itself is ever deleted, and only when every entry in it is an orbax
    step folder (`_foreign_state_entries`): anything else there is refused, with nothing
    deleted. Works on local paths and URLs (gs://); every process must call it.

    Args:
      work_dir: WORK, the training directory (see the module docstring).

    Returns:
      Whether there was a WORK/checkpoints to delete.

    Raises:
      TrainingError: WORK/model is not a complete export (the state is still the only copy of
        the training), or WORK/checkpoints holds something that is not a checkpoint of ours.
    """
    work = io_utils.absolute(work_dir)
    state_dir = work / "checkpoints"
    if not io_utils.exists(state_dir):
        return False
    if not checkpoint.is_complete(work / "model"):
        raise TrainingError(
            f"{state_dir}: not deleted: {work / 'model'} is not a complete export yet, and the "
            "trainer state is what resumes the training"
        )
    foreign = _foreign_state_entries(state_dir) if distributed.is_writer() else []
    problem = (
        f"{state_dir}: not deleted: it holds {', '.join(foreign[:5])}"
        f"{f' and {len(foreign) - 5} more' if len(foreign) > 5 else ''}, which is not an orbax "
        "step folder of this trainer; remove it by hand, or set TrainConfig.keep_trainer_state = True"
        if foreign
        else None
    )
    if not distributed.agree(problem is None):
        raise TrainingError(problem or f"{state_dir}: not deleted: process 0 found files that are not ours")
    io_utils.remove_tree(state_dir)
    log.info("deleted the trainer state %s (TrainConfig.keep_trainer_state = False)", state_dir)
    return True


def train(
    init_model_dir: str | os.PathLike,
    data: SFTArrays,
    work_dir: str | os.PathLike,
    tc: TrainConfig = TrainConfig(),  # noqa: B008 (frozen: one shared default is safe)
    oc: OptimizerConfig = OptimizerConfig(),  # noqa: B008
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
    progress: bool = True,
) -> TrainResult:
    """Fine-tunes the model in `init_model_dir` on `data`; resumes from WORK/checkpoints if present.

    A work directory whose WORK/model export is complete is not trained again: its result
    is read back from WORK/metrics.jsonl. Unless `tc.keep_trainer_state`, WORK/checkpoints
    is deleted once the export is complete (also here, when a killed run left it behind).

    Args:
      init_model_dir: the checkpoint to start from (its params, config and tokenizer).
      data: the training arrays (`sft_data.load_examples`).
      work_dir: WORK, the training directory (see the module docstring).
      tc: what and how long to train.
      oc: the optimizer settings.
      mesh: the device mesh; None builds the default one (`sharding.make_mesh`).
      rules: logical-axis rules for parameters, batches and activations.
      progress: show a progress bar (on process 0).

    Returns:
      The `TrainResult`; the trained parameters are saved to WORK/model in the checkpoint's
      parameter dtypes, with its model config. With LoRA (`tc.lora_rank > 0`) WORK/model
      holds the base with the adapters merged in, and WORK/adapter the adapters.

    Raises:
      TrainingError: `data` has no rows, the latest checkpoint was written for other data or
        settings, a step's loss is not finite, or WORK/checkpoints holds files that are not
        ours (then nothing is deleted; `delete_trainer_state`).
    """
    work = io_utils.absolute(work_dir)
    out_dir = work / "model"
    metrics_path = work / "metrics.jsonl"
    if checkpoint.is_complete(out_dir):
        if not tc.keep_trainer_state:  # a run killed between the export and the deletion
            delete_trainer_state(work)
        rows = [r for r in read_metrics(metrics_path) if "loss" in r]
        return TrainResult(
            str(out_dir),
            rows[-1]["step"] if rows else 0,
            rows[-1]["loss"] if rows else None,
            str(metrics_path),
        )
    if data.num_rows == 0:
        raise TrainingError("no training rows")
    mesh = mesh or sharding.make_mesh()
    base_cfg = checkpoint.load_config(init_model_dir)
    cfg = tc.model_config(base_cfg)
    spec = tc.lora_spec()  # None: full fine-tuning
    steps = total_steps(data.num_rows, tc)
    optimizer = make_optimizer(oc, steps)
    schedule = learning_rate_schedule(oc, steps)
    # The trained tree (TrainState.params) is the params, or with LoRA the adapters only.
    if spec is None:
        abstract, shard = state_shardings(cfg, optimizer, mesh, rules)
    else:
        abstract, shard = lora.state_shardings(cfg, spec, optimizer, mesh, rules)
    fingerprint = _fingerprint(data, tc, oc, cfg)
    mngr = _manager(work, tc.keep_checkpoints)
    writer = MetricsWriter(metrics_path, work / "tensorboard")

    start = mngr.latest_step()
    if start is not None:
        target = jax.tree.map(
            lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shard
        )
        # The metadata first: a checkpoint of other settings (e.g. full fine-tuning vs LoRA)
        # holds another tree, which the state restore would fail on with orbax's own message.
        saved = mngr.restore(start, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        if saved.get("fingerprint") != fingerprint:
            raise TrainingError(
                f"{work / 'checkpoints'}: checkpoint of step {start} was written for other data or "
                f"settings (fingerprint {saved.get('fingerprint')} != {fingerprint}); "
                "use a new work directory or delete it"
            )
        restored = mngr.restore(
            start,
            args=ocp.args.Composite(state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()),
        )
        state = owned_state(TrainState(*restored["state"]), shard)  # donated in place from step 1 on
        del restored
        log.info("resuming training at step %d of %d", start, steps)
    else:
        start = 0
    # LoRA: the frozen base, an argument of every step (never donated; not in the checkpoints,
    # which hold the adapters and their optimizer state only).
    base = (
        checkpoint.load_model(init_model_dir, mesh, rules, dtype=cfg.dtype)[1] if spec is not None else None
    )
    if start == 0:
        if spec is None:
            trained = checkpoint.load_model(init_model_dir, mesh, rules, dtype=cfg.dtype)[1]
        else:
            trained = lora.init_adapters(cfg, spec, jax.random.key(tc.seed), mesh, rules)
        opt_state = jax.jit(optimizer.init, out_shardings=shard.opt_state)(trained)
        state = owned_state(
            TrainState(distributed.put_global(np.zeros((), np.int32), shard.step), trained, opt_state), shard
        )  # restored arrays may not be donatable (see owned_state)
        del trained, opt_state

    writer.truncate_after(start)  # rows of steps after the restored one (or all) will be redone
    batch_shape = (tc.micro_batches, tc.batch_size // tc.micro_batches, data.length)
    steps_by_shape: dict[tuple[int, ...], Any] = {}  # a step of each row count, compiled on first use

    def step_fn(st: TrainState, b: dict[str, np.ndarray]) -> tuple[TrainState, dict[str, Any]]:
        shape = b["decoder_input_tokens"].shape
        if shape not in steps_by_shape:
            if spec is None:
                fn = compile_train_step(cfg, optimizer, mesh, shape, rules, tc.loss_chunk_tokens)
            else:
                fn = lora.compile_train_step(cfg, spec, optimizer, mesh, shape, rules, tc.loss_chunk_tokens)
            steps_by_shape[shape] = (fn, batch_sharding(mesh, shape, rules))
        fn, b_shard = steps_by_shape[shape]
        on_mesh = {k: distributed.put_global(v, b_shard) for k, v in b.items()}
        return fn(st, on_mesh) if spec is None else fn(st, base, on_mesh)

    full_rows = batch_shape[1]
    data_parallel = full_rows // batch_sharding(mesh, batch_shape, rules).shard_shape(batch_shape)[1]
    options = (
        step_packing.row_options(tc.batch_size, tc.micro_batches, data_parallel) if tc.repack_steps else []
    )
    meta = {"fingerprint": fingerprint, "seed": tc.seed, "total_steps": steps, "num_rows": data.num_rows}

    def save(s: int, st: TrainState) -> None:
        mngr.save(
            s,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(st), meta=ocp.args.JsonSave({**meta, "step": s})
            ),
            force=True,
        )

    bar = tqdm(
        total=steps,
        initial=start,
        desc="train",
        unit="step",
        disable=not progress or not distributed.is_writer(),
        dynamic_ncols=True,
    )
    loss = None
    t_last = time.perf_counter()
    for s in range(start, steps):
        rows = batch_rows(data.num_rows, tc.batch_size, s, tc.seed, tc.num_epochs)
        batch = make_batch(data, rows, tc.micro_batches, options)
        hooks.before_train_step()
        state, m = step_fn(state, batch)
        loss = float(m["loss"])  # one scalar per step: the NaN guard and the log need it anyway
        now = time.perf_counter()
        if not math.isfinite(loss):
            last = mngr.latest_step()
            raise TrainingError(
                f"non-finite loss ({loss}) at step {s + 1}; nothing was saved for it. Last good "
                f"checkpoint: {'step ' + str(last) if last is not None else 'none'} in "
                f"{work / 'checkpoints'}. Lower the learning rate or check the data."
            )
        hooks.after_train_step()
        tokens = int((batch["decoder_segment_ids"] > 0).sum())
        writer.write(
            s + 1,
            {
                "loss": loss,
                "grad_norm": float(m["grad_norm"]),
                "learning_rate": float(schedule(s)),
                "target_tokens": float(m["target_tokens"]),
                "tokens": tokens,
                "tokens_per_s": tokens / max(now - t_last, 1e-9),
                "epoch": (s + 1) * tc.batch_size / data.num_rows,
            },
        )
        t_last = now
        bar.update(1)
        bar.set_postfix(loss=f"{loss:.4f}")
        if tc.save_every_steps and (s + 1) % tc.save_every_steps == 0 and s + 1 < steps:
            save(s + 1, state)
    bar.close()
    if tc.keep_trainer_state and mngr.latest_step() != steps:
        save(steps, state)
    # Without keep_trainer_state the final state is not saved only to be deleted after the
    # export (3x the f32 model written, then removed): a run killed during the export
    # redoes the steps after its last periodic checkpoint, with the same result.
    mngr.wait_until_finished()
    mngr.close()
    writer.close()
    extra = {"trained_from": os.fspath(init_model_dir), "steps": steps, "final_loss": loss}
    if spec is None:
        params = jax.tree.map(lambda p, a: p.astype(a.dtype), state.params, abstract.params)
    else:
        params = _save_lora(work, state.params, base, base_cfg, cfg, spec, tc, mesh, rules, extra)
        extra["lora"] = {"rank": spec.rank, "alpha": spec.alpha, "targets": list(spec.targets)}
        del base
    checkpoint.save_model(
        out_dir,
        params,
        base_cfg,
        tokenizer_dir=checkpoint.tokenizer_dir(init_model_dir),
        extra=extra,
    )
    if not tc.keep_trainer_state:  # the export is complete: the state only takes disk space now
        delete_trainer_state(work)
    return TrainResult(str(out_dir), steps, loss, str(metrics_path))


def _save_lora(
    work: Any,
    adapters: lora.Adapters,
    base: Any,
    base_cfg: ModelConfig,
    cfg: ModelConfig,
    spec: lora.LoraSpec,
    tc: TrainConfig,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]],
    extra: dict[str, Any],
) -> Any:
    """Writes WORK/adapter and returns the merged params (on their shards) for WORK/model.

    WORK/adapter is written first: WORK/model's completion is what marks the run as done, so
    a run killed between the two redoes both (a complete leftover adapter folder, from a
    kill after it, is replaced: the resumed run reproduces the same adapters).
    """
    adapter_dir = work / "adapter"
    if peft.is_complete(adapter_dir):
        io_utils.remove_tree(adapter_dir)
    peft.save_adapter(
        adapter_dir,
        lora.by_target(distributed.to_host(adapters), spec.targets),
        spec.rank,
        spec.alpha,
        tc.lora_dropout,
        extra["trained_from"],
        extra={"steps": extra["steps"], "final_loss": extra["final_loss"]},
    )
    base_abstract, _ = abstract_params(base_cfg)

    @functools.partial(jax.jit, out_shardings=param_shardings(cfg, mesh, rules))
    def merged(base, adapters):
        out = lora.merge(base, adapters, spec.scale)
        return jax.tree.map(lambda p, a: p.astype(a.dtype), out, base_abstract)

    return merged(base, adapters)
