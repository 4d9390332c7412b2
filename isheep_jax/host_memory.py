"""Host allocator settings for the CPU backend: keep freed memory instead of unmapping it.

XLA:CPU allocates each execution's temporary buffer (2 GB for a 6-layer SmolLM2 train step
at 8 x 256 tokens, ~6.5 GB for the 30-layer model) through `posix_memalign` on one of its
worker threads. glibc serves a block that large from a fresh `mmap` and returns it with
`munmap` when the step ends, so every step first-touches all of it again: 1.6 M page faults
and ~4 s of kernel time per SmolLM2-135M train step on the project's CPU machine (12.0 s
per step with the settings below against 14.0 s without). The settings: one malloc arena
(worker threads would otherwise get arenas that cannot hold such blocks and fall back to
`mmap`), no `mmap` for large blocks, no trimming of the heap's top. Freed blocks then stay
in the process and the next step reuses them. (The heap first grows for a few steps, to the
size that fits XLA's allocation order despite fragmentation; steps after that fault nothing.)
That order is not fixed (XLA's threads allocate concurrently), so now and then a step finds
no free block that fits and the heap grows by a whole temporary buffer again: a SmolLM2-135M
train step went 8.6 -> 14.3 -> 20.2 GB over 6 steps, and the next growth killed the process
on a 24 GB host. Two causes are handled for training: the first step writing restored arrays
that the runtime cannot donate to fresh buffers above the temporary block
(`train_step.owned_state`), and the next step asking for its block before XLA has freed the
last one, a few ms after the outputs are readable (`wait_until_freed`). Long loops also
call `release_if_memory_low()` after each step: once the host's available memory falls
below a margin (`memory_low`) it hands the free pages back, at the cost of one step's
page faults, instead of growing into the OOM killer.
Between phases that allocate differently (sampling, training, the torch side of a
benchmark) `release_free_memory()` hands the free pages back, so one phase's freed blocks
do not add to the next one's footprint.

They take effect only if set before JAX starts its thread pools (before the first
computation), and only for glibc. We apply them for CPU runs only: on an accelerator host
the big buffers live on the device, and a single arena would serialise the many threads
of the input pipeline and checkpoint I/O.
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
import time
from typing import Mapping

log = logging.getLogger(__name__)

ENV = "ISHEEP_HOST_MALLOC"  # 'retain' | 'system' | unset (auto, see `wanted`)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8  # glibc <malloc.h>
_applied = False
_released = False  # release_if_memory_low has released at least once


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def _accelerator_present() -> bool:
    """A TPU (/dev/accel*, /dev/vfio/N) or NVIDIA GPU (/dev/nvidiaN) device node: what JAX would use."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*") or glob.glob("/dev/nvidia[0-9]*"))


def wanted(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process should retain freed memory. ISHEEP_HOST_MALLOC=retain|system
    decides; unset: yes when JAX_PLATFORMS is 'cpu', or, JAX_PLATFORMS unset, when the host
    has no TPU or GPU device node (JAX will run on the CPU)."""
    env = os.environ if environ is None else environ
    mode = env.get(ENV, "").strip().lower()
    if mode not in ("", "retain", "system"):
        raise ValueError(f"{ENV} must be 'retain' or 'system', got {env[ENV]!r}")
    if mode:
        return mode == "retain"
    platforms = env.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not _accelerator_present()


def retain_freed_memory() -> bool:
    """Applies the settings above to this process (glibc only; idempotent). Returns whether
    they are in effect. Call it before anything runs a JAX computation."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or not platform.libc_ver()[0] == "glibc":
        return False
    # M_TRIM_THRESHOLD takes an int; -1 becomes SIZE_MAX inside glibc: never trim.
    ok = all(_libc().mallopt(param, value) == 1 for param, value in
             ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1)))
    if not ok:
        log.warning("mallopt refused the host-memory settings; XLA:CPU steps will page-fault their buffers")
        return False
    _applied = True
    return True


def release_free_memory() -> None:
    """Returns the heap's free pages to the OS (glibc `malloc_trim(0)`; interior free chunks
    too). A no-op unless `retain_freed_memory` is in effect; call it between phases."""
    if _applied:
        gc.collect()  # drop unreferenced arrays first, so their buffers are free to hand back
        _libc().malloc_trim(0)


def memory_low(meminfo: Mapping[str, int], fraction: float = 0.25, floor: int = 2 << 30) -> bool:
    """Whether available memory (bytes; /proc/meminfo's MemAvailable) is below `fraction`
    of MemTotal or below `floor` bytes, whichever is larger. A meminfo without the two
    fields (not Linux) is never low."""
    if "MemAvailable" not in meminfo or "MemTotal" not in meminfo:
        return False
    return meminfo["MemAvailable"] < max(fraction * meminfo["MemTotal"], floor)


def read_meminfo(path: str = "/proc/meminfo") -> dict[str, int]:
    """/proc/meminfo as bytes per field ({} where it cannot be read)."""
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
    """`release_free_memory()` when `memory_low(read_meminfo())` (see the module docstring);
    returns whether it released. A no-op (False) unless `retain_freed_memory` is in effect;
    cheap enough to call after every step (one read of /proc/meminfo)."""
    global _released
    if not _applied or not memory_low(read_meminfo()):
        return False
    # Once at INFO: on a host short of memory this runs after every step.
    log.log(logging.DEBUG if _released else logging.INFO,
            "host memory low: handing the heap's free pages back to the OS (again each time it is low)")
    _released = True
    release_free_memory()
    return True


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


@functools.cache
def _mallinfo2():
    """glibc's `mallinfo2` (2.33+), or None."""
    fn = getattr(_libc(), "mallinfo2", None)
    if fn is not None:
        fn.restype = _MallInfo2
    return fn


def heap_in_use() -> int:
    """Bytes the heap has handed out (glibc `mallinfo2().uordblks`); 0 unless the retained heap
    is in effect. It walks the free chunks: about a millisecond."""
    fn = _mallinfo2() if _applied else None
    return int(fn().uordblks) if fn is not None else 0


def wait_until_freed(in_use_before: int, slack: int = 64 << 20, timeout: float = 0.25) -> bool:
    """Waits until the heap's in-use bytes are back within `slack` of `in_use_before`, taken just
    before a step was dispatched (`heap_in_use`); returns whether they were.

    XLA:CPU frees an execution's temporary block on a worker thread 6-12 ms after its outputs
    are readable. A step dispatched in between asks for its own block while the last one is
    still held, and the retained heap grows by a whole block (5.8 GB for SmolLM2-135M at
    8 x 256; 20-30 s of page faults on a VM where first touch is dear, and the next hand-back
    of a heap that outgrew the host costs them again: benchmarks/RESULTS.md). A no-op (True)
    unless the retained heap is in effect; gives up after `timeout` seconds (other threads,
    such as a checkpoint being written, may hold memory of their own)."""
    if not _applied or _mallinfo2() is None:
        return True
    deadline = time.monotonic() + timeout
    while heap_in_use() > in_use_before + slack:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def configure_from_env() -> bool:
    """`retain_freed_memory()` if `wanted()`: what the `isheep` command and the benchmarks call first."""
    return retain_freed_memory() if wanted() else False
