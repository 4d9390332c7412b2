"""The CPU decode-attention kernel against XLA's formulation, and where it is (not) used."""

import os
import stat

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from isheep_jax.backends.cpu import kernels
from isheep_jax.core.cache import CacheError
from isheep_jax.model import layers
from isheep_jax.parallel import sharding

pytestmark = pytest.mark.skipif(not kernels.load(), reason="CPU kernels did not build here")


def _operands(rng, b, kvh, g, s, d, mask):
    q = jnp.asarray(rng.standard_normal((b, 1, kvh * g, d), np.float32))
    k = jnp.asarray(rng.standard_normal((b, kvh, s, d), np.float32))
    v = jnp.asarray(rng.standard_normal((b, kvh, s, d), np.float32))
    return q, k, v, jnp.asarray(mask)[:, None, None, :]


@pytest.mark.parametrize("kvh,g,d", [(3, 3, 64), (2, 1, 16), (1, 8, 128), (4, 16, 32)])
def test_kernel_equals_xla_decode_attention(kvh, g, d):
    """Left padding, an unfilled tail, holes, a single visible slot: the kernel reads only
    the visible slots and must give what the full masked softmax gives."""
    rng = np.random.default_rng(g * d)
    b, s = 6, 40
    slots = np.arange(s)[None]
    mask = (slots >= np.array([0, 5, 17, 0, 39, 3])[:, None]) & (
        slots < np.array([40, 30, 18, 1, 40, 25])[:, None]
    )
    mask[5, 10:20] = False  # a hole inside the row
    q, k, v, m = _operands(rng, b, kvh, g, s, d, mask)
    # Garbage in the masked slots must not leak in (NaN would show through any weight).
    k = jnp.where(m[:, :, 0, :, None], k, jnp.nan)
    v = jnp.where(m[:, :, 0, :, None], v, jnp.nan)
    want = jax.jit(layers._decode_attention)(q, jnp.nan_to_num(k), jnp.nan_to_num(v), m)
    got = jax.jit(kernels.decode_attention)(q, k, v, m)
    assert got.shape == want.shape == (b, 1, kvh * g, d)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=2e-5, atol=2e-6)


def test_a_row_with_no_visible_slot_gets_zeros():
    rng = np.random.default_rng(0)
    mask = np.ones((2, 8), bool)
    mask[1] = False
    out = np.asarray(kernels.decode_attention(*_operands(rng, 2, 1, 2, 8, 16, mask)))
    assert np.all(out[1] == 0) and np.all(np.isfinite(out[0])) and np.any(out[0] != 0)


def _lowered(fn, *args, platforms=None):
    jitted = jax.jit(fn)
    if platforms:
        return jitted.trace(*args).lower(lowering_platforms=platforms).as_text()
    return jitted.lower(*args).as_text()


def test_attention_uses_the_kernel_on_one_cpu_device_only():
    rng = np.random.default_rng(1)
    q, k, v, m = _operands(rng, 2, 3, 3, 16, 64, np.ones((2, 16), bool))
    assert kernels.DECODE_ATTENTION in _lowered(layers.attention, q, k, v, m)
    # Other platforms (an AOT lowering for TPU from this host) get XLA's formulation.
    assert kernels.DECODE_ATTENTION not in _lowered(layers.attention, q, k, v, m, platforms=("tpu",))
    # Not the kernel's: bf16 operands; a causal forward of one token (training, scoring);
    # several queries (prefill); more than 16 query heads per kv head.
    assert kernels.DECODE_ATTENTION not in _lowered(
        layers.attention, q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), m
    )
    assert kernels.DECODE_ATTENTION not in _lowered(lambda *a: layers.attention(*a, causal=True), q, k, v, m)
    q4 = jnp.concatenate([q] * 4, axis=1)
    assert kernels.DECODE_ATTENTION not in _lowered(layers.attention, q4, k, v, jnp.ones((2, 1, 4, 16), bool))
    wide = jnp.ones((2, 1, 17, 64), jnp.float32)
    assert kernels.DECODE_ATTENTION not in _lowered(layers.attention, wide, k[:, :1], v[:, :1], m)
    if len(jax.devices()) > 1:  # a mesh: the custom call has no partitioning rule
        with sharding.activation_sharding(sharding.make_mesh()):  # (a new function: a new trace)
            assert kernels.DECODE_ATTENTION not in _lowered(lambda *a: layers.attention(*a), q, k, v, m)


def test_build_is_cached_and_a_failing_compiler_is_a_clear_error(tmp_path, monkeypatch):
    first = kernels.build(out_dir=str(tmp_path))
    assert kernels.build(out_dir=str(tmp_path)) == first
    bad = tmp_path / "broken.cc"
    bad.write_text("this is not C++\n")
    with pytest.raises(RuntimeError, match="failed on .*broken.cc"):
        kernels.build(str(bad), out_dir=str(tmp_path))
    assert [p.name for p in (tmp_path).rglob("*.so")] == ["decode_attention.so"]  # no half-written file
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    with pytest.raises(RuntimeError, match="no-such-compiler' is not an executable"):
        kernels.build(out_dir=str(tmp_path / "other"))


def test_one_token_training_forward_stays_differentiable_and_the_kernel_vmaps():
    rng = np.random.default_rng(2)
    q, k, v, m = _operands(rng, 2, 1, 2, 1, 16, np.ones((2, 1), bool))
    grad = jax.grad(lambda q: layers.attention(q, k, v, m, causal=True).sum())(q)
    assert grad.shape == q.shape and np.all(np.isfinite(np.asarray(grad)))
    q, k, v, m = _operands(rng, 3, 2, 2, 8, 16, np.ones((3, 8), bool))
    batched = jax.vmap(kernels.decode_attention, in_axes=(None, 0, 0, None))(
        q, jnp.stack([k, v]), jnp.stack([v, k]), m
    )
    np.testing.assert_allclose(
        np.asarray(batched[1]), np.asarray(layers._decode_attention(q, v, k, m)), rtol=2e-5, atol=2e-6
    )


def test_tracing_never_builds_the_kernel(monkeypatch):
    """The build runs the C++ compiler: it belongs before tracing (`load`), never inside it.
    A process that has not loaded the kernels traces XLA's formulation and builds nothing."""
    builds = []
    monkeypatch.setattr(kernels, "_loaded", None)  # as in a fresh process
    monkeypatch.setattr(kernels, "build", lambda *a, **k: builds.append(1))
    rng = np.random.default_rng(0)
    q, k, v, m = _operands(rng, 2, 1, 2, 8, 16, np.ones((2, 8), bool))
    assert not kernels.available()
    jax.clear_caches()  # a fresh trace: the choice of attention is made while tracing
    assert kernels.DECODE_ATTENTION not in _lowered(layers.attention, q, k, v, m)
    assert builds == []


def test_kernel_cache_is_private_and_a_tampered_build_is_never_loaded(tmp_path):
    lib = kernels.build(out_dir=str(tmp_path / "k"))
    folder = os.path.dirname(lib)
    assert [stat.S_IMODE(os.stat(p).st_mode) & 0o077 for p in (tmp_path / "k", folder)] == [0, 0]
    assert os.listdir(folder) == [os.path.basename(lib)]  # the private build folder is gone
    os.chmod(lib, 0o777)  # as if someone else could have replaced it
    with pytest.raises(CacheError, match="writable by group or others"):
        kernels.build(out_dir=str(tmp_path / "k"))
