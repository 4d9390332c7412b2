"""Several JAX processes (one per host of a TPU slice, or several on one machine in tests).

Every process runs the same program on the same inputs; arrays span the devices of all
processes. Host data enters through `put_global` (each process fills its own shards),
results leave through `to_host` (an all-gather), and only process 0 writes files
(`is_writer`), with `barrier` where others must wait for a write.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding


def initialize_from_env() -> bool:
    """Joins a multi-process run when ISHEEP_COORDINATOR (host:port), ISHEEP_NUM_PROCESSES and
    ISHEEP_PROCESS_ID are set; returns whether it did. (On a TPU pod, where JAX finds its
    peers itself, ISHEEP_COORDINATOR=auto calls jax.distributed.initialize() without arguments.)"""
    coordinator = os.environ.get("ISHEEP_COORDINATOR", "")
    if not coordinator:
        return False
    if coordinator == "auto":
        jax.distributed.initialize()
        return True
    try:
        num, pid = int(os.environ["ISHEEP_NUM_PROCESSES"]), int(os.environ["ISHEEP_PROCESS_ID"])
    except (KeyError, ValueError) as e:
        raise ValueError(
            "ISHEEP_COORDINATOR needs ISHEEP_NUM_PROCESSES and ISHEEP_PROCESS_ID (integers)"
        ) from e
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
    return True


def multi_process() -> bool:
    """Whether this is one of several processes. Asks no backend unless jax.distributed was
    initialized, so file helpers (`isheep status` / `report` beside a running job) never take
    the host's accelerator."""
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    return not multi_process() or jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (a no-op in a single-process run)."""
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's `flag`, on every process.

    Checks of the file system that choose what runs next (has this stage, chunk or checkpoint
    been written?) go through here: a process that looked a moment later could see a file
    process 0 has just written and take another path, after which their barriers and
    collectives no longer pair up. It is also a sync point: no process gets past it before
    every process has asked, so nobody writes what another has yet to check.
    """
    if not multi_process():
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A host array, identical on every process, laid out with `sharding`: each process
    fills only the shards of its own devices (jit refuses host arrays for shardings that
    span other processes' devices)."""
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(tree: Any) -> Any:
    """Global arrays as numpy on every process (an all-gather across processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
