"""Hugging Face <-> isheep_jax conversion: a declarative name map plus per-tensor transforms.

Every tensor is converted on its own (read from a memory map, transformed, put on its
shards), so a big model never exists as a second whole f32 copy in host RAM.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh
from tqdm.auto import tqdm

from isheep_jax.core import io_utils
from isheep_jax.model import checkpoint
from isheep_jax.model.config import ConfigError, ModelConfig
from isheep_jax.model.convert.safetensors_io import SafetensorsFolder, write_safetensors
from isheep_jax.model.params import Params, abstract_params
from isheep_jax.parallel import sharding

log = logging.getLogger(__name__)

# HF tensors we know and deliberately ignore (recomputed buffers in old checkpoints).
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclasses.dataclass(frozen=True)
class TensorRule:
    """One HF tensor <-> one leaf of our tree (a slice of it for per-layer tensors).

    Attributes:
      hf: the Hugging Face tensor name; may contain '{i}' for the layer index.
      ours: the path of the leaf in our parameter tree.
      kind: 'copy' (same values, reshaped to our shape) or 'linear' (HF `[out, in]` weight
        -> our kernel `[*in_dims, *out_dims]`: transpose, then reshape).
      n_in: the number of in dims of our kernel ('linear').
    """

    hf: str  # may contain '{i}' for the layer index
    ours: tuple[str, ...]
    kind: str = "copy"
    n_in: int = 1

    @property
    def per_layer(self) -> bool:
        """Whether the HF name has a layer index (one HF tensor per layer of our leaf)."""
        return "{i}" in self.hf

    def to_ours(self, x: np.ndarray, shape: Sequence[int]) -> np.ndarray:
        """An HF tensor in our layout.

        Args:
          x: the HF tensor ([out, in] for 'linear').
          shape: our shape for it (one layer's slice for a per-layer leaf).

        Returns:
          `x` transposed ('linear') and reshaped to `shape`, in `x`'s dtype.
        """
        if self.kind == "linear":
            x = x.T
        return x.reshape(shape)

    def to_hf(self, x: np.ndarray) -> np.ndarray:
        """Our array (one layer's slice for a per-layer leaf) in the HF layout.

        Args:
          x: our array ([*in_dims, *out_dims] for 'linear').

        Returns:
          The HF tensor: [out, in] for 'linear', a flat vector for a bias, else `x` as it is.
        """
        if self.kind == "linear":
            n_in = math.prod(x.shape[: self.n_in])
            return x.reshape(n_in, -1).T
        return x.reshape(-1) if x.ndim > 1 and self.hf.endswith(".bias") else x


def hf_rules(cfg: ModelConfig) -> list[TensorRule]:
    """The name map for Llama / Qwen2 checkpoints.

    Args:
      cfg: the model configuration (tied embeddings and biases decide which tensors exist).

    Returns:
      One `TensorRule` per HF tensor name pattern.
    """
    pre = "model.layers.{i}."
    attn = ("layers", "attn")
    rules = [
        TensorRule("model.embed_tokens.weight", ("embed", "embedding")),
        TensorRule("model.norm.weight", ("final_norm", "scale")),
    ]
    if not cfg.tie_embeddings:
        rules.append(TensorRule("lm_head.weight", ("lm_head", "kernel"), "linear"))
    for proj in ("q", "k", "v"):
        rules.append(
            TensorRule(f"{pre}self_attn.{proj}_proj.weight", attn + (f"{proj}_proj", "kernel"), "linear")
        )
        if cfg.qkv_bias:
            rules.append(TensorRule(f"{pre}self_attn.{proj}_proj.bias", attn + (f"{proj}_proj", "bias")))
    rules.append(TensorRule(f"{pre}self_attn.o_proj.weight", attn + ("o_proj", "kernel"), "linear", n_in=2))
    if cfg.o_bias:
        rules.append(TensorRule(f"{pre}self_attn.o_proj.bias", attn + ("o_proj", "bias")))
    for proj in ("gate", "up", "down"):
        rules.append(
            TensorRule(f"{pre}mlp.{proj}_proj.weight", ("layers", "mlp", f"{proj}_proj", "kernel"), "linear")
        )
    rules.append(TensorRule(f"{pre}input_layernorm.weight", ("layers", "input_norm", "scale")))
    rules.append(TensorRule(f"{pre}post_attention_layernorm.weight", ("layers", "post_attn_norm", "scale")))
    return rules


def _get_path(tree: Any, path: tuple[str, ...]) -> Any:
    for p in path:
        tree = tree[p]
    return tree


def _set_path(tree: dict, path: tuple[str, ...], value: Any) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def hf_tensor_names(cfg: ModelConfig) -> set[str]:
    """Every Hugging Face tensor name the name map reads for `cfg` (all layers expanded).

    Args:
      cfg: the model configuration.

    Returns:
      The names, e.g. "model.layers.0.self_attn.q_proj.weight".
    """
    return {r.hf.format(i=i) for r in hf_rules(cfg) for i in range(cfg.num_layers)}


def params_from_tensors(
    cfg: ModelConfig,
    get: Callable[[str], np.ndarray],
    mesh: Mesh,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
    desc: str = "import",
) -> Params:
    """Builds our sharded params from `get(hf_name) -> array in HF layout`, one tensor at a time.

    Args:
      cfg: the model configuration (parameter dtype, layer count, name map).
      get: returns the HF tensor of a name, in HF layout (any dtype castable to ours).
      mesh: the mesh to shard over.
      rules: (logical name, mesh axes) pairs (`sharding.logical_to_pspec`).
      desc: the progress bar's label.

    Returns:
      The parameter tree in `cfg.param_dtype`, each leaf on its shards.

    Raises:
      ConfigError: a tensor's size does not match the config (and whatever `get` raises).
    """
    abstract, names = abstract_params(cfg)
    params: dict = {}
    table = hf_rules(cfg)
    for rule in tqdm(table, desc=desc, unit="tensor", leave=False):
        target = _get_path(abstract, rule.ours)
        layer_shape = target.shape[1:] if rule.per_layer else target.shape
        if rule.per_layer:
            arr = np.empty(target.shape, target.dtype)
            for i in range(cfg.num_layers):
                arr[i] = _checked(rule, rule.hf.format(i=i), get, layer_shape)
        else:
            arr = _checked(rule, rule.hf, get, layer_shape).astype(target.dtype)
        shard = sharding.logical_to_sharding(_get_path(names, rule.ours), arr.shape, mesh, rules)
        _set_path(params, rule.ours, jax.device_put(arr, shard))
        del arr
    return params


def _checked(
    rule: TensorRule, name: str, get: Callable[[str], np.ndarray], shape: Sequence[int]
) -> np.ndarray:
    x = np.asarray(get(name))
    want = math.prod(shape)
    if x.size != want:
        raise ConfigError(
            f"tensor {name!r} has shape {x.shape}, the config needs {want} values "
            f"(our shape {tuple(shape)}); config.json and weights disagree"
        )
    return rule.to_ours(x, shape)


def hf_tensors_from_params(
    cfg: ModelConfig, params: Params, dtype: Any = np.float32
) -> Iterator[tuple[str, np.ndarray]]:
    """Yields (HF name, array) in HF layout, one tensor at a time.

    Args:
      cfg: the model configuration.
      params: our (stacked) parameter tree.
      dtype: the numpy dtype of the arrays yielded.

    Yields:
      (HF tensor name, C-contiguous numpy array in `dtype`), in `hf_rules` order.
    """
    for rule in hf_rules(cfg):
        full = np.asarray(jax.device_get(_get_path(params, rule.ours))).astype(dtype)
        if rule.per_layer:
            for i in range(cfg.num_layers):
                yield rule.hf.format(i=i), np.ascontiguousarray(rule.to_hf(full[i]))
        else:
            yield rule.hf, np.ascontiguousarray(rule.to_hf(full))


def import_hf(
    hf_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    param_dtype: str = "float32",
    mesh: Mesh | None = None,
) -> ModelConfig:
    """Converts a Hugging Face folder (safetensors + config.json + tokenizer) to our checkpoint.

    Args:
      hf_dir: the Hugging Face model folder.
      out_dir: the model directory to create.
      param_dtype: the dtype of the saved parameters.
      mesh: the mesh to build the parameters on (default: `sharding.make_mesh()`).

    Returns:
      The config of the saved checkpoint.

    Raises:
      FileNotFoundError: `hf_dir` has no config.json.
      ConfigError: config.json is unsupported, or the tensors do not match its name map
        (unknown or missing tensors, wrong sizes).
      safetensors_io.SafetensorsError: the folder has no readable safetensors files.
      CheckpointError: `out_dir` already holds a complete checkpoint, or `hf_dir` has no
        tokenizer.json or tokenizer.model.
      io_utils.OutputDirError: `out_dir` holds other files, or is (or holds) `hf_dir`.
    """
    hf_dir = str(hf_dir)
    checkpoint.check_can_save(out_dir, [hf_dir])  # before reading any tensor
    cfg = ModelConfig.from_hf_file(str(io_utils.as_path(hf_dir) / "config.json")).replace(
        param_dtype=param_dtype
    )
    folder = SafetensorsFolder(hf_dir)
    known = hf_tensor_names(cfg)
    extra = [
        k
        for k in folder.keys()
        if k not in known
        and not k.endswith(_IGNORED_SUFFIXES)
        and not (cfg.tie_embeddings and k == "lm_head.weight")
    ]
    if extra:
        raise ConfigError(
            f"{hf_dir}: tensors not covered by the {cfg.model_type} name map "
            f"(unsupported architecture variant?): {extra[:8]}"
        )

    def get(name: str) -> np.ndarray:
        if name not in folder:
            raise ConfigError(f"{hf_dir}: missing tensor {name!r}")
        return folder.get(name)

    params = params_from_tensors(
        cfg, get, mesh or sharding.make_mesh(), desc=f"import {os.path.basename(hf_dir)}"
    )
    checkpoint.save_model(
        out_dir,
        params,
        cfg,
        tokenizer_dir=hf_dir,
        extra={"source": str(io_utils.absolute(hf_dir)), "source_format": "hf"},
        sources=[hf_dir],
    )
    return cfg


def export_hf(
    model_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    dtype: str = "float32",
    max_shard_bytes: int = 4 << 30,
) -> None:
    """Writes a Hugging Face folder (sharded safetensors + config.json + tokenizer files).

    Args:
      model_dir: our model directory.
      out_dir: the folder to write: a new or empty folder, or an interrupted export of
        ours (cleared); anything else is refused (`io_utils.claim_output_dir`).
      dtype: 'float32', 'bfloat16' or 'float16', the dtype of the written tensors.
      max_shard_bytes: the size above which a new safetensors shard starts (a single
        larger tensor gets a shard of its own).

    Raises:
      CheckpointError: `model_dir` is missing or incomplete, or its tokenizer/ folder has
        no tokenizer.json or tokenizer.model.
      io_utils.OutputDirError: `out_dir` holds files we did not write, or is (or holds)
        `model_dir`.
    """
    import ml_dtypes

    np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}[dtype]
    problem = io_utils.output_dir_problem(out_dir, [model_dir])
    if problem:  # before loading the model
        raise io_utils.OutputDirError(problem)
    cfg, params = checkpoint.load_model(model_dir)
    out = io_utils.claim_output_dir(out_dir, [model_dir])
    hf_cfg = cfg.to_hf_dict()
    hf_cfg["torch_dtype"] = dtype
    io_utils.write_json(out / "config.json", hf_cfg)

    # Shards are written as they fill (never the whole model in RAM), then renamed once
    # their total count is known.
    parts: list[tuple[str, list[str]]] = []
    pending: list[tuple[str, np.ndarray]] = []
    size = 0

    def flush() -> None:
        part = str(out / f".part-{len(parts):05d}.safetensors")
        write_safetensors(part, pending)
        parts.append((part, [name for name, _ in pending]))
        pending.clear()

    for name, arr in tqdm(
        hf_tensors_from_params(cfg, params, np_dtype), desc="export", unit="tensor", leave=False
    ):
        if pending and size + arr.nbytes > max_shard_bytes:
            flush()
            size = 0
        pending.append((name, arr))
        size += arr.nbytes
    flush()
    weight_map = {}
    for k, (part, names) in enumerate(parts):
        fname = (
            "model.safetensors" if len(parts) == 1 else f"model-{k + 1:05d}-of-{len(parts):05d}.safetensors"
        )
        io_utils.as_path(part).replace(out / fname)
        weight_map.update({name: fname for name in names})
    if len(parts) > 1:
        io_utils.write_json(out / "model.safetensors.index.json", {"metadata": {}, "weight_map": weight_map})
    tok = checkpoint.tokenizer_dir(model_dir)
    if io_utils.as_path(tok).is_dir():
        checkpoint.copy_tokenizer_files(tok, out)
    io_utils.release_output_dir(out)
