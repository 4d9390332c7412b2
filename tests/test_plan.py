"""Memory planning: exact shard sizes, the plan against XLA's memory analysis of the compiled
train step, and `isheep plan` on the 72B preset over a v5p-128 mesh."""

import importlib.util

import jax
import jax.numpy as jnp
import pytest

from isheep_jax import plan
from isheep_jax.model.config import ModelConfig
from isheep_jax.parallel import sharding
from isheep_jax.training.optim import OptimizerConfig, make_optimizer
from isheep_jax.training.sft_data import MODEL_KEYS
from isheep_jax.training.train_step import compile_train_step, state_shardings

# The plan is checked against what the compiler reports of programs it builds here.
pytestmark = pytest.mark.fresh_compiles

TINY = dict(
    vocab_size=1000,
    hidden_size=128,
    intermediate_size=256,
    num_layers=4,
    num_heads=4,
    num_kv_heads=2,
    head_dim=32,
)


def test_shard_bytes_follow_the_rules():
    mesh = plan.abstract_mesh(1, 4, 2)
    # embed -> fsdp (4), mlp -> tensor (2): a [64, 96] f32 kernel is split 8 ways.
    assert plan.shard_bytes((64, 96), 4, ("embed", "mlp"), mesh) == 64 * 96 * 4 // 8
    # A dim that does not divide is replicated, as sharding.logical_to_pspec does.
    assert plan.shard_bytes((6, 96), 4, ("embed", "mlp"), mesh) == 6 * 48 * 4
    cfg = ModelConfig(**TINY)
    assert plan.param_bytes(cfg, plan.abstract_mesh(1, 1, 1)) == cfg.num_params() * 4


@pytest.mark.parametrize("remat, loss_chunk", [("none", 0), ("full", 0), ("full", 512)])
def test_plan_agrees_with_the_compiled_train_step(remat, loss_chunk):
    """Arguments (params + Adam state) within 2 %; temporaries (gradients + activations)
    within a factor of 2 of XLA's own figures for the compiled step on one CPU device."""
    cfg = ModelConfig(**TINY, remat_policy=remat)
    rows, length = 8, 256
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    opt = make_optimizer(OptimizerConfig(), 10)
    abstract_state, _ = state_shardings(cfg, opt, mesh)
    batch = {k: jax.ShapeDtypeStruct((1, rows, length), jnp.int32) for k in MODEL_KEYS}
    measured = plan.compiler_memory(
        compile_train_step(cfg, opt, mesh, (1, rows, length), loss_chunk_tokens=loss_chunk)
        .lower(abstract_state, batch)
        .compile()
    )
    p = plan.make_plan(cfg, (1, 1, 1), rows, 1, length, plan.PlanConfig(), loss_chunk)
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
    # A chunked loss holds the f32 logits and their gradient of 512 tokens, not of 8 x 256.
    chunked = plan.make_plan(cfg, (1, 1, 1), 8, 1, 256, plan.PlanConfig(), loss_chunk_tokens=512)
    saved = one.rows["activations (remat full)"] - chunked.rows["activations (remat full)"]
    assert saved == 2 * (8 * 256 - 512) * cfg.vocab_size * 4


def test_isheep_plan_72b_on_v5p_128(capsys):
    from isheep_jax import cli

    assert (
        cli.main(
            [
                "plan",
                "--no_compile",
                "--gin_file",
                "models/qwen15_72b.gin",
                "--gin_file",
                "meshes/v5p_128.gin",
                "--gin.TrainConfig.remat_policy='full'",
                "--gin.TrainConfig.batch_size=64",
                "--gin.TrainConfig.max_prompt_len=1024",
                "--gin.TrainConfig.max_response_len=1024",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "72.29B params" in out and "data 1 x fsdp 16 x tensor 4 = 64 v5p chips" in out
    params_gib = float(next(line.split()[-1] for line in out.splitlines() if line.startswith("params ")))
    assert abs(params_gib - 72.29e9 * 4 / 64 / 2**30) < 0.1  # f32 params spread over 64 chips
    assert "training step total" in out and "fits in 85.5 GiB" in out
    assert "compiler figure: not computed: --no_compile" in out
    # A mesh with a -1 axis cannot be planned without devices.
    assert cli.main(["plan", "--gin_file", "models/qwen15_72b.gin"]) == 2
    assert "needs every mesh size" in capsys.readouterr().err


# Every per-device dim a multiple of 128 after sharding over (fsdp 2, tensor 2), so TPU
# tile padding does not blur the comparison.
ALIGNED = dict(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    head_dim=128,
)
SMALL_SAMPLER = plan.PlanConfig(chip="v5e", sample_batch=8, sample_len=256)


def _check_against_plan(mem, p, sampling_margin):
    """Arguments are exact (params + Adam state; the sampler's params); the sampler's peak
    (gathered weights + KV cache) within a factor `sampling_margin`."""
    state = p.rows["params"] + p.rows["optimizer state"]
    assert abs(mem["training step"]["arguments"] - state) / state < 0.02, (mem, p.rows)
    assert mem["training step"]["aliased"] > 0.95 * state  # the donated state is updated in place
    assert mem["training step"]["temporaries"] >= p.rows["gradients"]
    sampler_args = p.rows["params"] + p.rows["sampler tied head copy"]
    assert abs(mem["sampling"]["arguments"] - sampler_args) / sampler_args < 0.02, (mem, p.rows)
    ratio = plan.compiled_total(mem["sampling"]) / p.sample_total
    assert 1 / sampling_margin < ratio < sampling_margin, (mem, p.rows)


@pytest.mark.parametrize("tied", [False, True])
def test_plan_agrees_with_the_compiled_sampler_on_a_cpu_mesh(tied):
    """XLA:CPU double-buffers the decode loop's cache: within 2x here, 25 % on TPU (below)."""
    cfg = ModelConfig(**ALIGNED, tie_embeddings=tied)
    mesh = sharding.make_mesh(1, 2, 2, devices=jax.devices()[:4])
    mem = plan.compiled_memory(cfg, mesh, (1, 8, 256), SMALL_SAMPLER)
    p = plan.make_plan(cfg, (1, 2, 2), 8, 1, 256, SMALL_SAMPLER)
    # f32 weights gathered over fsdp 2 (norm scales were never split: not quite 2x)
    assert abs(p.rows["sampler gathered weights"] / p.rows["params"] - 2) < 0.01
    _check_against_plan(mem, p, sampling_margin=2.0)


def test_cudnn_attention_drops_the_scores_from_the_activation_plan():
    """cuDNN's fused attention keeps one f32 softmax statistic per head and token instead of the
    f32 scores and probabilities (2 x heads x the keys a query scores per token: at 256
    tokens our attention's two causal query blocks score 128 and 256 keys, 192 on average)."""
    cfg = ModelConfig(**TINY, dtype="bfloat16")
    mesh = plan.abstract_mesh(1, 2, 2)
    rows, length, heads = 8, 256, TINY["num_heads"] // 2  # heads split over tensor 2
    tokens = rows // 2 * length  # rows split over fsdp 2
    for remat in ("none", "full"):  # 'full' keeps one recomputed layer
        xla = plan.activation_bytes(cfg, mesh, rows, length, remat)
        cudnn = plan.activation_bytes(cfg.replace(attention_impl="cudnn"), mesh, rows, length, remat)
        layers = cfg.num_layers if remat == "none" else 1
        assert xla - cudnn == layers * tokens * 4 * (2 * heads * 192 - heads)


def test_bf16_kv_cache_halves_the_planned_and_compiled_cache():
    """`Generator.kv_cache_dtype` reaches the plan and the compiled sampler alike."""
    import gin

    from isheep_jax.sampling import generator  # noqa: F401  (registers Generator with gin)

    cfg = ModelConfig(**ALIGNED)
    mesh = sharding.make_mesh(1, 2, 2, devices=jax.devices()[:4])
    f32 = plan.make_plan(cfg, (1, 2, 2), 8, 1, 256, SMALL_SAMPLER)
    mem32 = plan.compiled_memory(cfg, mesh, (1, 8, 256), SMALL_SAMPLER)["sampling"]
    gin.bind_parameter("Generator.kv_cache_dtype", "bfloat16")
    bf16 = plan.make_plan(cfg, (1, 2, 2), 8, 1, 256, SMALL_SAMPLER)
    mem16 = plan.compiled_memory(cfg, mesh, (1, 8, 256), SMALL_SAMPLER)["sampling"]
    assert bf16.rows["sampler KV cache"] * 2 == f32.rows["sampler KV cache"]
    saved = f32.rows["sampler KV cache"] - bf16.rows["sampler KV cache"]
    drop = plan.compiled_total(mem32) - plan.compiled_total(mem16)
    # The compiled sampler shrinks too, by less than the plan's saving: XLA:CPU converts a
    # layer's cache to f32 in temporaries (see Generator's docstring on speed).
    assert 0.2 * saved < drop <= saved, (mem32, mem16, saved)
    gin.bind_parameter(
        "Generator.kv_cache_dtype", "int8"
    )  # the Generator's own check, not a silent 1-byte plan
    with pytest.raises(ValueError, match="kv_cache_dtype"):
        plan.configured_cache_dtype(cfg)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (tpu-aot extra)")
def test_ahead_of_time_compile_for_a_tpu_topology():
    """libtpu compiles the train step and the sampler for a v5e 2x2 slice on this CPU host."""
    cfg = ModelConfig(**ALIGNED)
    devices = plan.tpu_devices("v5e:2x2")
    assert len(devices) == 4 and {d.platform for d in devices} == {"tpu"}
    mesh = sharding.make_mesh(1, 2, 2, devices=devices)
    mem = plan.compiled_memory(cfg, mesh, (1, 8, 256), SMALL_SAMPLER)
    _check_against_plan(mem, plan.make_plan(cfg, (1, 2, 2), 8, 1, 256, SMALL_SAMPLER), sampling_margin=1.25)


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="libtpu not installed (tpu-aot extra)")
def test_isheep_plan_compiles_for_the_topology(capsys):
    from isheep_jax import cli

    model = [f"--gin.ModelConfig.{k}={v}" for k, v in ALIGNED.items()]
    mesh = ["--gin.make_mesh.data=1", "--gin.make_mesh.fsdp=2", "--gin.make_mesh.tensor=2"]
    small = [
        "--gin.PlanConfig.chip='v5e'",
        "--gin.PlanConfig.sample_batch=8",
        "--gin.PlanConfig.sample_len=256",
        "--gin.TrainConfig.max_prompt_len=128",
        "--gin.TrainConfig.max_response_len=128",
    ]
    assert cli.main(["plan", *model, *mesh, *small, "--gin.PlanConfig.topology='v5e:2x2'"]) == 0
    out = capsys.readouterr().out
    assert "compiled ahead of time for v5e:2x2" in out
    compiled = out[out.index("compiled ahead of time") :].splitlines()
    rows = {
        name: next(line for line in compiled if line.startswith(name)).split()[-7:]
        for name in ("training step", "sampling")
    }
    for name, (_args, _outs, _aliased, _temps, peak, _analytic, verdict) in rows.items():
        assert verdict == "fits" and float(peak) > 0, (name, compiled)  # GiB: a few MB show as 0.01
    # A topology with another number of chips than the mesh is refused by name.
    assert cli.main(["plan", *model, *mesh, *small, "--gin.PlanConfig.topology='v5e:4x4'"]) == 2
    assert "PlanConfig.topology 'v5e:4x4' has 16 devices" in capsys.readouterr().err


def test_plan_without_libtpu_says_how_to_get_it(monkeypatch):
    monkeypatch.setattr(plan.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match=r"isheep_jax\[tpu-aot\]"):
        plan.tpu_devices.__wrapped__("v5e:2x2")  # past the cache of earlier tests


def test_plan_config_rejects_a_topology_of_another_chip():
    with pytest.raises(ValueError, match="not a v5e topology"):
        plan.PlanConfig(chip="v5e", topology="v5p:4x4x4")
