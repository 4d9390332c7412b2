"""LoRA (Hu et al. 2021) on our parameter tree: adapter shapes, logical axes, init, merge, count.

A target projection's kernel W [L, *in_dims, *out_dims] (our layout: x @ W; `layers` axis
first, scanned or not, see `model.transformer`) gets two adapter arrays

  lora_a  A [L, *in_dims, r]     logical axes ('layers', *W's in axes, 'lora')
  lora_b  B [L, r, *out_dims]    logical axes ('layers', 'lora', *W's out axes)

and the model trains on W + (alpha / r) * A @ B (contracted over r). A shards like W's
input side and B like its output side, so the delta is laid out like W itself; 'lora' has
no rule (`sharding.DEFAULT_RULES`): r is small and replicated. B starts at zero, so the
initial model is the base model exactly; A starts as PEFT's default (kaiming-uniform with
a = sqrt(5) on torch's [r, in] weight, i.e. U(-1/sqrt(in), 1/sqrt(in))).

The adapters are a tree shaped like the params, {'layers': {'attn': {'q_proj': {'lora_a',
'lora_b'}}, ...}}, so the optimizer, checkpoints and shardings treat them like params.
Which projections can be targets, and the on-disk format, live in `model.convert.peft`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from isheep_jax.model.config import ModelConfig
from isheep_jax.model.convert.peft import ALL_TARGETS, LORA_TARGETS, check_targets
from isheep_jax.model.params import Params, abstract_params, param_shardings
from isheep_jax.parallel import sharding
from isheep_jax.training.train_step import TrainState, batch_sharding, make_train_step, tree_state_shardings

Adapters = Any  # {'layers': {'attn' | 'mlp': {target: {'lora_a', 'lora_b'}}}}


@dataclasses.dataclass(frozen=True)
class LoraSpec:
    """What to adapt and how big: rank, alpha and the target projections.

    Attributes:
      rank: r, the adapters' inner dimension (> 0).
      alpha: the delta is scaled by alpha / r (PEFT's `lora_alpha`).
      targets: PEFT-style projection names (`model.convert.peft.LORA_TARGETS`).

    Raises:
      ValueError: a rank below 1, a non-positive alpha, or bad targets (`check_targets`).
    """

    rank: int
    alpha: float = 16.0
    targets: tuple[str, ...] = ALL_TARGETS

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora_alpha must be positive, got {self.alpha!r}")
        object.__setattr__(self, "targets", check_targets(self.targets))

    @property
    def scale(self) -> float:
        """alpha / r, the factor of the delta A @ B."""
        return self.alpha / self.rank


def _get(tree: Any, path: Sequence[str]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set(tree: dict, path: Sequence[str], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def _split_kernel(shape: Sequence[int], n_in: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(in dims, out dims) of a stacked kernel [L, *in, *out]."""
    return tuple(shape[1 : 1 + n_in]), tuple(shape[1 + n_in :])


def abstract_adapters(cfg: ModelConfig, spec: LoraSpec) -> tuple[Adapters, Adapters]:
    """Shapes (f32) and logical axis names of the adapters, with nothing allocated.

    Args:
      cfg: the model configuration.
      spec: rank and targets.

    Returns:
      (a tree of `ShapeDtypeStruct`s, the matching tree of logical-name tuples); see the
      module docstring for the shapes and names.
    """
    abstract, names = abstract_params(cfg)
    shapes: dict = {}
    axes: dict = {}
    for t in spec.targets:
        target = LORA_TARGETS[t]
        kernel = _get(abstract, target.path)["kernel"]
        kernel_names = _get(names, target.path)["kernel"]
        ins, outs = _split_kernel(kernel.shape, target.n_in)
        layers = kernel.shape[0]
        in_names, out_names = kernel_names[1 : 1 + target.n_in], kernel_names[1 + target.n_in :]
        _set(
            shapes,
            target.path,
            {
                "lora_a": jax.ShapeDtypeStruct((layers, *ins, spec.rank), jnp.float32),
                "lora_b": jax.ShapeDtypeStruct((layers, spec.rank, *outs), jnp.float32),
            },
        )
        _set(
            axes,
            target.path,
            {
                "lora_a": (kernel_names[0], *in_names, "lora"),
                "lora_b": (kernel_names[0], "lora", *out_names),
            },
        )
    return shapes, axes


def by_target(adapters: Adapters, targets: Sequence[str]) -> dict[str, Any]:
    """The adapter tree keyed by target name, as `model.convert.peft` stores it.

    Args:
      adapters: the adapter tree (params-shaped paths).
      targets: the target names it holds.

    Returns:
      target name -> {'lora_a', 'lora_b'} (the same arrays).
    """
    return {t: _get(adapters, LORA_TARGETS[t].path) for t in targets}


def from_targets(flat: dict[str, Any]) -> Adapters:
    """`by_target`'s inverse: target name -> {'lora_a', 'lora_b'} back to the adapter tree.

    Args:
      flat: target name -> {'lora_a', 'lora_b'} (e.g. `peft.load_adapter`'s arrays).

    Returns:
      The adapter tree with params-shaped paths.
    """
    out: dict = {}
    for t, ab in flat.items():
        _set(out, LORA_TARGETS[t].path, dict(ab))
    return out


def num_trainable(cfg: ModelConfig, spec: LoraSpec) -> int:
    """Exact count of the adapters' parameters: sum over targets of L * r * (in + out).

    Args:
      cfg: the model configuration.
      spec: rank and targets.

    Returns:
      The number of trainable scalars.
    """
    shapes, _ = abstract_adapters(cfg, spec)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def adapter_shardings(
    cfg: ModelConfig, spec: LoraSpec, mesh: Mesh, rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES
) -> Adapters:
    """The sharding of every adapter array on `mesh` (A like its kernel's input side, B its output).

    Args:
      cfg: the model configuration.
      spec: rank and targets.
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs.

    Returns:
      A tree of `NamedSharding`s matching the adapter tree.
    """
    shapes, names = abstract_adapters(cfg, spec)
    return sharding.tree_shardings(names, shapes, mesh, rules)


def init_adapters(
    cfg: ModelConfig,
    spec: LoraSpec,
    key: jax.Array,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
) -> Adapters:
    """Fresh adapters, created on their shards: A ~ U(-1/sqrt(in), 1/sqrt(in)) (PEFT's default), B = 0.

    Args:
      cfg: the model configuration.
      spec: rank and targets.
      key: a PRNG key; each target and layer draws its own stream from it.
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs.

    Returns:
      The adapter tree (f32), laid out by `adapter_shardings`; merged, it gives the base.
    """
    shapes, _ = abstract_adapters(cfg, spec)

    @functools.partial(jax.jit, out_shardings=adapter_shardings(cfg, spec, mesh, rules))
    def init(key):
        out: dict = {}
        for i, t in enumerate(spec.targets):
            path = LORA_TARGETS[t].path
            a, b = _get(shapes, path)["lora_a"], _get(shapes, path)["lora_b"]
            fan_in = math.prod(a.shape[1:-1])
            bound = 1.0 / math.sqrt(fan_in)
            lora_a = jax.random.uniform(jax.random.fold_in(key, i), a.shape, jnp.float32, -bound, bound)
            _set(out, path, {"lora_a": lora_a, "lora_b": jnp.zeros(b.shape, jnp.float32)})
        return out

    return init(key)


def delta(lora_a: jax.Array, lora_b: jax.Array, scale: float) -> jax.Array:
    """scale * A @ B in the kernel layout.

    Args:
      lora_a: A [L, *in_dims, r].
      lora_b: B [L, r, *out_dims].
      scale: alpha / r.

    Returns:
      [L, *in_dims, *out_dims] f32 (the dtype of A and B promoted).
    """
    layers, r = lora_a.shape[0], lora_a.shape[-1]
    ins, outs = lora_a.shape[1:-1], lora_b.shape[2:]
    a = lora_a.reshape(layers, -1, r)
    b = lora_b.reshape(layers, r, -1)
    # One batched matmul over layers: [L, in, r] x [L, r, out]; the reshapes are of contiguous dims.
    return (scale * jnp.einsum("lir,lro->lio", a, b)).reshape(layers, *ins, *outs)


def merge(base: Params, adapters: Adapters, scale: float, dtype: Any = None) -> Params:
    """base + scale * A @ B on every adapted kernel; every other parameter is base's own.

    Args:
      base: the stacked parameter tree.
      adapters: the adapter tree (`init_adapters`' layout); its targets are the kernels
        changed.
      scale: alpha / r.
      dtype: the merged kernels' dtype (None: base and adapter dtypes promoted, f32 for
        f32 adapters, so a small delta is not rounded away before the forward's own cast).

    Returns:
      A new tree (shallow copies along the changed paths; the other leaves are `base`'s).
    """
    out = jax.tree.map(lambda x: x, base)  # a structural copy: leaves are shared, dicts are new
    for target in LORA_TARGETS.values():
        try:
            ab = _get(adapters, target.path)
        except KeyError:
            continue
        module = _get(out, target.path)
        kernel = module["kernel"]
        merged = kernel + delta(ab["lora_a"], ab["lora_b"], scale)
        module["kernel"] = merged.astype(dtype) if dtype is not None else merged
    return out


def state_shardings(
    cfg: ModelConfig,
    spec: LoraSpec,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
) -> tuple[TrainState, TrainState]:
    """(abstract TrainState, its shardings) of a LoRA run: the state's params are the adapters.

    Args:
      cfg: the model configuration.
      spec: rank and targets.
      optimizer: the gradient transformation whose state is laid out (adapters only).
      mesh: the device mesh.
      rules: logical-axis rules.

    Returns:
      As `train_step.state_shardings`, over the adapter tree instead of the params.
    """
    shapes, names = abstract_adapters(cfg, spec)
    return tree_state_shardings(shapes, names, optimizer, mesh, rules)


def compile_train_step(
    cfg: ModelConfig,
    spec: LoraSpec,
    optimizer: optax.GradientTransformation,
    mesh: Mesh,
    batch_shape: tuple[int, int, int],
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
    loss_chunk_tokens: int = 0,
):
    """The jit'd LoRA step: `(state, base, batch) -> (state, metrics)`; only `state` is donated.

    The loss is `train_step.loss_sums` on `merge(base, adapters)`, so the objective (token
    weighting, accumulation, chunked loss) is the full fine-tuning step's; gradients and
    optimizer state exist for the adapters only. The frozen base is an argument, not a
    constant folded into the program, and is neither donated nor changed.

    Args:
      cfg: the model configuration.
      spec: rank, alpha and targets.
      optimizer: the gradient transformation of the adapters.
      mesh: the device mesh.
      batch_shape: (micro_batches, rows, length) of every batch array.
      rules: logical-axis rules for adapters, params, batch and activations.
      loss_chunk_tokens: tokens per chunk of the vocabulary cross-entropy (0: unchunked).

    Returns:
      The jitted step; `state` is a `TrainState` over the adapters laid out as
      `state_shardings` gives, `base` the params laid out as `params.param_shardings`
      gives, the batch as `train_step.batch_sharding` gives. Metrics come back replicated.
    """
    _, shard = state_shardings(cfg, spec, optimizer, mesh, rules)
    base_shard = param_shardings(cfg, mesh, rules)
    b_shard = batch_sharding(mesh, batch_shape, rules)
    step = make_train_step(
        cfg, optimizer, loss_chunk_tokens, model_params=lambda ad, base: merge(base, ad, spec.scale)
    )

    def traced(state, base, batch):
        with sharding.activation_sharding(mesh, rules):
            return step(state, batch, base)

    return jax.jit(
        traced,
        in_shardings=(shard, base_shard, b_shard),
        out_shardings=(shard, sharding.replicated(mesh)),
        donate_argnums=0,
    )
