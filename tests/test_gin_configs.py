"""Gin presets parse and build the published shapes (abstractly: nothing is allocated)."""

import pathlib

import gin
import jax
import pytest

from isheep_jax import sharding
from isheep_jax.config import ModelConfig
from isheep_jax.params import abstract_params

GIN = pathlib.Path(__file__).resolve().parents[1] / "gin_configs"
# Published parameter counts (embedding counted once when tied).
PUBLISHED = {"smollm2_135m": 134_515_008, "qwen15_7b": 7_721_324_544}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_model_presets_match_published_counts(name):
    gin.clear_config()
    gin.parse_config_file(str(GIN / "models" / f"{name}.gin"))
    cfg = ModelConfig()  # every field from gin
    abstract, _ = abstract_params(cfg)
    assert sum(x.size for x in jax.tree.leaves(abstract)) == cfg.num_params() == PUBLISHED[name]
    gin.clear_config()


def test_mesh_preset_builds_the_mesh():
    gin.clear_config()
    gin.parse_config_file(str(GIN / "meshes" / "cpu8.gin"))
    mesh = sharding.make_mesh()
    assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
    gin.clear_config()
