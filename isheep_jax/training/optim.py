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
    """AdamW hyper-parameters. `schedule`: 'cosine' | 'linear' (to min_lr_ratio * lr) | 'constant'.

    Warmup is linear from 0 over `warmup_steps`, or over `warmup_ratio` of all steps when
    warmup_steps is 0.
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
        choices.check("OptimizerConfig", "schedule", self.schedule, Schedule)
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


def learning_rate_schedule(oc: OptimizerConfig, total_steps: int) -> optax.Schedule:
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
    """True for matrices (kernels, embeddings); False for norm scales and biases.

    Decided by name, not rank: with layers stacked for scan a norm scale is 2-D too.
    """

    def leaf(path, _):
        return getattr(path[-1], "key", None) in ("kernel", "embedding")

    return jax.tree_util.tree_map_with_path(leaf, params)


def make_optimizer(oc: OptimizerConfig, total_steps: int) -> optax.GradientTransformation:
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
