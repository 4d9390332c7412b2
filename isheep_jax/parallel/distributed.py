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
    """Joins a multi-process run as the environment describes it.

    ISHEEP_COORDINATOR (host:port), ISHEEP_NUM_PROCESSES and ISHEEP_PROCESS_ID name the
    coordinator, the number of processes and this process's id. (On a TPU pod, where JAX
    finds its peers itself, ISHEEP_COORDINATOR=auto calls jax.distributed.initialize()
    without arguments.) Without ISHEEP_COORDINATOR (or with it empty) nothing happens.

    Returns:
      Whether it joined a multi-process run (called jax.distributed.initialize).

    Raises:
      ValueError: ISHEEP_COORDINATOR is a host:port, but ISHEEP_NUM_PROCESSES or
        ISHEEP_PROCESS_ID is missing or not an integer.
    """
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
    """Whether this is one of several processes.

    Asks no backend unless jax.distributed is initialized, so file helpers (`isheep status`
    / `report` beside a running job) never take the host's accelerator.

    Returns:
      True in a multi-process run of more than one process.
    """
    return jax.distributed.is_initialized() and jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes files: process 0, or the only process.

    Returns:
      True on process 0 of a multi-process run and in a single-process run.
    """
    return not multi_process() or jax.process_index() == 0


def barrier(name: str) -> None:
    """All processes wait here (a no-op in a single-process run).

    Args:
      name: the barrier's name, the same on every process (it pairs up their calls).
    """
    if multi_process():
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def agree(flag: bool) -> bool:
    """Process 0's `flag`, on every process.

    Checks of the file system that choose what runs next (has this stage, chunk or checkpoint
    been written?) go through here: a process that looked a moment later could see a file
    process 0 has just written and take another path, after which their barriers and
    collectives no longer pair up. It is also a sync point: no process gets past it before
    every process has asked, so nobody writes what another has yet to check. Every process
    must call it.

    Args:
      flag: this process's answer (only process 0's is used).

    Returns:
      Process 0's `flag` as a bool.
    """
    if not multi_process():
        return bool(flag)
    from jax.experimental import multihost_utils

    return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def put_global(x: Any, sharding: NamedSharding) -> jax.Array:
    """A host array, identical on every process, as a global array laid out with `sharding`.

    Each process fills only the shards of its own devices (jit refuses host arrays for
    shardings that span other processes' devices).

    Args:
      x: an array-like value, the same on every process.
      sharding: the layout of the result over the mesh of all processes' devices.

    Returns:
      A global `jax.Array` of `x`'s shape and dtype.
    """
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(tree: Any) -> Any:
    """Global arrays as numpy on every process (an all-gather across processes).

    Args:
      tree: a pytree of (global) `jax.Array`s.

    Returns:
      The same pytree of numpy arrays, whole on every process. In a multi-process run
      every process must call it.
    """
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)
