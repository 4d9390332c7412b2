"""Memory planning: exact shard sizes, the plan against XLA's memory analysis of the compiled
train step, and `isheep plan` on the 72B preset over a v5p-128 mesh."""

import jax
import jax.numpy as jnp
import pytest

from isheep_jax import plan, sharding
from isheep_jax.config import ModelConfig
from isheep_jax.optim import OptimizerConfig, make_optimizer
from isheep_jax.sft_data import MODEL_KEYS
from isheep_jax.train_step import compile_train_step, state_shardings

TINY = dict(vocab_size=1000, hidden_size=128, intermediate_size=256, num_layers=4, num_heads=4, num_kv_heads=2,
            head_dim=32)


def test_shard_bytes_follow_the_rules():
    mesh = plan.abstract_mesh(1, 4, 2)
    # embed -> fsdp (4), mlp -> tensor (2): a [64, 96] f32 kernel is split 8 ways.
    assert plan.shard_bytes((64, 96), 4, ("embed", "mlp"), mesh) == 64 * 96 * 4 // 8
    # A dim that does not divide is replicated, as sharding.logical_to_pspec does.
    assert plan.shard_bytes((6, 96), 4, ("embed", "mlp"), mesh) == 6 * 48 * 4
    cfg = ModelConfig(**TINY)
    assert plan.param_bytes(cfg, plan.abstract_mesh(1, 1, 1)) == cfg.num_params() * 4


@pytest.mark.parametrize("remat", ["none", "full"])
def test_plan_agrees_with_the_compiled_train_step(remat):
    """Arguments (params + Adam state) within 2 %; temporaries (gradients + activations)
    within a factor of 2 of XLA's own figures for the compiled step on one CPU device."""
    cfg = ModelConfig(**TINY, remat_policy=remat)
    rows, length = 8, 256
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    opt = make_optimizer(OptimizerConfig(), 10)
    abstract_state, _ = state_shardings(cfg, opt, mesh)
    batch = {k: jax.ShapeDtypeStruct((1, rows, length), jnp.int32) for k in MODEL_KEYS}
    measured = plan.compiler_memory(compile_train_step(cfg, opt, mesh, (1, rows, length))
                                    .lower(abstract_state, batch).compile())
    p = plan.make_plan(cfg, (1, 1, 1), rows, 1, length, plan.PlanConfig())
    state = p.rows["params"] + p.rows["optimizer state"]
    assert abs(measured["arguments"] - state) / state < 0.02, (measured, p.rows)
    temp = p.rows["gradients"] + p.rows[f"activations (remat {remat})"]
    assert 0.5 < measured["temporaries"] / temp < 2.0, (measured, p.rows)


def test_remat_and_sharding_shrink_the_plan():
    cfg = ModelConfig(**TINY)
    one = plan.make_plan(cfg, (1, 1, 1), 8, 1, 256, plan.PlanConfig())
    eight = plan.make_plan(cfg, (2, 2, 2), 8, 1, 256, plan.PlanConfig())
    assert eight.rows["params"] < one.rows["params"] / 3 and eight.train_total < one.train_total
    acts = [one.rows[f"activations (remat {r})"] for r in ("none", "dots", "full")]
    assert acts[0] > acts[1] > acts[2]


def test_isheep_plan_72b_on_v5p_128(capsys):
    from isheep_jax import cli

    assert cli.main(["plan", "--gin_file", "models/qwen15_72b.gin", "--gin_file", "meshes/v5p_128.gin",
                     "--gin.TrainConfig.remat_policy='full'", "--gin.TrainConfig.batch_size=64",
                     "--gin.TrainConfig.max_prompt_len=1024", "--gin.TrainConfig.max_response_len=1024"]) == 0
    out = capsys.readouterr().out
    assert "72.29B params" in out and "data 1 x fsdp 16 x tensor 4 = 64 v5p chips" in out
    params_gib = float(next(line.split()[-1] for line in out.splitlines() if line.startswith("params ")))
    assert abs(params_gib - 72.29e9 * 4 / 64 / 2**30) < 0.1  # f32 params spread over 64 chips
    assert "training step total" in out and "fits in 85.5 GiB" in out
    # A mesh with a -1 axis cannot be planned without devices.
    assert cli.main(["plan", "--gin_file", "models/qwen15_72b.gin"]) == 2
    assert "needs every mesh size" in capsys.readouterr().err
