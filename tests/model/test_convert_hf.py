"""Hugging Face import/export against transformers, mesh sharding, and bad inputs."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from helpers import make_hf_model

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.config import ConfigError, ModelConfig
from isheep_jax.model.convert import hf
from isheep_jax.model.convert.safetensors_io import SafetensorsError
from isheep_jax.parallel import sharding

LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 32,
}
CASES = {
    "llama-untied-kv4": ("llama", dict(num_key_value_heads=4)),
    "llama-tied-kv1-rope3": (
        "llama",
        dict(num_key_value_heads=1, tie_word_embeddings=True, rope_scaling=dict(LLAMA3_ROPE)),
    ),
    "llama-bias-kv2": ("llama", dict(num_key_value_heads=2, attention_bias=True)),
    "qwen2-tied-kv2": ("qwen2", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2-untied-kv1": ("qwen2", dict(num_key_value_heads=1)),
}
LENGTHS = (1, 7, 33, 400)  # 400 > 8 x original context of the llama3-scaled case's window


def _prompts(vocab: int, length: int, batch: int = 2) -> np.ndarray:
    return np.random.RandomState(length).randint(3, vocab, size=(batch, length))


def _torch_logits(model, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor(tokens)).logits.numpy()


@pytest.fixture(scope="module", params=sorted(CASES))
def converted(request, tmp_path_factory):
    arch, kw = CASES[request.param]
    root = tmp_path_factory.mktemp(request.param)
    hf_dir = make_hf_model(str(root / "hf"), arch, **kw)
    hf.import_hf(hf_dir, str(root / "ours"))
    return hf_dir, str(root / "ours")


def test_logits_match_transformers(converted):
    from transformers import AutoModelForCausalLM

    hf_dir, ours = converted
    ref_model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    cfg, params = checkpoint.load_model(ours)
    fwd = jax.jit(lambda p, t: P.forward(cfg, p, t))
    for length in LENGTHS:
        tokens = _prompts(cfg.vocab_size, length)
        np.testing.assert_allclose(
            np.asarray(fwd(params, jnp.asarray(tokens))),
            _torch_logits(ref_model, tokens),
            atol=1e-4,
            rtol=0,
            err_msg=f"length {length}",
        )


def test_export_loads_in_transformers_and_roundtrips_bit_identical(converted, tmp_path):
    from transformers import AutoModelForCausalLM

    hf_dir, ours = converted
    exported = str(tmp_path / "exported")
    hf.export_hf(ours, exported)
    ref = _torch_logits(
        AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval(), _prompts(320, 9)
    )
    back = _torch_logits(
        AutoModelForCausalLM.from_pretrained(exported, dtype=torch.float32).eval(), _prompts(320, 9)
    )
    np.testing.assert_allclose(back, ref, atol=1e-5, rtol=0)

    hf.import_hf(exported, str(tmp_path / "again"))
    cfg1, p1 = checkpoint.load_model(ours)
    cfg2, p2 = checkpoint.load_model(str(tmp_path / "again"))
    assert cfg1 == cfg2
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p2)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert os.path.exists(os.path.join(exported, "tokenizer.json"))


def test_export_shards_large_models(converted, tmp_path):
    _, ours = converted
    hf.export_hf(ours, str(tmp_path / "sharded"), max_shard_bytes=64 * 1024)
    index = json.loads((tmp_path / "sharded" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1
    hf.import_hf(str(tmp_path / "sharded"), str(tmp_path / "back"))
    _, p1 = checkpoint.load_model(ours)
    _, p2 = checkpoint.load_model(str(tmp_path / "back"))
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)), p1, p2)


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (1, 8, 1), (2, 2, 2), (1, 2, 4)])
def test_sharded_forward_equals_single_device(tmp_path_factory, mesh_shape):
    assert jax.device_count() == 8, "tests need XLA_FLAGS=--xla_force_host_platform_device_count=8"
    root = tmp_path_factory.mktemp("mesh")
    hf_dir = make_hf_model(
        str(root / "hf"),
        "llama",
        num_attention_heads=8,
        num_key_value_heads=4,
        hidden_size=64,
        intermediate_size=128,
    )
    hf.import_hf(hf_dir, str(root / "ours"))
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    cfg, p1 = checkpoint.load_model(str(root / "ours"), mesh=one)
    tokens = jnp.asarray(_prompts(cfg.vocab_size, 16, batch=8))
    ref = np.asarray(jax.jit(lambda p, t: P.forward(cfg, p, t))(p1, tokens))

    mesh = sharding.make_mesh(*mesh_shape)
    _, p8 = checkpoint.load_model(str(root / "ours"), mesh=mesh)
    with sharding.activation_sharding(mesh):
        out = jax.jit(lambda p, t: P.forward(cfg, p, t))(
            p8, jax.device_put(tokens, sharding.logical_to_sharding(("batch", "length"), tokens.shape, mesh))
        )
    np.testing.assert_allclose(np.asarray(out), ref, atol=2e-5, rtol=0)

    data, fsdp, tensor = mesh_shape
    q = p8["layers"]["attn"]["q_proj"]["kernel"]  # [L, E, H, D] = [2, 64, 8, 8]
    assert q.addressable_shards[0].data.shape == (2, 64 // fsdp, 8 // tensor, 8)
    up = p8["layers"]["mlp"]["up_proj"]["kernel"]  # [L, E, F]
    assert up.addressable_shards[0].data.shape == (2, 64 // fsdp, 128 // tensor)
    emb = p8["embed"]["embedding"]  # [V, E]
    assert emb.addressable_shards[0].data.shape == (320 // tensor, 64 // fsdp)


def test_init_params_are_created_sharded():
    cfg = ModelConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        head_dim=8,
    )
    mesh = sharding.make_mesh(1, 4, 2)
    params = P.init_params(cfg, mesh)
    k = params["layers"]["attn"]["k_proj"]["kernel"]  # [2, 32, 2, 8]
    assert k.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor", None)
    assert k.addressable_shards[0].data.shape == (2, 8, 1, 8)
    assert sum(x.size for x in jax.tree.leaves(params)) == cfg.num_params()


def test_mesh_errors():
    with pytest.raises(ValueError, match="needs 6 devices"):
        sharding.make_mesh(2, 3, 1)
    with pytest.raises(ValueError, match="at most one"):
        sharding.make_mesh(-1, -1, 1)


# ----------------------------------------------------------------------------- bad inputs
@pytest.fixture()
def hf_folder(tmp_path):
    return make_hf_model(str(tmp_path / "hf"), "llama")


def test_truncated_safetensors_names_file(hf_folder, tmp_path):
    path = os.path.join(hf_folder, "model.safetensors")
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) - 1000)
    with pytest.raises(SafetensorsError, match=r"model\.safetensors: truncated"):
        hf.import_hf(hf_folder, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out")


def test_missing_config_field_is_named(hf_folder, tmp_path):
    cfg_path = os.path.join(hf_folder, "config.json")
    d = json.load(open(cfg_path))
    del d["hidden_size"]
    json.dump(d, open(cfg_path, "w"))
    with pytest.raises(ConfigError, match=r"config\.json: missing required field 'hidden_size'"):
        hf.import_hf(hf_folder, str(tmp_path / "out"))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"architectures": ["MistralForCausalLM"]}, "unsupported architectures.*MistralForCausalLM"),
        ({"sliding_window": 4096}, "unsupported config fields: sliding_window=4096"),
        ({"num_local_experts": 8}, "mixture of experts"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope scaling type 'yarn'"),
    ],
)
def test_unsupported_configs_are_refused(hf_folder, tmp_path, change, message):
    cfg_path = os.path.join(hf_folder, "config.json")
    d = json.load(open(cfg_path))
    d.pop("rope_parameters", None)
    d.update(change)
    json.dump(d, open(cfg_path, "w"))
    with pytest.raises(ConfigError, match=message):
        hf.import_hf(hf_folder, str(tmp_path / "out"))


def test_pickle_checkpoints_are_refused(hf_folder, tmp_path):
    os.remove(os.path.join(hf_folder, "model.safetensors"))
    open(os.path.join(hf_folder, "pytorch_model.bin"), "wb").write(b"\x80\x04")
    with pytest.raises(SafetensorsError, match="pickle checkpoints.*pytorch_model.bin"):
        hf.import_hf(hf_folder, str(tmp_path / "out"))


def test_weights_disagreeing_with_config_are_refused(hf_folder, tmp_path):
    cfg_path = os.path.join(hf_folder, "config.json")
    d = json.load(open(cfg_path))
    d["intermediate_size"] = 100
    json.dump(d, open(cfg_path, "w"))
    with pytest.raises(ConfigError, match="gate_proj.weight.*config.json and weights disagree"):
        hf.import_hf(hf_folder, str(tmp_path / "out"))


def test_incomplete_checkpoint_is_refused(hf_folder, tmp_path):
    out = str(tmp_path / "out")
    hf.import_hf(hf_folder, out)
    os.remove(os.path.join(out, "model.json"))
    with pytest.raises(checkpoint.CheckpointError, match="incomplete checkpoint"):
        checkpoint.load_model(out)


def test_config_json_roundtrip():
    cfg = ModelConfig(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=4,
        rope_scaling=tuple(sorted(LLAMA3_ROPE.items())),
        eos_token_ids=(2, 3),
    )
    assert ModelConfig.from_json_dict(cfg.to_json_dict()) == cfg
    assert ModelConfig.from_hf_dict(cfg.to_hf_dict()).replace() == cfg
    with pytest.raises(ConfigError, match="unknown fields"):
        ModelConfig.from_json_dict({**cfg.to_json_dict(), "bogus": 1})
