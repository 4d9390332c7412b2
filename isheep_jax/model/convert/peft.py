"""LoRA adapters on disk: our adapter folder, and its export as a PEFT (Hugging Face) adapter.

Which projections an adapter may target lives here, at the model layer, beside the Hugging
Face name map it mirrors (`hf.hf_rules`); the training math is `training/lora.py`.

Our adapter folder (written by the trainer as WORK/adapter):
  adapter.safetensors   '<target>.lora_a' [L, *in_dims, r] and '<target>.lora_b'
                        [L, r, *out_dims], f32, in our kernel layout (`LORA_TARGETS`)
  adapter.json          written last (its presence marks a complete folder):
                        {"format": "isheep_jax.lora", "rank", "alpha", "dropout",
                         "targets", "num_layers", "base_model", ...}

The delta of a target's kernel [L, *in_dims, *out_dims] is (alpha / r) * A @ B, contracted
over r. A PEFT folder (`export_peft`) holds `adapter_config.json` and
`adapter_model.safetensors` with, per layer i, `base_model.model.model.layers.{i}.
self_attn.q_proj.lora_A.weight` [r, in] and `...lora_B.weight` [out, r]: torch's
`W [out, in] += (alpha / r) * B @ A` is our kernel's delta, transposed and flattened.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from isheep_jax.core import io_utils
from isheep_jax.model.convert.safetensors_io import SafetensorsFile, write_safetensors
from isheep_jax.parallel import distributed

FORMAT = "isheep_jax.lora"
WEIGHTS_FILE = "adapter.safetensors"
META_FILE = "adapter.json"


@dataclasses.dataclass(frozen=True)
class LoraTarget:
    """One projection a LoRA adapter can target.

    Attributes:
      path: the projection's module in our parameter tree (its `kernel` is adapted).
      n_in: how many of the kernel's dims after `layers` are its in dims (o_proj: 2,
        [heads, head_dim]; the others: 1).
      hf_module: the module name in a Hugging Face Llama / Qwen2 decoder layer.
    """

    path: tuple[str, ...]
    n_in: int
    hf_module: str


# PEFT-style target names (the `target_modules` of a PEFT LoraConfig) -> our projections.
LORA_TARGETS: dict[str, LoraTarget] = {
    "q_proj": LoraTarget(("layers", "attn", "q_proj"), 1, "self_attn.q_proj"),
    "k_proj": LoraTarget(("layers", "attn", "k_proj"), 1, "self_attn.k_proj"),
    "v_proj": LoraTarget(("layers", "attn", "v_proj"), 1, "self_attn.v_proj"),
    "o_proj": LoraTarget(("layers", "attn", "o_proj"), 2, "self_attn.o_proj"),
    "gate_proj": LoraTarget(("layers", "mlp", "gate_proj"), 1, "mlp.gate_proj"),
    "up_proj": LoraTarget(("layers", "mlp", "up_proj"), 1, "mlp.up_proj"),
    "down_proj": LoraTarget(("layers", "mlp", "down_proj"), 1, "mlp.down_proj"),
}
ALL_TARGETS: tuple[str, ...] = tuple(LORA_TARGETS)


class AdapterError(ValueError):
    """An adapter folder that is missing, incomplete or inconsistent; the message names it."""


def check_targets(targets: Sequence[str]) -> tuple[str, ...]:
    """The target names as a tuple, checked.

    Args:
      targets: PEFT-style projection names (`LORA_TARGETS`' keys).

    Returns:
      `targets` as a tuple, in the given order.

    Raises:
      ValueError: no target, an unknown name (the message lists the known ones), or a
        name given twice.
    """
    targets = tuple(targets)
    if not targets:
        raise ValueError(f"lora_targets is empty; choose among {', '.join(ALL_TARGETS)}")
    unknown = [t for t in targets if t not in LORA_TARGETS]
    if unknown:
        raise ValueError(f"unknown lora_targets {unknown}; known: {', '.join(ALL_TARGETS)}")
    if len(set(targets)) != len(targets):
        raise ValueError(f"lora_targets names a projection twice: {list(targets)}")
    return targets


def is_complete(adapter_dir: str | os.PathLike) -> bool:
    """Whether `adapter_dir` holds a complete adapter folder (its adapter.json exists)."""
    return io_utils.exists(io_utils.as_path(adapter_dir) / META_FILE)


def save_adapter(
    adapter_dir: str | os.PathLike,
    adapters: Mapping[str, Mapping[str, np.ndarray]],
    rank: int,
    alpha: float,
    dropout: float,
    base_model: str,
    extra: dict[str, Any] | None = None,
) -> None:
    """Writes our adapter folder (see the module docstring); adapter.json is written last.

    Every process must call it; process 0 writes (the arrays are whole on every process).

    Args:
      adapter_dir: the folder to write: new, empty, or an interrupted save of ours.
      adapters: target name -> {'lora_a': [L, *in, r], 'lora_b': [L, r, *out]} host arrays.
      rank: r.
      alpha: the LoRA alpha (the delta is scaled by alpha / r).
      dropout: the LoRA dropout the adapters were trained with (recorded for PEFT).
      base_model: the checkpoint the adapters apply to.
      extra: more entries for adapter.json.

    Raises:
      io_utils.OutputDirError: `adapter_dir` holds files we did not write.
    """
    out = io_utils.claim_output_dir(adapter_dir)
    names = check_targets(list(adapters))
    if distributed.is_writer():
        tensors = [
            (f"{t}.{k}", np.ascontiguousarray(np.asarray(adapters[t][k], np.float32)))
            for t in names
            for k in ("lora_a", "lora_b")
        ]
        write_safetensors(str(out / WEIGHTS_FILE), tensors, {"format": "np"})
    num_layers = int(np.shape(adapters[names[0]]["lora_a"])[0])
    meta = {
        "format": FORMAT,
        "rank": int(rank),
        "alpha": float(alpha),
        "dropout": float(dropout),
        "targets": list(names),
        "num_layers": num_layers,
        "base_model": os.fspath(base_model),
        **(extra or {}),
    }
    io_utils.write_json(out / META_FILE, meta)
    io_utils.release_output_dir(out)


def load_adapter(adapter_dir: str | os.PathLike) -> tuple[dict[str, Any], dict[str, dict[str, np.ndarray]]]:
    """Reads our adapter folder.

    Args:
      adapter_dir: the folder `save_adapter` wrote.

    Returns:
      (the adapter.json dict, target name -> {'lora_a', 'lora_b'} f32 numpy arrays).

    Raises:
      AdapterError: the folder is missing, incomplete, of another format, or its tensors
        do not match adapter.json.
    """
    path = io_utils.as_path(adapter_dir)
    if not is_complete(path):
        raise AdapterError(f"{path}: not a complete adapter folder (no {META_FILE})")
    meta = io_utils.read_json(path / META_FILE)
    if meta.get("format") != FORMAT:
        raise AdapterError(f"{path / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    f = SafetensorsFile(str(path / WEIGHTS_FILE))
    adapters = {}
    for t in meta["targets"]:
        try:
            adapters[t] = {k: np.asarray(f.get(f"{t}.{k}"), np.float32) for k in ("lora_a", "lora_b")}
        except KeyError as e:
            raise AdapterError(f"{path / WEIGHTS_FILE}: missing tensor {e} for target {t!r}") from e
        a, b = adapters[t]["lora_a"], adapters[t]["lora_b"]
        if a.shape[-1] != meta["rank"] or b.shape[1] != meta["rank"] or a.shape[0] != meta["num_layers"]:
            raise AdapterError(
                f"{path / WEIGHTS_FILE}: {t} has lora_a {a.shape}, lora_b {b.shape}; adapter.json "
                f"says rank {meta['rank']}, {meta['num_layers']} layers"
            )
    return meta, adapters


def peft_tensors(adapters: Mapping[str, Mapping[str, np.ndarray]]) -> list[tuple[str, np.ndarray]]:
    """Our adapters as PEFT's (name, tensor) pairs.

    Args:
      adapters: target name -> {'lora_a': [L, *in, r], 'lora_b': [L, r, *out]}.

    Returns:
      Per layer and target, ('base_model.model.model.layers.{i}.<module>.lora_A.weight',
      [r, in]) and ('...lora_B.weight', [out, r]), f32, C-contiguous; in and out are the
      flattened in / out dims, in the order the Hugging Face weight's columns / rows have.
    """
    out = []
    for t, ab in adapters.items():
        a, b = np.asarray(ab["lora_a"], np.float32), np.asarray(ab["lora_b"], np.float32)
        layers, r = a.shape[0], a.shape[-1]
        prefix = "base_model.model.model.layers.{i}." + LORA_TARGETS[t].hf_module
        for i in range(layers):
            out.append((f"{prefix.format(i=i)}.lora_A.weight", np.ascontiguousarray(a[i].reshape(-1, r).T)))
            out.append((f"{prefix.format(i=i)}.lora_B.weight", np.ascontiguousarray(b[i].reshape(r, -1).T)))
    return out


def peft_config(meta: Mapping[str, Any], base_model_name_or_path: str) -> dict[str, Any]:
    """The `adapter_config.json` of a PEFT LoRA adapter for our adapter.json.

    Args:
      meta: our adapter.json dict (rank, alpha, dropout, targets).
      base_model_name_or_path: what PEFT records as the base model (a Hub id or the
        folder of `isheep export-hf`).

    Returns:
      The PEFT LoraConfig fields; those we do not use have PEFT's defaults.
    """
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": int(meta["rank"]),
        "lora_alpha": float(meta["alpha"]),
        "lora_dropout": float(meta["dropout"]),
        "target_modules": sorted(meta["targets"]),
        "bias": "none",
        "fan_in_fan_out": False,
        "inference_mode": True,
        "init_lora_weights": True,
        "use_rslora": False,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "revision": None,
    }


def export_peft(
    adapter_dir: str | os.PathLike, out_dir: str | os.PathLike, base_model_name_or_path: str | None = None
) -> str:
    """Writes a PEFT adapter folder for our adapter folder.

    Load it with `peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE),
    OUT)`, where BASE is the `isheep export-hf` folder of the checkpoint the adapters were
    trained on (or that model's Hub id).

    Args:
      adapter_dir: our adapter folder (WORK/adapter of a LoRA training run).
      out_dir: the folder to write: new, empty, or an interrupted export of ours.
      base_model_name_or_path: recorded in adapter_config.json (None: the `base_model` of
        adapter.json, our checkpoint the adapters were trained on).

    Returns:
      The recorded base_model_name_or_path.

    Raises:
      AdapterError: `adapter_dir` is not a complete adapter folder.
      io_utils.OutputDirError: `out_dir` holds files we did not write, or is `adapter_dir`.
    """
    meta, adapters = load_adapter(adapter_dir)
    base = base_model_name_or_path if base_model_name_or_path is not None else meta.get("base_model", "")
    out = io_utils.claim_output_dir(out_dir, [adapter_dir])
    if distributed.is_writer():
        write_safetensors(str(out / "adapter_model.safetensors"), peft_tensors(adapters), {"format": "pt"})
    io_utils.write_json(out / "adapter_config.json", peft_config(meta, base))
    io_utils.release_output_dir(out)
    return base
