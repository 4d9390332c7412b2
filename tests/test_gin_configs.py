"""Gin presets parse and build the published shapes (abstractly: nothing is allocated)."""

import importlib.util
import pathlib

import gin
import jax
import pytest

from isheep_jax import plan
from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import abstract_params
from isheep_jax.parallel import sharding
from isheep_jax.training import trainer

GIN = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"
# Parameter counts as published on the models' Hugging Face pages (rounded there).
PUBLISHED = {
    "smollm2_135m": 134.5e6,
    "qwen15_0_5b": 620e6,
    "qwen15_1_8b": 1.84e9,
    "qwen15_4b": 3.95e9,
    "qwen15_7b": 7.72e9,
    "qwen15_14b": 14.2e9,
    "qwen15_32b": 32.5e9,
    "qwen15_72b": 72.3e9,
    "llama3_8b": 8.03e9,
    "llama3_70b": 70.6e9,
    "llama31_8b": 8.03e9,
    "llama31_70b": 70.6e9,
}
# Qwen1.5-0.5B's safetensors store the tied lm_head as a second copy, which its page counts.
TIED_COPY_COUNTED = {"qwen15_0_5b"}
# Exact counts known from the checkpoints' own metadata.
EXACT = {"smollm2_135m": 134_515_008, "qwen15_7b": 7_721_324_544}
# Chips per slice (a v5p-N / v4-N slice has N TensorCores, two per chip; v5e-N has N chips).
SLICES = {
    "v4_8": 4,
    "v5e_16": 16,
    "v5e_64": 64,
    "v5e_256": 256,
    "v5p_8": 4,
    "v5p_64": 32,
    "v5p_128": 64,
    "v5p_512": 256,
    "cpu8": 8,
    "h100_1": 1,
    "h100_8": 8,
}


def _parse(*files):
    gin.clear_config()
    for f in files:
        gin.parse_config_file(str(GIN / f))


def test_every_model_preset_is_checked():
    assert {p.stem for p in (GIN / "models").glob("*.gin")} == set(PUBLISHED)
    assert {p.stem for p in (GIN / "meshes").glob("*.gin")} == set(SLICES)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_presets_match_published_counts(name):
    _parse(f"models/{name}.gin")
    cfg = ModelConfig()  # every field from gin
    abstract, names = abstract_params(cfg)
    # One logical axis name per dimension of every parameter (biases of Qwen's q/k/v included).
    leaves, axis_names = (
        jax.tree.leaves(abstract),
        jax.tree.leaves(names, is_leaf=lambda x: isinstance(x, tuple)),
    )
    assert [len(n) for n in axis_names] == [x.ndim for x in leaves]
    count = sum(x.size for x in leaves)
    assert count == cfg.num_params()
    if name in EXACT:
        assert count == EXACT[name]
    stored = count + (cfg.vocab_size * cfg.hidden_size if name in TIED_COPY_COUNTED else 0)
    assert abs(stored - PUBLISHED[name]) / PUBLISHED[name] < 0.005, (name, stored)
    gin.clear_config()


def test_llama31_preset_has_llama3_rope_scaling():
    _parse("models/llama31_8b.gin")
    cfg = ModelConfig()
    assert cfg.rope_scaling_dict["rope_type"] == "llama3" and cfg.max_position_embeddings == 131072
    gin.clear_config()


@pytest.mark.parametrize("name", sorted(SLICES))
def test_mesh_presets_cover_their_slice(name):
    _parse(f"meshes/{name}.gin")
    sizes = [gin.query_parameter(f"make_mesh.{a}") for a in ("data", "fsdp", "tensor")]
    assert all(s >= 1 for s in sizes) and sizes[0] * sizes[1] * sizes[2] == SLICES[name]
    if name.startswith("h100"):  # GPU presets: the chip for the plan, cuDNN attention for training
        assert plan.PlanConfig().chip == "h100" and trainer.TrainConfig().attention_impl == "cudnn"
    elif name != "cpu8":  # each TPU preset names its chip and the topology `isheep plan` compiles for
        pc = plan.PlanConfig()
        assert name.startswith(pc.chip + "_") and pc.topology.startswith(pc.chip + ":")
        if importlib.util.find_spec("libtpu") is not None:
            assert len(plan.tpu_devices(pc.topology)) == SLICES[name]
    gin.clear_config()


def test_mesh_preset_builds_the_mesh():
    _parse("meshes/cpu8.gin")
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    gin.clear_config()
