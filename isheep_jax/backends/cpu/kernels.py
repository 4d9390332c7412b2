"""CPU kernels as XLA FFI custom calls, compiled on this machine on first use.

One kernel so far: decode attention (`decode_attention`), the part of a sampling step that
XLA:CPU runs worst. Its fused reductions read every cache slot, empty ones included, at a
fraction of memory speed; the kernel reads only the slots a row can see, on every core of
XLA's thread pool (measurements: benchmarks/HISTORY.md).

The C++ source ships with the package (`decode_attention.cc`, next to this module) and is
built with the host's C++ compiler against the installed jaxlib's FFI headers, with
`-march=native`, into `$ISHEEP_CACHE/kernels/<hash>/`; the hash covers the source, the
flags, the compiler, the jaxlib version and the CPU, so a cache shared between machines
never loads a build for another one. Where there is no compiler, or the build fails, a
warning says so once and the callers keep XLA's own formulation: the kernels are a
speed-up, never a requirement. ISHEEP_CPU_KERNELS=0 turns them off.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile

import jax
import jax.numpy as jnp

from isheep_jax.core.cache import cache_dir, check_owned_file, private_dir

log = logging.getLogger(__name__)

ENV = "ISHEEP_CPU_KERNELS"  # '0' turns the kernels off
# The kernel's C++ source, installed with the package (package data).
SOURCE = os.path.join(os.path.dirname(__file__), "decode_attention.cc")
# Associative math lets the compiler vectorise the dot products' sums: without it, the float
# additions must run in source order, one at a time.
FLAGS = (
    "-O3",
    "-march=native",
    "-fassociative-math",
    "-fno-signed-zeros",
    "-fno-trapping-math",
    "-std=c++17",
    "-shared",
    "-fPIC",
)
DECODE_ATTENTION = "isheep_decode_attention"
MAX_GROUP = 16  # query heads per kv head the kernel takes (kMaxGroup in the source)


def _cpu_id() -> str:
    """The CPU's model and feature flags (what -march=native compiles for)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [l for l in f if l.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        import platform

        return platform.processor() or platform.machine()


def _compiler() -> str:
    """$CXX, else g++ or c++ on the PATH; RuntimeError if there is none."""
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        raise RuntimeError("no C++ compiler found (install g++, or set CXX)")
    if shutil.which(cxx) is None:
        raise RuntimeError(f"the C++ compiler CXX={cxx!r} is not an executable")
    return cxx


def build(source: str = SOURCE, out_dir: str | None = None) -> str:
    """Compiles `source` into a shared library (once per machine) and returns its path.

    The library lands in `<out_dir>/<hash>/`, the hash covering the source, the flags, the
    compiler, the jaxlib version and the CPU; an existing build with the same hash is reused.

    Args:
      source: path of the C++ source file.
      out_dir: folder for the builds (default: `$ISHEEP_CACHE/kernels`).

    Returns:
      The path of the shared library (`<source name>.so`).

    Raises:
      RuntimeError: naming the problem, when there is no compiler or the build fails.
      CacheError: the cache folder or a cached build belongs to another user, or others
        can write the cached build (it is never loaded then).
    """
    import jaxlib

    cxx = _compiler()
    include = jax.ffi.include_dir()
    with open(source, "rb") as f:
        text = f.read()
    version = subprocess.run(
        [cxx, "--version"], capture_output=True, text=True, errors="replace", timeout=60
    ).stdout
    key = hashlib.sha256(
        b"\0".join(
            [
                text,
                " ".join(FLAGS).encode(),
                version.encode(),
                jaxlib.__version__.encode(),
                _cpu_id().encode(),
            ]
        )
    ).hexdigest()
    root = private_dir(out_dir or cache_dir("kernels"))
    folder = private_dir(os.path.join(root, key[:16]))
    lib = os.path.join(folder, os.path.splitext(os.path.basename(source))[0] + ".so")
    if os.path.exists(lib):
        check_owned_file(lib)
        return lib
    # Build in a private temporary folder, then rename: a process that loads the library
    # never sees a half-written file, and two processes building at once both end with a
    # whole one.
    build_dir = tempfile.mkdtemp(prefix=".build-", dir=folder)
    tmp = os.path.join(build_dir, os.path.basename(lib))
    try:
        res = subprocess.run(
            [cxx, *FLAGS, "-I", include, source, "-o", tmp],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=600,
        )
        if res.returncode:
            raise RuntimeError(f"{cxx} failed on {source}:\n{res.stderr[-2000:]}")
        os.chmod(tmp, 0o700)
        os.replace(tmp, lib)
    finally:
        shutil.rmtree(build_dir, ignore_errors=True)
    return lib


_loaded: bool | None = None  # None: `load` has not run in this process


def load() -> bool:
    """Builds (or finds) the kernels and registers them with XLA, once per process.

    Call it before tracing (the `Generator` does, on the CPU backend): the build runs the C++
    compiler, which must never happen inside a jit trace. A failed build warns once and
    leaves XLA's formulation in place: the kernels are a speed-up, never a requirement.

    Returns:
      Whether the kernels are available (False with ISHEEP_CPU_KERNELS=0, off the CPU
      backend, or when the build failed).
    """
    global _loaded
    if _loaded is not None:
        return _loaded
    _loaded = False
    if os.environ.get(ENV, "1") == "0" or jax.default_backend() != "cpu":
        return False
    try:
        lib = ctypes.cdll.LoadLibrary(build())
        jax.ffi.register_ffi_target(
            DECODE_ATTENTION, jax.ffi.pycapsule(lib.IsheepDecodeAttention), platform="cpu"
        )
    except Exception as e:  # noqa: BLE001 (a speed-up must never take the sampler down)
        log.warning("CPU kernels unavailable, using XLA's decode attention instead: %s", e)
        return False
    _loaded = True
    return True


def available() -> bool:
    """Whether `load()` has made the kernels available in this process (it never builds)."""
    return bool(_loaded)


def decode_attention_supported(q: jax.Array, k: jax.Array, v: jax.Array) -> bool:
    """Whether `decode_attention` takes these operands.

    Args:
      q: [B, T, H, D] queries.
      k: [B, K, S, D] cached keys.
      v: [B, K, S, D] cached values.

    Returns:
      True when all three are f32, T == 1 (one new token per row) and there are at most
      MAX_GROUP query heads per kv head.
    """
    return (
        all(a.dtype == jnp.float32 for a in (q, k, v))
        and q.shape[2] // k.shape[1] <= MAX_GROUP
        and q.shape[1] == 1
    )


def decode_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
    """Decode attention through the C++ kernel: one new query token per row against the cache.

    Equals `layers._decode_attention` on every row with a visible slot; a row with none gets
    zeros (XLA's softmax would average all of v; the sampler never has such a row).

    Only for the CPU: callers choose it with `jax.lax.platform_dependent`, once `available()`
    (and `decode_attention_supported`).

    Args:
      q: [B, 1, H, D] f32 queries of the new token.
      k: [B, K, S, D] f32 cached keys (K kv heads, S slots).
      v: [B, K, S, D] f32 cached values.
      mask: [B, 1, 1, S] bool, True on the slots each row may attend to.

    Returns:
      [B, 1, H, D] f32 attention output.
    """
    b, _, h, d = q.shape
    kvh, s = k.shape[1], k.shape[2]
    out = jax.ffi.ffi_call(
        DECODE_ATTENTION, jax.ShapeDtypeStruct((b, kvh, h // kvh, d), jnp.float32), vmap_method="sequential"
    )(q.reshape(b, kvh, h // kvh, d), k, v, mask.reshape(b, s))
    return out.reshape(b, 1, h, d)
