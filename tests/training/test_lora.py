"""LoRA: exact parameter count, merge, sharded step == one device, resumable training whose
WORK/model is the merged model, and the PEFT export against peft + transformers."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import TINY_PAIRS, make_hf_model

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert import hf, peft
from isheep_jax.parallel import sharding
from isheep_jax.training import lora, sft_data
from isheep_jax.training.optim import OptimizerConfig, make_optimizer
from isheep_jax.training.train_step import TrainState
from isheep_jax.training.trainer import TrainConfig, TrainingError, make_batch, train

DIMS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("lora-model")
    hf_dir = make_hf_model(str(root / "hf"), "llama", num_key_value_heads=2, **DIMS)
    hf.import_hf(hf_dir, str(root / "ours"))
    return str(root / "ours")


@pytest.fixture(scope="module")
def data(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora-pairs") / "kept.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in TINY_PAIRS))
    sft_data.register_sft_task("test_lora_task", [str(path)], checkpoint.tokenizer_dir(tiny_model), "chat")
    return sft_data.load_examples("test_lora_task", 48, 32)


def _random_adapters(cfg, spec, mesh, seed=1):
    """Adapters with B != 0 too (fresh ones have B = 0, which would hide a wrong B layout)."""
    ad = lora.init_adapters(cfg, spec, jax.random.key(seed), mesh)
    leaves, tree = jax.tree.flatten(ad)
    keys = jax.random.split(jax.random.key(seed + 100), len(leaves))
    shards = jax.tree.leaves(lora.adapter_shardings(cfg, spec, mesh))
    leaves = [
        jax.device_put(0.05 * jax.random.normal(k, x.shape, x.dtype), s)
        for k, x, s in zip(keys, leaves, shards)
    ]
    return jax.tree.unflatten(tree, leaves)


def test_trainable_parameter_count_is_exact(tiny_model):
    cfg = checkpoint.load_config(tiny_model)
    L, E, F = 2, 64, 128  # noqa: N806
    H, K, D = 4, 2, 16  # noqa: N806  heads, kv heads, head dim (64 / 4)
    assert (cfg.num_layers, cfg.hidden_size, cfg.intermediate_size) == (L, E, F)
    assert (cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (H, K, D)
    r = 4
    per_layer = (E + H * D) + 2 * (E + K * D) + (H * D + E) + 2 * (E + F) + (F + E)  # r * (in + out) / r
    assert lora.num_trainable(cfg, lora.LoraSpec(r)) == L * r * per_layer == 8 * 1024
    assert lora.num_trainable(cfg, lora.LoraSpec(8, targets=("q_proj", "v_proj"))) == L * 8 * (
        (E + H * D) + (E + K * D)
    )
    shapes, names = lora.abstract_adapters(cfg, lora.LoraSpec(r))
    q = shapes["layers"]["attn"]["q_proj"]
    assert q["lora_a"].shape == (L, E, r) and q["lora_b"].shape == (L, r, H, D)
    assert shapes["layers"]["attn"]["o_proj"]["lora_a"].shape == (L, H, D, r)
    assert names["layers"]["attn"]["q_proj"] == {
        "lora_a": ("layers", "embed", "lora"),
        "lora_b": ("layers", "lora", "heads", "kv"),
    }


def test_settings_are_checked():
    for kw, match in [
        (dict(lora_rank=-1), "lora_rank must be an integer >= 0"),
        (dict(lora_rank=4, lora_alpha=0.0), "lora_alpha must be positive"),
        (dict(lora_rank=4, lora_dropout=0.1), "lora_dropout = 0.1: only 0 is supported"),
        (dict(lora_rank=4, lora_targets=("q_proj", "qkv")), r"unknown lora_targets \['qkv'\]"),
        (dict(lora_rank=4, lora_targets=()), "lora_targets is empty"),
        (dict(lora_rank=4, lora_targets=("q_proj", "q_proj")), "names a projection twice"),
    ]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kw)
    assert TrainConfig(lora_rank=4, lora_targets=["q_proj"]).lora_targets == ("q_proj",)  # gin lists
    assert TrainConfig().lora_spec() is None and TrainConfig(lora_rank=2).lora_spec().scale == 8.0


def test_merge_is_base_plus_scaled_b_a_and_fresh_adapters_change_nothing(tiny_model):
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg, base = checkpoint.load_model(tiny_model, mesh)
    spec = lora.LoraSpec(4, alpha=8.0)
    fresh = lora.init_adapters(cfg, spec, jax.random.key(0), mesh)
    merged = lora.merge(base, fresh, spec.scale)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), merged, base)
    a = np.asarray(fresh["layers"]["mlp"]["up_proj"]["lora_a"])
    assert 0 < np.abs(a).max() <= 1 / np.sqrt(64) and a.std() > 0.5 / np.sqrt(3 * 64)  # U(+-1/sqrt(in))

    ad = _random_adapters(cfg, spec, mesh)
    merged = lora.merge(base, ad, spec.scale)
    for t, target in peft.LORA_TARGETS.items():
        w = np.asarray(lora._get(base, target.path)["kernel"])
        got = np.asarray(lora._get(merged, target.path)["kernel"])
        A, B = (np.asarray(lora._get(ad, target.path)[k]) for k in ("lora_a", "lora_b"))  # noqa: N806
        for i in range(cfg.num_layers):
            n_in = int(np.prod(A.shape[1:-1]))
            want = w[i].reshape(n_in, -1) + 2.0 * A[i].reshape(n_in, 4) @ B[i].reshape(4, -1)
            np.testing.assert_allclose(got[i].reshape(n_in, -1), want, rtol=1e-6, atol=1e-6, err_msg=t)
    assert merged["layers"]["attn"]["q_proj"]["bias" if cfg.qkv_bias else "kernel"] is not None
    assert merged["embed"]["embedding"] is base["embed"]["embedding"]  # untouched leaves are shared


def _lora_step(cfg, spec, data, model_dir, mesh):
    oc = OptimizerConfig(learning_rate=1e-3, warmup_steps=0, warmup_ratio=0.0, weight_decay=0.1, eps=1e-6)
    opt = make_optimizer(oc, 10)
    _, shard = lora.state_shardings(cfg, spec, opt, mesh)
    _, base = checkpoint.load_model(model_dir, mesh)
    ad = _random_adapters(cfg, spec, mesh)
    state = TrainState(jnp.zeros((), jnp.int32), ad, jax.jit(opt.init, out_shardings=shard.opt_state)(ad))
    batch = make_batch(data, np.arange(4), 2)
    step = lora.compile_train_step(cfg, spec, opt, mesh, batch["decoder_input_tokens"].shape)
    state, m = step(state, base, batch)
    # The base is an argument, not donated: still readable and unchanged after the step.
    np.testing.assert_array_equal(
        np.asarray(base["embed"]["embedding"]),
        np.asarray(checkpoint.load_model(model_dir, mesh)[1]["embed"]["embedding"]),
    )
    return jax.device_get(state.params), jax.device_get(m), state


SPEC = lora.LoraSpec(4, alpha=16.0)


@pytest.fixture(scope="module")
def one_device_step(data, tiny_model):
    """The reference: the LoRA step on one device (computed once for every mesh)."""
    cfg = checkpoint.load_config(tiny_model)
    ad, m, _ = _lora_step(cfg, SPEC, data, tiny_model, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    return ad, m


# fsdp alone, and data x fsdp x tensor (the data-only and fsdp x tensor meshes add nothing
# these two miss; the full step runs on all four in test_trainer).
@pytest.mark.parametrize("shape", [(1, 8, 1), (2, 2, 2)])
def test_lora_step_on_meshes_equals_one_device(data, tiny_model, one_device_step, shape):
    cfg = checkpoint.load_config(tiny_model)
    spec = SPEC
    ref_ad, ref_m = one_device_step
    ad, m, state = _lora_step(cfg, spec, data, tiny_model, sharding.make_mesh(*shape))
    np.testing.assert_allclose(m["loss"], ref_m["loss"], rtol=1e-5)
    np.testing.assert_allclose(m["grad_norm"], ref_m["grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-6, rtol=1e-4), ad, ref_ad)
    # A and B moved (both get gradients with B != 0), and Adam's moments exist for them only.
    start = jax.device_get(
        _random_adapters(cfg, spec, sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1]))
    )
    for leaf_new, leaf_old in zip(jax.tree.leaves(ad), jax.tree.leaves(start)):
        assert np.abs(leaf_new - leaf_old).max() > 1e-5
    mu = state.opt_state[1][0].mu
    assert jax.tree.structure(mu) == jax.tree.structure(state.params)
    # A is laid out like its kernel's input side: embed over fsdp.
    a = state.params["layers"]["mlp"]["gate_proj"]["lora_a"]
    b = state.params["layers"]["mlp"]["gate_proj"]["lora_b"]
    assert a.sharding.spec[1] == ("fsdp" if shape[1] > 1 else None)
    assert b.sharding.spec[2] == ("tensor" if shape[2] > 1 else None)
    assert mu["layers"]["mlp"]["gate_proj"]["lora_a"].sharding == a.sharding


def test_lora_training_resumes_exactly_and_exports_the_merged_model(data, tiny_model, tmp_path):
    """2N steps straight == N steps, restore, N more (bit-identical adapters and merged model);
    WORK/model = base + (alpha / r) A @ B of WORK/adapter; full fine-tuning is untouched."""
    oc = OptimizerConfig(learning_rate=3e-3, warmup_steps=1)
    tc = TrainConfig(
        batch_size=2,
        num_epochs=2,
        seed=3,
        save_every_steps=2,
        keep_trainer_state=True,
        lora_rank=4,
        lora_alpha=8.0,
    )  # 4 steps
    res = train(tiny_model, data, tmp_path / "full", tc, oc, progress=False)
    # The checkpoints hold the adapters and their optimizer state, never the base.
    saved = (tmp_path / "full" / "checkpoints" / "2" / "state" / "_METADATA").read_text()
    assert "'lora_b'" in saved and "'embed'" not in saved and "'kernel'" not in saved
    # As if killed right after step 2's checkpoint: a copy without the final checkpoint and exports.
    work = tmp_path / "resumed"
    shutil.copytree(tmp_path / "full", work)
    shutil.rmtree(work / "adapter")
    shutil.rmtree(work / "model")
    shutil.rmtree(work / "checkpoints" / "4")
    with pytest.raises(TrainingError, match="other data or settings"):  # the LoRA fields are fingerprinted
        train(tiny_model, data, work, dataclasses.replace(tc, lora_alpha=4.0), oc, progress=False)
    with pytest.raises(TrainingError, match="other data or settings"):  # and so is the mode
        train(tiny_model, data, work, dataclasses.replace(tc, lora_rank=0), oc, progress=False)
    resumed = train(tiny_model, data, work, tc, oc, progress=False)  # also rewrites WORK/adapter
    assert resumed.final_loss == res.final_loss
    meta, ad_full = peft.load_adapter(tmp_path / "full" / "adapter")
    _, ad_res = peft.load_adapter(work / "adapter")
    assert (meta["rank"], meta["alpha"], meta["targets"]) == (4, 8.0, list(peft.ALL_TARGETS))
    jax.tree.map(np.testing.assert_array_equal, ad_full, ad_res)
    cfg, p_full = checkpoint.load_model(res.model_dir)
    _, p_res = checkpoint.load_model(resumed.model_dir)
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p_full, p_res)
    _, base = checkpoint.load_model(tiny_model)
    want = lora.merge(base, lora.from_targets(ad_full), 2.0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6), p_full, want
    )
    assert (
        np.abs(
            np.asarray(
                p_full["layers"]["attn"]["q_proj"]["kernel"] - base["layers"]["attn"]["q_proj"]["kernel"]
            )
        ).max()
        > 0
    )
    # Only the adapted kernels changed.
    np.testing.assert_array_equal(
        np.asarray(p_full["embed"]["embedding"]), np.asarray(base["embed"]["embedding"])
    )
    assert json.loads((tmp_path / "full" / "model" / "model.json").read_text())["lora"]["rank"] == 4


@pytest.mark.parametrize(
    "arch,kw", [("llama", dict(num_key_value_heads=2)), ("qwen2", dict(num_key_value_heads=1))]
)
def test_peft_export_loads_in_peft_and_gives_our_logits(tmp_path, arch, kw):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    hf_dir = make_hf_model(str(tmp_path / "hf"), arch, **DIMS, **kw)
    ours = str(tmp_path / "ours")
    hf.import_hf(hf_dir, ours)
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg, base = checkpoint.load_model(ours, mesh)
    assert cfg.qkv_bias == (arch == "qwen2")
    spec = lora.LoraSpec(
        4, alpha=8.0, targets=peft.ALL_TARGETS if arch == "llama" else ("q_proj", "o_proj", "down_proj")
    )
    ad = _random_adapters(cfg, spec, mesh)
    peft.save_adapter(
        tmp_path / "adapter", lora.by_target(jax.device_get(ad), spec.targets), 4, 8.0, 0.0, ours
    )
    exported = str(tmp_path / "base_hf")
    hf.export_hf(ours, exported)
    if arch == "llama":  # through the command line
        from isheep_jax import cli

        args = [str(tmp_path / "adapter"), str(tmp_path / "peft"), "--base_model", exported]
        assert cli.main(["export-peft", *args]) == 0
    else:
        assert peft.export_peft(tmp_path / "adapter", tmp_path / "peft", exported) == exported
    config = json.loads((tmp_path / "peft" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["r"], config["lora_alpha"]) == ("LORA", 4, 8.0)

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32), str(tmp_path / "peft")
    ).eval()
    loaded = {k for k in model.state_dict() if "lora_" in k}
    assert len(loaded) == 2 * cfg.num_layers * len(spec.targets)
    tokens = np.random.RandomState(0).randint(3, cfg.vocab_size, size=(2, 11))
    with torch.no_grad():
        theirs = model(torch.tensor(tokens)).logits.numpy()
    mine = np.asarray(P.forward(cfg, lora.merge(base, ad, spec.scale), jnp.asarray(tokens)))
    np.testing.assert_allclose(mine, theirs, atol=1e-4, rtol=0)
    # The adapters matter: without them the logits differ.
    assert np.abs(np.asarray(P.forward(cfg, base, jnp.asarray(tokens))) - theirs).max() > 1e-2
    assert os.path.exists(tmp_path / "peft" / "adapter_model.safetensors")


@pytest.mark.fresh_compiles  # reads the compiler's memory figures
def test_plan_counts_adapters_and_their_adam_state_only(tiny_model, capsys):
    """`isheep plan` with lora_rank > 0: params are the frozen base; adapters, their moments and
    the merged kernels are exact; the compiled step's arguments are params + adapters + moments."""
    from isheep_jax import cli, plan
    from isheep_jax.training.sft_data import MODEL_KEYS

    cfg = checkpoint.load_config(tiny_model)
    spec = lora.LoraSpec(4, targets=("q_proj", "o_proj", "up_proj"))
    full = plan.make_plan(cfg, (1, 1, 1), 4, 1, 64, plan.PlanConfig())
    p = plan.make_plan(cfg, (1, 1, 1), 4, 1, 64, plan.PlanConfig(), lora_spec=spec)
    n = lora.num_trainable(cfg, spec)
    assert n == 2 * 4 * ((64 + 64) + (64 + 64) + (64 + 128))
    assert p.rows["LoRA adapters (trained)"] == 4 * n and p.rows["optimizer state"] == 8 * n
    assert p.rows["LoRA merged kernels"] == 4 * 2 * (64 * 64 + 64 * 64 + 64 * 128)
    assert p.rows["params"] == full.rows["params"] and p.train_total < full.train_total
    mesh = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    opt = make_optimizer(OptimizerConfig(), 10)
    abstract_state, _ = lora.state_shardings(cfg, spec, opt, mesh)
    batch = {k: jax.ShapeDtypeStruct((1, 4, 64), jnp.int32) for k in MODEL_KEYS}
    step = lora.compile_train_step(cfg, spec, opt, mesh, (1, 4, 64))
    measured = plan.compiler_memory(step.lower(abstract_state, P.abstract_params(cfg)[0], batch).compile())
    state = p.rows["params"] + p.rows["LoRA adapters (trained)"] + p.rows["optimizer state"]
    assert abs(measured["arguments"] - state) / state < 0.02, (measured, p.rows)
    # The command line: a LoRA run's plan says so.
    cli.main(
        [
            "plan",
            "--gin_file",
            "models/smollm2_135m.gin",
            "--gin_file",
            "meshes/v5p_8.gin",
            "--gin.TrainConfig.lora_rank=16",
            "--no_compile",
        ]
    )
    out = capsys.readouterr().out
    assert "training: LoRA rank 16, alpha 16" in out and "LoRA adapters (trained)" in out
