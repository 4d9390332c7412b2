"""Memory planning: bytes per device of a configured model's training step and sampler on a
mesh, against the chip's HBM, without allocating anything.

Params, optimizer state, gradients and the KV cache are exact: every array's shard shape
under the same logical-axis rules the run uses (`sharding.DEFAULT_RULES`). Activations are
an estimate of what the backward pass keeps (see `activation_bytes`); the test compares the
whole plan with XLA's own memory analysis of the compiled step on CPU.

With `libtpu` installed (the `tpu-aot` extra), `compiled_memory` also compiles the train
step and the sampler ahead of time for a TPU topology (`PlanConfig.topology`, e.g.
'v5p:4x4x4') on this host, with no TPU attached, and reports the TPU compiler's own
per-device figures next to the analytic ones.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib.util
import math
from collections.abc import Sequence
from typing import Any

import gin
import jax
import numpy as np

from isheep_jax.model import layers
from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import abstract_params
from isheep_jax.model.transformer import unstack_layers
from isheep_jax.parallel import sharding
from isheep_jax.sampling import decode_loop
from isheep_jax.sampling.generator import check_kv_cache_dtype
from isheep_jax.training import lora
from isheep_jax.training.chunked_loss import chunk_length
from isheep_jax.training.optim import OptimizerConfig, make_optimizer
from isheep_jax.training.train_step import compile_train_step, state_shardings

GIB = 1 << 30
# HBM per chip (GiB): public Cloud TPU / GPU figures.
HBM_GIB = {"v4": 32, "v5e": 16, "v5p": 95, "v6e": 32, "h100": 80, "h200": 141}


@gin.configurable
@dataclasses.dataclass(frozen=True)
class PlanConfig:
    """What `isheep plan` sizes besides the model, mesh and TrainConfig of the gin files.

    Attributes:
      chip: the chip to plan for, a key of HBM_GIB.
      sample_batch: sequences decoded at once over the whole mesh.
      sample_len: the sampler's cache slots per sequence (prompt + new tokens).
      headroom: the fraction of HBM a plan may use.
      topology: the TPU topology to compile for ahead of time ('' = analytic plan only).

    Raises:
      ValueError: `chip` is unknown, or `topology` is not one of `chip`'s.
    """

    chip: str = "v5p"
    sample_batch: int = 64  # sequences decoded at once over the whole mesh
    sample_len: int = 2048  # cache slots: prompt + new tokens
    headroom: float = 0.9  # fraction of HBM a plan may use (XLA needs scratch space too)
    # TPU topology to compile for ahead of time ('' = analytic plan only), as
    # jax.experimental.topologies names it: 'v5e:8x8' (v5e-64), 'v5p:4x4x4' (v5p-128).
    topology: str = ""

    def __post_init__(self):
        if self.chip not in HBM_GIB:
            raise ValueError(f"PlanConfig.chip must be one of {sorted(HBM_GIB)}, got {self.chip!r}")
        if self.topology and self.topology.split(":")[0] != self.chip:
            raise ValueError(
                f"PlanConfig.topology {self.topology!r} is not a {self.chip} topology "
                f"(PlanConfig.chip = {self.chip!r})"
            )


def abstract_mesh(data: int, fsdp: int, tensor: int) -> jax.sharding.AbstractMesh:
    """A mesh of the given shape with no devices behind it (planning for a slice we are not on).

    Args:
      data: size of the `data` axis.
      fsdp: size of the `fsdp` axis.
      tensor: size of the `tensor` axis.

    Returns:
      An `AbstractMesh` with axes `sharding.MESH_AXES`.
    """
    return jax.sharding.AbstractMesh((data, fsdp, tensor), sharding.MESH_AXES)


def shard_bytes(
    shape: Sequence[int], itemsize: int, names: Sequence[str | None], mesh, rules=sharding.DEFAULT_RULES
) -> int:
    """Bytes of the largest shard of one array laid out by its logical axis names.

    Args:
      shape: the array's global shape.
      itemsize: bytes per element.
      names: one logical axis name (or None) per dimension.
      mesh: the (abstract or real) mesh.
      rules: logical-axis rules mapping names to mesh axes.

    Returns:
      Bytes of one shard, dimensions that do not divide rounded up.
    """
    spec = sharding.logical_to_pspec(names, shape, mesh, rules)
    dims = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
        axes = () if axes is None else ((axes,) if isinstance(axes, str) else tuple(axes))
        dims.append(math.ceil(dim / math.prod(mesh.shape[a] for a in axes)))
    return int(np.prod(dims, dtype=np.int64)) * itemsize


def param_bytes(cfg: ModelConfig, mesh, itemsize: int | None = None, rules=sharding.DEFAULT_RULES) -> int:
    """Per-device bytes of the parameters (optimizer moments and gradients have the same layout).

    Args:
      cfg: the model config.
      mesh: the (abstract or real) mesh.
      itemsize: bytes per element (default: each parameter's own dtype).
      rules: logical-axis rules mapping names to mesh axes.

    Returns:
      The bytes of every parameter's shard, summed.
    """
    abstract, names = abstract_params(cfg)
    return _tree_shard_bytes(abstract, names, mesh, rules, itemsize)


def _tree_shard_bytes(abstract, names, mesh, rules, itemsize: int | None = None) -> int:
    """Per-device bytes of a tree of arrays with logical axis names (itemsize None: their own)."""
    leaves = jax.tree.leaves(
        jax.tree.map(
            lambda n, a: shard_bytes(a.shape, itemsize or a.dtype.itemsize, n, mesh, rules),
            names,
            abstract,
            is_leaf=lambda x: isinstance(x, tuple),
        )
    )
    return int(sum(leaves))


def lora_adapter_bytes(cfg: ModelConfig, spec: lora.LoraSpec, mesh, rules=sharding.DEFAULT_RULES) -> int:
    """Per-device bytes of the LoRA adapters (f32), laid out like their kernels (`lora`).

    Args:
      cfg: the model config.
      spec: rank and targets.
      mesh: the (abstract or real) mesh.
      rules: logical-axis rules mapping names to mesh axes.

    Returns:
      The bytes of every adapter's shard, summed (their gradients and each Adam moment
      take the same).
    """
    shapes, names = lora.abstract_adapters(cfg, spec)
    return _tree_shard_bytes(shapes, names, mesh, rules, itemsize=4)


def lora_merged_bytes(cfg: ModelConfig, spec: lora.LoraSpec, mesh, rules=sharding.DEFAULT_RULES) -> int:
    """Per-device bytes of the merged target kernels (f32) a LoRA step trains on.

    Args:
      cfg: the model config.
      spec: rank and targets.
      mesh: the (abstract or real) mesh.
      rules: logical-axis rules mapping names to mesh axes.

    Returns:
      The bytes of every target kernel's shard in f32, summed.
    """
    abstract, names = abstract_params(cfg)
    total = 0
    for t in spec.targets:
        path = lora.LORA_TARGETS[t].path
        kernel, kernel_names = lora._get(abstract, path)["kernel"], lora._get(names, path)["kernel"]
        total += shard_bytes(kernel.shape, 4, kernel_names, mesh, rules)
    return total


def _without_fsdp(rules):
    def drop(target):
        if target == "fsdp":
            return None
        if isinstance(target, tuple):
            return tuple(a for a in target if a != "fsdp") or None
        return target

    return tuple((name, drop(target)) for name, target in rules)


def sampler_weight_bytes(cfg: ModelConfig, mesh) -> int:
    """Per-device bytes of the weights as the decode loop reads them.

    Every decode step reads every weight, so XLA may hoist the fsdp all-gathers and the cast
    to the compute dtype out of the loop: then each device holds the weights gathered over
    fsdp, split over tensor only, in compute dtype. An upper bound: the TPU compiler may
    instead gather some or most of the weights at every step (as it does for large models
    over many fsdp shards), which holds less (measurements: benchmarks/HISTORY.md).

    Args:
      cfg: the model config.
      mesh: the (abstract or real) mesh.

    Returns:
      The bytes; 0 when the weights are read in place (no fsdp, parameter dtype = compute dtype).
    """
    itemsize = np.dtype(cfg.dtype).itemsize
    if mesh.shape["fsdp"] == 1 and itemsize == np.dtype(cfg.param_dtype).itemsize:
        return 0  # read in place
    return param_bytes(cfg, mesh, itemsize, _without_fsdp(sharding.DEFAULT_RULES))


def configured_cache_dtype(cfg: ModelConfig) -> str:
    """The sampler's KV cache dtype: gin's `Generator.kv_cache_dtype`, else the compute dtype.

    Args:
      cfg: the model config.

    Returns:
      The dtype's name.

    Raises:
      ValueError: the bound `Generator.kv_cache_dtype` is not a valid value.
    """
    try:
        bound = gin.query_parameter("Generator.kv_cache_dtype")
    except ValueError:  # not bound
        return cfg.dtype
    return check_kv_cache_dtype(bound) or cfg.dtype


def kv_cache_bytes(cfg: ModelConfig, mesh, batch: int, slots: int) -> int:
    """Per-device bytes of the sampler's KV cache (k and v of every layer).

    Args:
      cfg: the model config.
      mesh: the (abstract or real) mesh.
      batch: sequences decoded at once over the whole mesh.
      slots: cache slots per sequence.

    Returns:
      The bytes, in the configured cache dtype (`configured_cache_dtype`).
    """
    names = ("batch", "act_kv_heads", "cache_length", "kv")
    itemsize = np.dtype(configured_cache_dtype(cfg)).itemsize
    one = shard_bytes((batch, cfg.num_kv_heads, slots, cfg.head_dim), itemsize, names, mesh)
    return 2 * cfg.num_layers * one


def _split(n: int, parts: int) -> int:
    """Elements per device of a dimension of size n sharded `parts` ways (replicated if it does not
    divide)."""
    return n // parts if n % parts == 0 else n


def activation_bytes(
    cfg: ModelConfig, mesh, rows: int, length: int, remat: str, loss_chunk_tokens: int = 0
) -> int:
    """Estimated per-device bytes the backward pass of one micro-batch keeps alive.

    Per token and layer (compute dtype, heads and MLP split over `tensor`): without remat,
    the norm inputs and residual (4 H), q/k/v/attention output ((2 nh + 2 kv) hd), the MLP's
    gate, up and product (3 I) and the f32 attention scores and probabilities (2 nh times the
    keys a query scores: S, or S (n + 1) / 2n with `layers.causal_blocks`' n query blocks;
    with cuDNN's fused attention only its f32 softmax statistics, nh); with 'dots', only matmul
    outputs; with 'full', each layer's input (H) plus one layer recomputed at a time. The
    f32 logits and their gradient come on top: of every token, or of one chunk of tokens
    with a chunked loss (`training.chunked_loss`).

    Args:
      cfg: the model config.
      mesh: the (abstract or real) mesh.
      rows: sequences per micro-batch over the whole mesh.
      length: tokens per sequence.
      remat: the remat policy, 'none', 'dots' or 'full'.
      loss_chunk_tokens: `TrainConfig.loss_chunk_tokens` (0: the loss is one piece).

    Returns:
      The estimated bytes.
    """
    t = mesh.shape["tensor"]
    b = np.dtype(cfg.dtype).itemsize
    tokens = _split(rows, mesh.shape["data"] * mesh.shape["fsdp"]) * length
    nh, kv, hd, h, i = (
        _split(cfg.num_heads, t),
        _split(cfg.num_kv_heads, t),
        cfg.head_dim,
        cfg.hidden_size,
        _split(cfg.intermediate_size, t),
    )
    n = layers.causal_blocks(length)
    scores = nh if cfg.attention_impl == "cudnn" else 2 * nh * length * (n + 1) // (2 * n)  # f32 per token
    full_layer = tokens * (b * (4 * h + (2 * nh + 2 * kv) * hd + 3 * i) + 4 * scores)
    dots_layer = tokens * b * ((2 * nh + 2 * kv) * hd + 2 * h + 2 * i)
    per_layer = {"none": full_layer, "dots": dots_layer, "full": tokens * b * h}[remat]
    extra_layer = full_layer if remat != "none" else 0  # the layer being recomputed
    positions = chunk_length(rows, length, loss_chunk_tokens)
    logits = (
        2 * _split(rows, mesh.shape["data"] * mesh.shape["fsdp"]) * positions * _split(cfg.vocab_size, t) * 4
    )
    return cfg.num_layers * per_layer + extra_layer + logits


@dataclasses.dataclass(frozen=True)
class Plan:
    """The analytic memory plan of a training step and the sampler, per device.

    Attributes:
      rows: item name -> per-device bytes (every item, whichever remat policy is used).
      train_total: bytes of the training step under the configured remat policy.
      sample_total: bytes of the sampler.
      hbm: the chip's HBM in bytes.
      headroom: the fraction of `hbm` a plan may use.
    """

    rows: dict[str, int]  # name -> per-device bytes
    train_total: int
    sample_total: int
    hbm: int
    headroom: float

    def fits(self, total: int) -> bool:
        """Whether `total` bytes fit in the chip's HBM times the headroom."""
        return total <= self.hbm * self.headroom


def make_plan(
    cfg: ModelConfig,
    mesh_shape: tuple[int, int, int],
    batch_size: int,
    micro_batches: int,
    seq_len: int,
    pc: PlanConfig,
    loss_chunk_tokens: int = 0,
    lora_spec: lora.LoraSpec | None = None,
) -> Plan:
    """Per-device memory of training (params, Adam moments, gradients, activations) and sampling.

    With LoRA (`lora_spec`) the params are the frozen base; the adapters (f32) hold the
    gradients and Adam moments, and the step also holds the merged target kernels (f32) and,
    during the backward pass, their gradients (`lora.compile_train_step` trains on the
    merged weights).

    Args:
      cfg: the model config.
      mesh_shape: (data, fsdp, tensor) sizes of the mesh.
      batch_size: training sequences per step over the whole mesh.
      micro_batches: micro-batches per step (gradient accumulation).
      seq_len: tokens per training sequence.
      pc: the sampler's sizes, the chip and the headroom.
      loss_chunk_tokens: `TrainConfig.loss_chunk_tokens` (0: the loss is one piece).
      lora_spec: `TrainConfig.lora_spec()`: None for full fine-tuning.

    Returns:
      The `Plan`.
    """
    mesh = abstract_mesh(*mesh_shape)
    params = param_bytes(cfg, mesh)
    lora_rows: dict[str, int] = {}
    if lora_spec is None:
        moments = 2 * param_bytes(cfg, mesh, 4)  # optax adamw keeps mu and nu in f32
        grads = params  # accumulated gradients, parameter dtype and layout
    else:
        adapters = lora_adapter_bytes(cfg, lora_spec, mesh)
        merged = lora_merged_bytes(cfg, lora_spec, mesh)
        moments = 2 * adapters  # mu and nu of the adapters only
        grads = adapters + merged  # the adapters', and the merged kernels' on the way to them
        lora_rows = {"LoRA adapters (trained)": adapters, "LoRA merged kernels": merged}
    rows_per_micro = batch_size // micro_batches
    act = {
        r: activation_bytes(cfg, mesh, rows_per_micro, seq_len, r, loss_chunk_tokens)
        for r in ("none", "dots", "full")
    }
    cache = kv_cache_bytes(cfg, mesh, pc.sample_batch, pc.sample_len)
    weights = sampler_weight_bytes(cfg, mesh)
    # The sampler keeps a copy of tied embeddings in the compute dtype, where that is not the
    # parameters' (model.unstack_layers).
    cast = cfg.tie_embeddings and np.dtype(cfg.dtype) != np.dtype(cfg.param_dtype)
    head_copy = (
        shard_bytes((cfg.vocab_size, cfg.hidden_size), np.dtype(cfg.dtype).itemsize, ("vocab", "embed"), mesh)
        if cast
        else 0
    )
    sample_logits = (
        _split(pc.sample_batch, mesh_shape[0] * mesh_shape[1]) * _split(cfg.vocab_size, mesh_shape[2]) * 4
    )
    rows = {
        "params": params,
        **lora_rows,
        "optimizer state": moments,
        "gradients": grads,
        "activations (remat none)": act["none"],
        "activations (remat dots)": act["dots"],
        "activations (remat full)": act["full"],
        "sampler tied head copy": head_copy,
        "sampler gathered weights": weights,
        "sampler KV cache": cache,
        "sampler logits": sample_logits,
    }
    train_total = params + sum(lora_rows.values()) + moments + grads + act[cfg.remat_policy]
    sample_total = params + head_copy + weights + cache + sample_logits
    return Plan(rows, train_total, sample_total, HBM_GIB[pc.chip] * GIB, pc.headroom)


def format_plan(
    plan: Plan,
    cfg: ModelConfig,
    mesh_shape: tuple[int, int, int],
    chip: str,
    batch: tuple[int, int, int],
    lora_spec: lora.LoraSpec | None = None,
) -> str:
    """The plan as a table for `isheep plan`, with a fits / does-not-fit verdict per total.

    Args:
      plan: the plan (`make_plan`).
      cfg: the model config.
      mesh_shape: (data, fsdp, tensor) sizes of the mesh.
      chip: the chip's name, a key of HBM_GIB.
      batch: (sequences, micro-batches, tokens per sequence) of a training step.
      lora_spec: the LoRA settings the plan was made with (None: full fine-tuning).

    Returns:
      The report's text, lines joined by newlines.
    """
    d, f, t = mesh_shape
    lines = [
        f"model: {cfg.num_params() / 1e9:.2f}B params ({cfg.model_type}, {cfg.num_layers} layers, "
        f"param {cfg.param_dtype}, compute {cfg.dtype}, remat {cfg.remat_policy}, "
        f"layers {'scanned' if cfg.scan_layers else 'unrolled'})",
        f"mesh: data {d} x fsdp {f} x tensor {t} = {d * f * t} {chip} chips ({HBM_GIB[chip]} GiB HBM each)",
        f"train batch: {batch[0]} sequences x {batch[2]} tokens in {batch[1]} micro-batch(es)",
        *(
            [
                f"training: LoRA rank {lora_spec.rank}, alpha {lora_spec.alpha:g}, on "
                f"{', '.join(lora_spec.targets)}: "
                f"{lora.num_trainable(cfg, lora_spec) / 1e6:.2f}M trainable params"
            ]
            if lora_spec is not None
            else ["training: full fine-tuning"]
        ),
        "",
        f"{'per device':<28}{'GiB':>10}",
    ]
    lines += [f"{name:<28}{b / GIB:>10.2f}" for name, b in plan.rows.items()]
    budget = plan.hbm * plan.headroom / GIB
    for what, total in (("training step", plan.train_total), ("sampling", plan.sample_total)):
        verdict = "fits" if plan.fits(total) else "does NOT fit"
        lines.append(
            f"{what + ' total':<28}{total / GIB:>10.2f}  {verdict} in {budget:.1f} GiB "
            f"({plan.headroom:.0%} of {HBM_GIB[chip]} GiB)"
        )
    if not plan.fits(plan.train_total) and cfg.remat_policy != "full":
        lines.append("hint: ModelConfig.remat_policy = 'full' keeps one layer's activations at a time")
    return "\n".join(lines)


def compiler_memory(compiled: Any) -> dict[str, int] | None:
    """XLA's memory analysis of a compiled executable (argument, output, temporary bytes).

    Args:
      compiled: a compiled executable (`jax.stages.Compiled`).

    Returns:
      Bytes under 'arguments', 'outputs', 'temporaries' and 'aliased'; None where the
      backend gives no analysis.
    """
    ma = compiled.memory_analysis()
    if ma is None:
        return None
    return {
        "arguments": int(ma.argument_size_in_bytes),
        "outputs": int(ma.output_size_in_bytes),
        "temporaries": int(ma.temp_size_in_bytes),
        "aliased": int(ma.alias_size_in_bytes),
    }


def compiled_total(mem: dict[str, int]) -> int:
    """Peak bytes of one executable: live arguments, new outputs and temporaries.

    Donated outputs reuse their argument's buffer, so the aliased bytes count once.

    Args:
      mem: a `compiler_memory` result.

    Returns:
      The peak bytes.
    """
    return mem["arguments"] + mem["outputs"] - mem["aliased"] + mem["temporaries"]


def libtpu_installed() -> bool:
    """Whether libtpu is importable (needed for ahead-of-time TPU compilation)."""
    return importlib.util.find_spec("libtpu") is not None


@functools.cache
def tpu_devices(topology: str) -> tuple[jax.Device, ...]:
    """The devices of a TPU slice this host is not on, for ahead-of-time compilation.

    Cached: jit caches traces by mesh, and a second description of the same topology would
    give new device objects that no cached trace matches.

    Args:
      topology: a topology name as `jax.experimental.topologies` takes it, e.g. 'v5p:4x4x4'.

    Returns:
      The slice's devices.

    Raises:
      RuntimeError: libtpu is not installed.
      ValueError: libtpu could not describe the topology.
    """
    if not libtpu_installed():
        raise RuntimeError(
            "ahead-of-time TPU compilation needs libtpu: pip install 'isheep_jax[tpu-aot]' "
            "(libtpu matching this jax; see constraints.txt)"
        )
    from jax.experimental import topologies

    # v4 chips hold two TensorCores that JAX drives as one device ('megacore').
    kwargs = {"chip_config_name": "megacore"} if topology.startswith("v4:") else {}
    try:
        return tuple(topologies.get_topology_desc(topology_name=topology, platform="tpu", **kwargs).devices)
    except Exception as e:  # libtpu's messages do not name the argument
        raise ValueError(
            f"libtpu could not describe PlanConfig.topology {topology!r} (names look like "
            f"'v5e:2x2', 'v5e:8x8', 'v5p:4x4x4', 'v4:2x2x1'; one process at a time may load libtpu, so a "
            f"running TPU job or another `isheep plan` blocks it): {e}"
        ) from e


def _sds(tree: Any, shardings: Any) -> Any:
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), tree, shardings)


@contextlib.contextmanager
def _no_persistent_cache():
    """Executables compiled for another platform cannot be loaded back on this host: keep
    them out of the on-disk compilation cache. Best effort: JAX decides once per process
    whether to use the cache, so this only holds when nothing was compiled before (as in
    `isheep plan`, which never enables the cache)."""
    old = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        yield
    finally:
        jax.config.update("jax_enable_compilation_cache", old)


def compiled_memory(
    cfg: ModelConfig,
    mesh: jax.sharding.Mesh,
    batch_shape: tuple[int, int, int],
    pc: PlanConfig,
    loss_chunk_tokens: int = 0,
    lora_spec: lora.LoraSpec | None = None,
) -> dict[str, dict[str, int]]:
    """XLA's memory analysis of the train step and the sampler compiled for `mesh`'s devices.

    The sampler is compiled for `pc.sample_batch` rows with half of `pc.sample_len` slots for
    the prompt and half for new tokens. Nothing is allocated: every argument is abstract.

    Args:
      cfg: the model config.
      mesh: a mesh of the target devices (e.g. built from `tpu_devices`).
      batch_shape: (micro_batches, rows per micro-batch, length).
      pc: the sampler's sizes (`sample_batch`, `sample_len`).
      loss_chunk_tokens: `TrainConfig.loss_chunk_tokens` (0: the loss is one piece).
      lora_spec: compile the LoRA step (`lora.compile_train_step`) instead of the full one.

    Returns:
      `compiler_memory` results under 'training step' and 'sampling'.
    """
    # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
    from isheep_jax.training.sft_data import MODEL_KEYS

    opt = make_optimizer(OptimizerConfig(), 1000)
    batch = {k: jax.ShapeDtypeStruct(batch_shape, np.int32) for k in MODEL_KEYS}
    with _no_persistent_cache():
        if lora_spec is None:
            abstract_state, _ = state_shardings(cfg, opt, mesh)
            step = compile_train_step(cfg, opt, mesh, batch_shape, loss_chunk_tokens=loss_chunk_tokens)
            lowered_step = step.lower(abstract_state, batch)
        else:
            abstract_state, _ = lora.state_shardings(cfg, lora_spec, opt, mesh)
            step = lora.compile_train_step(
                cfg, lora_spec, opt, mesh, batch_shape, loss_chunk_tokens=loss_chunk_tokens
            )
            lowered_step = step.lower(abstract_state, abstract_params(cfg)[0], batch)
        train = compiler_memory(lowered_step.compile())

    abstract, names = abstract_params(cfg)
    stacked = sharding.tree_shardings(names, abstract, mesh)
    # Unstacking drops the leading (replicated) `layers` dim of every layer parameter.
    unstacked = jax.eval_shape(functools.partial(unstack_layers, head_dtype=cfg.dtype), abstract)
    layer_shardings = jax.tree.map(
        lambda s: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*s.spec[1:])), stacked["layers"]
    )
    shard_tree = dict(stacked, layers=tuple(layer_shardings for _ in range(cfg.num_layers)))
    if "tied_head" in unstacked:  # tied, cast to the compute dtype: sharded like the embedding
        shard_tree["tied_head"] = stacked["embed"]["embedding"]
    capacity = pc.sample_len // 2
    b, p = pc.sample_batch, pc.sample_len - capacity
    rows = sharding.logical_to_sharding(("batch", "length"), (b, p), mesh)
    rep = sharding.replicated(mesh)
    scalar = lambda dt: jax.ShapeDtypeStruct((), dt, sharding=rep)  # noqa: E731
    with sharding.activation_sharding(mesh):
        lowered = decode_loop.decode.lower(
            cfg,
            _sds(unstacked, shard_tree),
            jax.ShapeDtypeStruct((b, p), np.int32, sharding=rows),
            jax.ShapeDtypeStruct((b, p), np.bool_, sharding=rows),
            jax.ShapeDtypeStruct((b,), jax.random.key(0).dtype, sharding=rep),
            jax.ShapeDtypeStruct((1,), np.int32, sharding=rep),
            jax.ShapeDtypeStruct((1, 4), np.int32, sharding=rep),
            scalar(np.int32),
            scalar(np.float32),
            scalar(np.int32),
            scalar(np.float32),
            scalar(np.int32),
            capacity=capacity,
            cache_dtype=configured_cache_dtype(cfg),
        )
    with _no_persistent_cache():
        sample = compiler_memory(lowered.compile())
    return {"training step": train, "sampling": sample}


def format_compiled(mem: dict[str, dict[str, int]], plan: Plan, where: str) -> str:
    """The compiler's per-device figures beside the analytic totals.

    Args:
      mem: a `compiled_memory` result.
      plan: the analytic plan (`make_plan`).
      where: what it was compiled for, for the heading.

    Returns:
      The report's text, lines joined by newlines.
    """
    lines = [
        f"compiled ahead of time for {where} (XLA memory analysis, per device):",
        f"{'':<16}{'arguments':>11}{'outputs':>9}{'aliased':>9}{'temps':>9}{'peak':>9}{'plan':>9}  GiB",
    ]
    for what, analytic in (("training step", plan.train_total), ("sampling", plan.sample_total)):
        m = mem[what]
        peak = compiled_total(m)
        verdict = "fits" if plan.fits(peak) else "does NOT fit"
        lines.append(
            f"{what:<16}"
            + "".join(
                f"{m[k] / GIB:>{w}.2f}"
                for k, w in (("arguments", 11), ("outputs", 9), ("aliased", 9), ("temporaries", 9))
            )
            + f"{peak / GIB:>9.2f}{analytic / GIB:>9.2f}  {verdict}"
        )
    return "\n".join(lines)
