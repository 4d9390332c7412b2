"""Host allocator settings for the CPU backend: keep freed memory instead of unmapping it.

XLA:CPU allocates each execution's temporary buffer (gigabytes for a train step) through
`posix_memalign` on a worker thread. glibc serves a block that large from a fresh `mmap` and
unmaps it when the step ends, so every step would first-touch all of it again (a page
fault for every page of the block, on every step). The settings keep it: one malloc arena
(worker threads would otherwise get arenas that cannot hold such blocks and fall back to
`mmap`), no `mmap` for large blocks, no trimming of the heap's top. Freed blocks then stay
in the process and the next step reuses them.

A retained heap can still grow when a step finds no free block that fits. Two causes are
handled for training: restored arrays that the runtime cannot donate
(`training.train_step.owned_state`), and a step that asks for its block before XLA has freed
the last one, shortly after the outputs are readable (`wait_until_freed`). Long loops also
hand the free pages back once the host runs short (`release_if_memory_low`), and between
phases that allocate differently (`release_free_memory`), after dropping the compiled
programs that the last phase's executables hold in host memory (`drop_compiled_programs`).
`HostMemoryHooks` attaches all of this to the trainer, the generator and the loop
(`core.hooks`); the `isheep` command and the benchmarks install it. Measurements: benchmarks/HISTORY.md.

The settings take effect only if set before JAX starts its thread pools (before the first
computation), and only for glibc. They are applied for CPU runs only (`wanted`): on an
accelerator host the big buffers live on the device, and a single arena would serialise
the many threads of the input pipeline and checkpoint I/O.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import glob
import logging
import os
import platform
import sys
import time
from collections.abc import Mapping

from isheep_jax.core import hooks

log = logging.getLogger(__name__)

ENV = "ISHEEP_HOST_MALLOC"  # 'retain' | 'system' | unset (auto, see `wanted`)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_applied = False
_released = False  # release_if_memory_low has released at least once
_hooks: HostMemoryHooks | None = None  # install_hooks's, once installed


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def accelerator_present() -> bool:
    """A TPU (/dev/accel*, /dev/vfio/N) or NVIDIA GPU (/dev/nvidiaN) device node: what JAX would use."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"))


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process should retain freed memory.

    ISHEEP_HOST_MALLOC=retain|system decides; unset: yes when JAX_PLATFORMS is 'cpu', or,
    JAX_PLATFORMS unset, when the host has no TPU or GPU device node (JAX will run on the CPU).

    Args:
      environ: the environment to read (default: `os.environ`).

    Returns:
      True to retain freed memory.

    Raises:
      ValueError: ISHEEP_HOST_MALLOC is set to something other than 'retain' or 'system'.
    """
    env = os.environ if environ is None else environ
    mode = env.get(ENV, "").strip().lower()
    if mode not in ("", "retain", "system"):
        raise ValueError(f"{ENV} must be 'retain' or 'system', got {env[ENV]!r}")
    if mode:
        return mode == "retain"
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not accelerator_present()


def retain_freed_memory() -> bool:
    """Applies the settings above to this process (glibc only; idempotent).

    Call it before anything runs a JAX computation.

    Returns:
      Whether the settings are in effect (False off Linux/glibc or when mallopt refuses them).
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    if _jax_started():
        # Too late to help (the thread pools and their arenas exist), and one arena without
        # mmap for a process that already holds gigabytes only makes every trim slower: e.g.
        # `cli.main` called in a process that has been computing.
        log.info("JAX already runs in this process: the host-memory settings are not applied")
        return False
    # M_TRIM_THRESHOLD takes an int; -1 becomes SIZE_MAX inside glibc: never trim.
    ok = all(
        _libc().mallopt(param, value) == 1
        for param, value in ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))
    )
    if not ok:
        log.warning("mallopt refused the host-memory settings; XLA:CPU steps will page-fault their buffers")
        return False
    _applied = True
    return True


def _jax_started() -> bool:
    """Whether JAX has created its backends, and so its thread pools, in this process."""
    bridge = sys.modules.get("jax._src.xla_bridge")  # JAX has no public name for this
    started = getattr(bridge, "backends_are_initialized", None)
    return bool(started and started())


def release_free_memory() -> None:
    """Hands the heap's free pages back to the OS (glibc `malloc_trim(0)`; interior free chunks too).

    A no-op unless `retain_freed_memory` is in effect; call it between phases.
    """
    if _applied:
        gc.collect()  # drop unreferenced arrays first, so their buffers are free to hand back
        _libc().malloc_trim(0)


def drop_compiled_programs() -> None:
    """Clears JAX's in-memory caches of compiled programs (`jax.clear_caches`), if JAX is loaded.

    An XLA:CPU executable keeps its code and constants in host memory: tens of MB for each
    sampling program of the demo's 135M model, whose stages had compiled 1.6 GB of them by
    iteration 1's training (benchmarks/HISTORY.md). A later stage that needs a program again
    reads it from the persistent compilation cache (`isheep` enables one) or compiles it.
    """
    jax = sys.modules.get("jax")
    if jax is not None:
        jax.clear_caches()


def memory_low(meminfo: Mapping[str, int], fraction: float = 0.25, floor: int = 2 << 30) -> bool:
    """Whether the host is short of memory.

    Args:
      meminfo: /proc/meminfo fields in bytes (`read_meminfo`).
      fraction: memory is low below this fraction of MemTotal.
      floor: memory is low below this many bytes, whatever `fraction` gives.

    Returns:
      Whether available memory (MemAvailable) is below max(fraction * MemTotal, floor). A
      meminfo without the two fields (not Linux) is never low.
    """
    if "MemAvailable" not in meminfo or "MemTotal" not in meminfo:
        return False
    return meminfo["MemAvailable"] < max(fraction * meminfo["MemTotal"], floor)


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """Reads /proc/meminfo.

    Args:
      path: the file to read.

    Returns:
      Bytes per field name (kB values converted); {} where it cannot be read.
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError:
        return {}
    out = {}
    for line in lines:
        name, _, rest = line.partition(":")
        fields = rest.split()
        if fields and fields[0].isdigit():
            out[name] = int(fields[0]) * (1024 if fields[1:] == ["kB"] else 1)
    return out


def release_if_memory_low() -> bool:
    """`release_free_memory()` when `memory_low(read_meminfo())` (see the module docstring).

    A no-op (False) unless `retain_freed_memory` is in effect; cheap enough to call after
    every step (one read of /proc/meminfo).

    Returns:
      Whether it released.
    """
    global _released
    if not _applied or not memory_low(read_meminfo()):
        return False
    # Once at INFO: on a host short of memory this runs after every step.
    log.log(
        logging.DEBUG if _released else logging.INFO,
        "host memory low: handing the heap's free pages back to the OS (again each time it is low)",
    )
    _released = True
    release_free_memory()
    return True


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


@functools.cache
def _mallinfo2():
    """glibc's `mallinfo2` (2.33+), or None."""
    fn = getattr(_libc(), "mallinfo2", None)
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_in_use() -> int:
    """Bytes the heap has handed out (glibc `mallinfo2().uordblks`).

    Its cost grows with the heap: glibc walks the free chunks to compute it.

    Returns:
      The bytes in use; 0 unless the retained heap is in effect (or without `mallinfo2`).
    """
    fn = _mallinfo2() if _applied else None
    return int(fn().uordblks) if fn is not None else 0


def wait_until_freed(in_use_before: int, slack: int = 64 << 20, timeout: float = 0.25) -> bool:
    """Waits until the heap's in-use bytes are back within `slack` of `in_use_before`.

    `in_use_before` is taken just before a step was dispatched (`heap_in_use`). XLA:CPU
    frees an execution's temporary block on a worker thread shortly after its outputs are
    readable. A step dispatched in between asks for its own block while the last one is
    still held, and the retained heap grows by a whole block. A no-op (True) unless the
    retained heap is in effect; gives up after `timeout` seconds (other threads, such as a
    checkpoint being written, may hold memory of their own).

    Args:
      in_use_before: `heap_in_use()` just before the step was dispatched.
      slack: bytes above `in_use_before` that count as freed.
      timeout: seconds to wait at most.

    Returns:
      Whether the heap came back within `slack`.
    """
    if not _applied or _mallinfo2() is None:
        return True
    deadline = time.monotonic() + timeout
    while heap_in_use() > in_use_before + slack:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def configure_from_env() -> bool:
    """`retain_freed_memory()` if `wanted()`: what the `isheep` command and the benchmarks call first.

    Returns:
      Whether the retained heap is in effect.

    Raises:
      ValueError: ISHEEP_HOST_MALLOC has an invalid value (`wanted`).
    """
    return retain_freed_memory() if wanted() else False


class HostMemoryHooks(hooks.Hooks):
    """The retained heap's upkeep around the trainer's steps, the generator's batches and the
    loop's stages: wait for a step's temporaries to be freed before the next step asks for its
    own, hand free pages back when the host runs short, and between stages."""

    def __init__(self) -> None:
        self._in_use = 0

    def before_train_step(self) -> None:
        """Records the heap's in-use bytes before the step is dispatched."""
        self._in_use = heap_in_use()

    def after_train_step(self) -> None:
        """Waits for the step's temporary block to be freed; releases pages if memory is low."""
        wait_until_freed(self._in_use)
        release_if_memory_low()

    def after_sampling_batch(self) -> None:
        """Releases free pages if memory is low."""
        release_if_memory_low()  # batches of other shapes fragment a retained heap

    def between_stages(self) -> None:
        """Drops the compiled programs and releases free pages: the next stage compiles and
        allocates differently."""
        drop_compiled_programs()
        release_free_memory()

    def after_release(self) -> None:
        """Releases free pages: the buffers just let go would otherwise stay in the process."""
        release_free_memory()


def install_hooks() -> HostMemoryHooks | None:
    """`configure_from_env()`, and where the retained heap is in effect, `HostMemoryHooks` installed.

    The hooks go to `core.hooks`. Call it first thing in a process.

    Returns:
      The installed hooks, or None where the retained heap is not in effect.
    """
    global _hooks
    if not configure_from_env():
        return None
    if _hooks is None:  # once per process, however often the command runs in it
        _hooks = HostMemoryHooks()
        hooks.install(_hooks)
    return _hooks
