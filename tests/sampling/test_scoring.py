"""Prefill-only scoring (`Generator.score`) against a full forward of prompt + forced tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax.model import checkpoint
from isheep_jax.model import params as P
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.parallel import sharding
from isheep_jax.sampling.generator import Generator


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("scoring")
    hf_dir = make_hf_model(str(root / "hf"), "llama", num_key_value_heads=2, eos_token_id=None)
    hf.import_hf(hf_dir, str(root / "ours"))
    cfg, params = checkpoint.load_model(str(root / "ours"))
    return cfg, params, Tokenizer(hf_dir)


def _prompts(shared: int) -> list[list[int]]:
    rng = np.random.RandomState(0)
    head = rng.randint(5, 300, size=shared).tolist()
    return [head + rng.randint(5, 300, size=k).tolist() for k in (1, 30, 4, 17, 9, 2, 40)]


def _full_forward_logprobs(cfg, params, prompt, forced, select):
    seq = jnp.asarray([prompt + forced])
    logp = jax.nn.log_softmax(P.forward(cfg, params, seq)[0], axis=-1)
    n = len(prompt)
    return np.asarray([[float(logp[n - 1 + j, t]) for t in select] for j in range(len(forced) + 1)])


@pytest.mark.parametrize("shared", [0, 40], ids=["own", "shared_prefix"])
@pytest.mark.parametrize("forced", [(), (7,), (7, 11)], ids=["none", "one", "two"])
def test_score_equals_the_full_forward(tiny, shared, forced):
    """Each prompt's selected log-probs at its end and after each forced token equal a full
    forward's, whatever the batching (3 per batch here), padding and shared prefix."""
    cfg, params, tok = tiny
    prompts, select = _prompts(shared), [3, 7, 11, 250]
    got = Generator(cfg, params, tok).score(prompts, select, forced, batch_size=3, progress=False)
    assert got.shape == (len(prompts), len(forced) + 1, len(select))
    for prompt, row in zip(prompts, got):
        np.testing.assert_allclose(
            row, _full_forward_logprobs(cfg, params, prompt, list(forced), select), atol=2e-5
        )


def test_score_on_a_mesh_equals_one_device(tiny):
    cfg, params, tok = tiny
    prompts, select = _prompts(40), [3, 7, 11]
    one = sharding.make_mesh(1, 1, 1, devices=jax.devices()[:1])
    ref = Generator(cfg, jax.device_put(params, sharding.replicated(one)), tok, mesh=one).score(
        prompts, select, (7,), progress=False
    )
    for shape in ((8, 1, 1), (2, 2, 2)):
        mesh = sharding.make_mesh(*shape)
        gen = Generator(cfg, jax.device_put(params, P.param_shardings(cfg, mesh)), tok, mesh=mesh)
        np.testing.assert_allclose(gen.score(prompts, select, (7,), progress=False), ref, atol=2e-5)


def test_score_rejects_bad_token_ids_and_empty_prompts(tiny):
    cfg, params, tok = tiny
    gen = Generator(cfg, params, tok)
    with pytest.raises(ValueError, match="select must be"):
        gen.score([[5, 6]], [cfg.vocab_size], progress=False)
    with pytest.raises(ValueError, match="select must be"):
        gen.score([[5, 6]], [], progress=False)
    with pytest.raises(ValueError, match="empty"):
        gen.score([[]], [3], progress=False)
    assert gen.score([], [3], progress=False).shape == (0, 1, 1)
