"""Device mesh and logical-axis partitioning (t5x / maxtext conventions).

Every parameter and activation carries logical axis names; `DEFAULT_RULES` is the one
table mapping them to the mesh axes `data`, `fsdp`, `tensor`. A logical axis whose size
does not divide by its mesh axes is replicated instead (tiny test models with one kv
head on a 4-way tensor axis, a batch of 1 on 8 data shards), so one rule table serves
every model size.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
DEFAULT_RULES: tuple[tuple[str, Any], ...] = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_kv_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    ("cache_length", None),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("norm", None),
)

_CONTEXT: contextvars.ContextVar[tuple[Mesh, tuple] | None] = contextvars.ContextVar(
    "isheep_mesh_rules", default=None
)


@gin.configurable
def make_mesh(
    data: int = 1, fsdp: int = -1, tensor: int = 1, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; at most one size may be -1 (fill the rest).

    Args:
      data: size of the `data` axis, or -1.
      fsdp: size of the `fsdp` axis, or -1 (the default: every device not taken by the others).
      tensor: size of the `tensor` axis, or -1.
      devices: the devices to lay out, in order (default: `jax.devices()`, all processes').

    Returns:
      A `Mesh` of shape [data, fsdp, tensor] over `devices` with axis names `MESH_AXES`,
      every axis of type `AxisType.Auto`.

    Raises:
      ValueError: more than one size is -1, the known sizes do not divide the device
        count, or the sizes' product is not the device count.
    """
    devices = list(devices if devices is not None else jax.devices())
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"{len(devices)} devices do not divide into mesh {sizes}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"mesh data={sizes[0]} fsdp={sizes[1]} tensor={sizes[2]} needs "
            f"{math.prod(sizes)} devices, have {len(devices)}"
        )
    # Auto axes: sharded contracting dims are resolved by the compiler (see DESIGN §5).
    return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3)


def logical_to_pspec(
    names: Sequence[str | None],
    shape: Sequence[int] | None,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> P:
    """Maps logical axis names to a PartitionSpec, replicating dims that do not divide.

    Each name maps through `rules` to mesh axes; mesh axes of size 1, and ones an earlier
    dim already uses, are dropped. A dim whose size the product of its remaining mesh axes
    does not divide is replicated whole. Names missing from `rules` are replicated.

    Args:
      names: one logical axis name per dim (None: replicated).
      shape: the array's shape, for the divisibility check (None: no check).
      mesh: the mesh whose axis sizes apply.
      rules: (logical name, mesh axis | tuple of mesh axes | None) pairs.

    Returns:
      A `PartitionSpec` with one entry per dim.
    """
    table = dict(rules)
    used: set[str] = set()
    spec = []
    for i, name in enumerate(names):
        target = table.get(name) if name is not None else None
        axes = () if target is None else ((target,) if isinstance(target, str) else tuple(target))
        # Drop mesh axes of size 1 and ones already used by an earlier dim.
        axes = tuple(a for a in axes if mesh.shape[a] > 1 and a not in used)
        if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
            axes = ()
        used.update(axes)
        spec.append(None if not axes else (axes[0] if len(axes) == 1 else axes))
    return P(*spec)


def logical_to_sharding(
    names: Sequence[str | None],
    shape: Sequence[int] | None,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = DEFAULT_RULES,
) -> NamedSharding:
    """The `NamedSharding` of `logical_to_pspec(names, shape, mesh, rules)` on `mesh`.

    Args:
      names: one logical axis name per dim (None: replicated).
      shape: the array's shape, for the divisibility check (None: no check).
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs, as in `logical_to_pspec`.

    Returns:
      The sharding.
    """
    return NamedSharding(mesh, logical_to_pspec(names, shape, mesh, rules))


def tree_shardings(
    logical_axes: Any, abstract: Any, mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES
) -> Any:
    """Shardings for a pytree given a matching pytree of logical-name tuples.

    Args:
      logical_axes: a pytree whose leaves are tuples of logical names, one per dim.
      abstract: the matching pytree of arrays or `ShapeDtypeStruct`s (only `.shape` is read).
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs, as in `logical_to_pspec`.

    Returns:
      The matching pytree of `NamedSharding`s.
    """
    return jax.tree.map(
        lambda names, x: logical_to_sharding(names, x.shape, mesh, rules),
        logical_axes,
        abstract,
        is_leaf=lambda n: isinstance(n, tuple),
    )


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = DEFAULT_RULES):
    """Within this context (active while tracing), `constrain` applies sharding constraints.

    The context is read when a function is traced, not when a compiled one runs.

    Args:
      mesh: the mesh the constraints refer to (also what `mesh_size` reports).
      rules: (logical name, mesh axes) pairs, as in `logical_to_pspec`.

    Yields:
      None.
    """
    token = _CONTEXT.set((mesh, tuple(rules)))
    try:
        yield
    finally:
        _CONTEXT.reset(token)


def mesh_size() -> int:
    """Devices of the mesh of the active `activation_sharding` context (1 outside one).

    Returns:
      The mesh's device count, or 1 outside an `activation_sharding` context.
    """
    ctx = _CONTEXT.get()
    return 1 if ctx is None else ctx[0].size


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """Sharding constraint by logical names; a no-op outside `activation_sharding`.

    Args:
      x: the array (a traced value) to constrain.
      names: one logical axis name per dim of `x` (None: replicated).

    Returns:
      `x` under `jax.lax.with_sharding_constraint`, or `x` itself outside the context.
    """
    ctx = _CONTEXT.get()
    if ctx is None:
        return x
    mesh, rules = ctx
    return jax.lax.with_sharding_constraint(x, logical_to_sharding(names, x.shape, mesh, rules))


def replicated(mesh: Mesh) -> NamedSharding:
    """The fully replicated sharding on `mesh`.

    Args:
      mesh: the mesh.

    Returns:
      `NamedSharding(mesh, PartitionSpec())`: a whole copy on every device.
    """
    return NamedSharding(mesh, P())
