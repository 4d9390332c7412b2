"""Optimizer for full-parameter SFT: AdamW with warmup + decay, global-norm clipping, and no
weight decay on norms and biases."""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import gin
import jax
import optax

from isheep_jax.core import choices

Schedule = Literal["cosine", "linear", "constant"]  # learning-rate decay after warmup


@gin.configurable
@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW hyper-parameters, learning-rate schedule and gradient clipping.

    Warmup is linear over `warmup_steps`, or over `warmup_ratio` of all steps when
    warmup_steps is 0 (see `learning_rate_schedule`).

    Attributes:
      learning_rate: peak learning rate, reached at the end of warmup.
      schedule: decay after warmup: 'cosine' | 'linear' (to min_lr_ratio * lr) | 'constant'.
      warmup_steps: warmup length in steps; 0 uses `warmup_ratio` instead.
      warmup_ratio: warmup length as a fraction of all steps, in [0, 1).
      min_lr_ratio: the learning rate the 'cosine' and 'linear' decays end at, as a fraction
        of `learning_rate`.
      b1: AdamW decay rate of the first moment.
      b2: AdamW decay rate of the second moment.
      eps: AdamW denominator epsilon.
      weight_decay: decoupled weight decay, applied to matrices only (`decay_mask`).
      clip_grad_norm: global gradient-norm clipping threshold; 0 disables clipping.

    Raises:
      ValueError: an unknown schedule, a non-positive learning rate, or a warmup_ratio
        outside [0, 1).
    """

    learning_rate: float = 1e-5
    schedule: Schedule = "cosine"
    warmup_steps: int = 0
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.0
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0  # 0 disables clipping

    def __post_init__(self):
        """Checks the schedule name, the learning rate and the warmup ratio."""
        choices.check("OptimizerConfig", "schedule", self.schedule, Schedule)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def learning_rate_schedule(oc: OptimizerConfig, total_steps: int) -> optax.Schedule:
    """The learning rate per step: linear warmup, then the configured decay.

    Warmup lasts `oc.warmup_steps` (or `oc.warmup_ratio * total_steps` when that is 0), at
    most `total_steps - 1` steps, and rises linearly from `learning_rate / warmup` to
    `learning_rate`; the decay spans the remaining steps.

    Args:
      oc: the optimizer settings.
      total_steps: the number of optimizer steps of the run.

    Returns:
      An optax schedule mapping a step count to a learning rate.
    """
    warmup = oc.warmup_steps or int(oc.warmup_ratio * total_steps)
    warmup = min(warmup, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = oc.learning_rate * oc.min_lr_ratio
    if oc.schedule == "cosine":
        decay = optax.cosine_decay_schedule(oc.learning_rate, decay_steps, alpha=oc.min_lr_ratio)
    elif oc.schedule == "linear":
        decay = optax.linear_schedule(oc.learning_rate, end, decay_steps)
    else:
        decay = optax.constant_schedule(oc.learning_rate)
    if warmup == 0:
        return decay
    # Warmup starts at lr / warmup so the first step already moves the weights.
    return optax.join_schedules(
        [optax.linear_schedule(oc.learning_rate / warmup, oc.learning_rate, warmup), decay], [warmup]
    )


def decay_mask(params: Any) -> Any:
    """Weight-decay mask: True for matrices (kernels, embeddings, LoRA A / B), False for norms, biases.

    Decided by name, not rank: with layers stacked for scan a norm scale is 2-D too.

    Args:
      params: a parameter tree (arrays or abstract shapes).

    Returns:
      A tree of bools with the structure of `params`.
    """

    def leaf(path, _):
        # lora_a / lora_b: LoRA adapter matrices (`lora`), decayed as PEFT + the HF Trainer do.
        return getattr(path[-1], "key", None) in ("kernel", "embedding", "lora_a", "lora_b")

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(oc: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
    """The SFT optimizer: AdamW on `learning_rate_schedule`, after global-norm clipping.

    Args:
      oc: the optimizer settings; `oc.clip_grad_norm == 0` leaves clipping out.
      total_steps: the number of optimizer steps of the run (sets the schedule's length).

    Returns:
      An optax gradient transformation.
    """
    adamw = optax.adamw(
        learning_rate_schedule(oc, total_steps),
        b1=oc.b1,
        b2=oc.b2,
        eps=oc.eps,
        weight_decay=oc.weight_decay,
        mask=decay_mask,
    )
    if oc.clip_grad_norm > 0:
        return optax.chain(optax.clip_by_global_norm(oc.clip_grad_norm), adamw)
    return adamw
