"""Memory planning: bytes per device of a configured model's training step and sampler on a
mesh, against the chip's HBM, without allocating anything.

Params, optimizer state, gradients and the KV cache are exact: every array's shard shape
under the same logical-axis rules the run uses (`sharding.DEFAULT_RULES`). Activations are
an estimate of what the backward pass keeps (see `activation_bytes`); the test compares the
whole plan with XLA's own memory analysis of the compiled step on CPU.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import gin
import jax
import numpy as np

from isheep_jax import sharding
from isheep_jax.config import ModelConfig
from isheep_jax.params import abstract_params

GIB = 1 << 30
# HBM per chip (GiB): public Cloud TPU / GPU figures.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "h100": 80, "h200": 141}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """What `isheep plan` sizes besides the model, mesh and TrainConfig of the gin files."""

    chip: str = "v5p"
    sample_batch: int = 64  # sequences decoded at once over the whole mesh
    sample_len: int = 2048  # cache slots: prompt + new tokens
    headroom: float = 0.9  # fraction of HBM a plan may use (XLA needs scratch space too)

    def __post_init__(self):
        if self.chip not in HBM_GIB:
            raise ValueError(f"PlanConfig.chip must be one of {sorted(HBM_GIB)}, got {self.chip!r}")


def abstract_mesh(data: int, fsdp: int, tensor: int) -> jax.sharding.AbstractMesh:
    """A mesh of the given shape with no devices behind it (planning for a slice we are not on)."""
    return jax.sharding.AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


def shard_bytes(shape: Sequence[int], itemsize: int, names: Sequence[str | None], mesh,
                rules=sharding.DEFAULT_RULES) -> int:
    """Bytes of the largest shard of one array laid out by its logical axis names."""
    spec = sharding.logical_to_pspec(names, shape, mesh, rules)
    dims = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        dims.append(math.ceil(dim / math.prod(mesh.shape[a] for a in axes)))
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def param_bytes(cfg: ModelConfig, mesh, itemsize: int | None = None) -> int:
    """Per-device bytes of the parameters (optimizer moments and gradients have the same layout)."""
    abstract, names = abstract_params(cfg)
    leaves = jax.tree.leaves(jax.tree.map(
        lambda n, a: shard_bytes(a.shape, itemsize or a.dtype.itemsize, n, mesh),
        names, abstract, is_leaf=lambda x: isinstance(x, tuple)))
    return int(sum(leaves))


def kv_cache_bytes(cfg: ModelConfig, mesh, batch: int, slots: int) -> int:
    """Per-device bytes of the sampler's KV cache (k and v of every layer)."""
    names = ("batch", "act_kv_heads", "cache_length", "kv")
    one = shard_bytes((batch, cfg.num_kv_heads, slots, cfg.head_dim), np.dtype(cfg.dtype).itemsize, names, mesh)
    return 2 * cfg.num_layers * one


def _split(n: int, parts: int) -> int:
    """Elements per device of a dimension of size n sharded `parts` ways (replicated if it does not divide)."""
    return n // parts if n % parts == 0 else n


def activation_bytes(cfg: ModelConfig, mesh, rows: int, length: int, remat: str) -> int:
    """Estimated per-device bytes the backward pass of one micro-batch keeps alive.

    Per token and layer (compute dtype, heads and MLP split over `tensor`): without remat,
    the norm inputs and residual (4 H), q/k/v/attention output ((2 nh + 2 kv) hd), the MLP's
    gate, up and product (3 I) and the f32 attention scores and probabilities (2 nh S); with
    'dots', only matmul outputs; with 'full', each layer's input (H) plus one layer
    recomputed at a time. The f32 logits and their gradient come on top.
    """
    t = mesh.shape["tensor"]
    b = np.dtype(cfg.dtype).itemsize
    tokens = _split(rows, mesh.shape["data"] * mesh.shape["fsdp"]) * length
    nh, kv, hd, h, i = (_split(cfg.num_heads, t), _split(cfg.num_kv_heads, t), cfg.head_dim,
                        cfg.hidden_size, _split(cfg.intermediate_size, t))
    full_layer = tokens * (b * (4 * h + (2 * nh + 2 * kv) * hd + 3 * i) + 4 * 2 * nh * length)
    dots_layer = tokens * b * ((2 * nh + 2 * kv) * hd + 2 * h + 2 * i)
    per_layer = {"none": full_layer, "dots": dots_layer, "full": tokens * b * h}[remat]
    extra_layer = full_layer if remat != "none" else 0  # the layer being recomputed
    logits = 2 * tokens * _split(cfg.vocab_size, t) * 4
    return cfg.num_layers * per_layer + extra_layer + logits


@dataclasses.dataclass(frozen=True)
class Plan:
    rows: dict[str, int]  # name -> per-device bytes
    train_total: int
    sample_total: int
    hbm: int
    headroom: float

    def fits(self, total: int) -> bool:
        return total <= self.hbm * self.headroom


def make_plan(cfg: ModelConfig, mesh_shape: tuple[int, int, int], batch_size: int, micro_batches: int,
              seq_len: int, pc: PlanConfig) -> Plan:
    """Per-device memory of training (params, Adam moments, gradients, activations) and sampling."""
    mesh = abstract_mesh(*mesh_shape)
    params = param_bytes(cfg, mesh)
    moments = 2 * param_bytes(cfg, mesh, 4)  # optax adamw keeps mu and nu in f32
    grads = params  # accumulated gradients, parameter dtype and layout
    rows_per_micro = batch_size // micro_batches
    act = {r: activation_bytes(cfg, mesh, rows_per_micro, seq_len, r) for r in ("none", "dots", "full")}
    cache = kv_cache_bytes(cfg, mesh, pc.sample_batch, pc.sample_len)
    sample_logits = _split(pc.sample_batch, mesh_shape[0] * mesh_shape[1]) * _split(cfg.vocab_size, mesh_shape[2]) * 4
    rows = {"params": params, "optimizer state": moments, "gradients": grads,
            "activations (remat none)": act["none"], "activations (remat dots)": act["dots"],
            "activations (remat full)": act["full"], "sampler KV cache": cache, "sampler logits": sample_logits}
    train_total = params + moments + grads + act[cfg.remat_policy]
    sample_total = params + cache + sample_logits
    return Plan(rows, train_total, sample_total, HBM_GIB[pc.chip] * GIB, pc.headroom)


def format_plan(plan: Plan, cfg: ModelConfig, mesh_shape: tuple[int, int, int], chip: str,
                batch: tuple[int, int, int]) -> str:
    d, f, t = mesh_shape
    lines = [f"model: {cfg.num_params() / 1e9:.2f}B params ({cfg.model_type}, {cfg.num_layers} layers, "
             f"param {cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat_policy})",
             f"mesh: data {d} x fsdp {f} x tensor {t} = {d * f * t} {chip} chips ({HBM_GIB[chip]} GiB HBM each)",
             f"train batch: {batch[0]} sequences x {batch[2]} tokens in {batch[1]} micro-batch(es)", "",
             f"{'per device':<28}{'GiB':>10}"]
    lines += [f"{name:<28}{b / GIB:>10.2f}" for name, b in plan.rows.items()]
    budget = plan.hbm * plan.headroom / GIB
    for what, total in (("training step", plan.train_total), ("sampling", plan.sample_total)):
        verdict = "fits" if plan.fits(total) else "does NOT fit"
        lines.append(f"{what + ' total':<28}{total / GIB:>10.2f}  {verdict} in {budget:.1f} GiB "
                     f"({plan.headroom:.0%} of {HBM_GIB[chip]} GiB)")
    if not plan.fits(plan.train_total) and cfg.remat_policy != "full":
        lines.append("hint: ModelConfig.remat_policy = 'full' keeps one layer's activations at a time")
    return "\n".join(lines)


def compiler_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled executable (argument, output, temporary bytes)."""
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return {"arguments": int(ma.argument_size_in_bytes), "outputs": int(ma.output_size_in_bytes),
            "temporaries": int(ma.temp_size_in_bytes), "aliased": int(ma.alias_size_in_bytes)}
