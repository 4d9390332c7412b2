"""GGUF (llama.cpp) -> isheep_jax checkpoint: dequantise, un-permute Q/K, carry the tokenizer.

llama.cpp's converter permutes Llama Q/K rows for its interleaved RoPE; our RoPE is the
Hugging Face half-split layout, so those rows are permuted back (Qwen2 files are not
permuted). Tensors are mapped to Hugging Face names and then go through the same name
map as a Hugging Face import (`hf.params_from_tensors`), one tensor at a time.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterable
from typing import Any

import numpy as np
from jax.sharding import Mesh

from isheep_jax.model import checkpoint
from isheep_jax.model.config import ConfigError, ModelConfig
from isheep_jax.model.convert import hf
from isheep_jax.parallel import sharding

_LAYER_NAMES = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
    "input_layernorm": "attn_norm",
    "post_attention_layernorm": "ffn_norm",
}
_GLOBAL_NAMES = {
    "model.embed_tokens.weight": "token_embd.weight",
    "model.norm.weight": "output_norm.weight",
    "lm_head.weight": "output.weight",
}
_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)$")


def gguf_name(hf_name: str) -> str:
    """The GGUF tensor name for a Hugging Face tensor name.

    Args:
      hf_name: e.g. 'model.layers.3.self_attn.q_proj.weight'.

    Returns:
      The GGUF name, e.g. 'blk.3.attn_q.weight'.

    Raises:
      KeyError: the name has no GGUF counterpart in the map.
    """
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER_RE.match(hf_name)
    if not m or m.group(2) not in _LAYER_NAMES:
        raise KeyError(hf_name)
    return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}.{m.group(3)}"


def unpermute_qk(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Inverse of llama.cpp's Q/K row permutation (interleaved -> half-split RoPE layout).

    Args:
      w: a Q or K weight [n_heads * head_dim, hidden] (or bias [n_heads * head_dim]) in
        Hugging Face [out, in] layout, rows permuted by llama.cpp.
      n_heads: the number of heads of `w` (query heads for Q, kv heads for K).

    Returns:
      `w` with its rows in the half-split order, same shape and dtype.
    """
    half = w.shape[0] // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def check_tensor_names(cfg: ModelConfig, names: Iterable[str], path: str) -> None:
    """Refuses a GGUF file holding tensors the name map does not cover: each would be lost.

    Args:
      cfg: the config read from the file's metadata.
      names: the file's tensor names.
      path: the file's path, for the message.

    Raises:
      ConfigError: naming the tensors; `rope_freqs.weight` (Llama-3.1-style RoPE scaling
        stored as per-dimension frequency factors) gets its own message.
    """
    known = set()
    for hf_name in hf.hf_tensor_names(cfg):
        try:
            known.add(gguf_name(hf_name))
        except KeyError:
            pass
    extra = sorted(set(names) - known)
    if "rope_freqs.weight" in extra:
        raise ConfigError(
            f"{path}: holds rope_freqs.weight, RoPE scaling stored as per-dimension frequency factors "
            "(Llama-3.1 and later), which this importer does not read; import the model's Hugging Face "
            "safetensors instead (isheep import-hf), whose config.json states the scaling"
        )
    if extra:
        raise ConfigError(f"{path}: tensors not covered by the {cfg.model_type} name map: {extra[:8]}")


def _field(reader: Any, key: str, default: Any = None) -> Any:
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config_from_gguf(reader: Any, path: str) -> ModelConfig:
    """The `ModelConfig` that a GGUF file's metadata and tensor names describe.

    Biases are read off the tensor names (q/k/v from blk.0.attn_q.bias; o from
    blk.0.attn_output.bias, Llama only); the embeddings are tied where there is no
    output.weight.

    Args:
      reader: a `gguf.GGUFReader` of the file.
      path: the file's path, for error messages.

    Returns:
      The config (compute and parameter dtypes float32).

    Raises:
      ConfigError: an architecture other than llama and qwen2, missing required metadata,
        RoPE scaling in the metadata, or values the model cannot run.
    """
    arch = _field(reader, "general.architecture")
    if arch not in ("llama", "qwen2"):
        raise ConfigError(f"{path}: unsupported GGUF architecture {arch!r} (llama, qwen2)")

    def req(key: str) -> Any:
        v = _field(reader, f"{arch}.{key}")
        if v is None:
            raise ConfigError(f"{path}: missing GGUF metadata {arch}.{key}")
        return v

    names = {t.name for t in reader.tensors}
    hidden, heads = int(req("embedding_length")), int(req("attention.head_count"))
    if _field(reader, f"{arch}.rope.scaling.type") not in (None, "none"):
        raise ConfigError(f"{path}: rope scaling in GGUF metadata is not supported")
    tokens = _field(reader, "tokenizer.ggml.tokens")
    vocab = int(_field(reader, f"{arch}.vocab_size", len(tokens) if tokens else 0))
    eos = _field(reader, "tokenizer.ggml.eos_token_id")
    qkv_bias = "blk.0.attn_q.bias" in names
    return ModelConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(req("feed_forward_length")),
        num_layers=int(req("block_count")),
        num_heads=heads,
        num_kv_heads=int(_field(reader, f"{arch}.attention.head_count_kv", heads)),
        head_dim=int(_field(reader, f"{arch}.attention.key_length", hidden // heads)),
        rms_norm_eps=float(req("attention.layer_norm_rms_epsilon")),
        rope_theta=float(_field(reader, f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(_field(reader, f"{arch}.context_length", 4096)),
        qkv_bias=qkv_bias,
        o_bias="blk.0.attn_output.bias" in names and arch == "llama",
        tie_embeddings="output.weight" not in names,
        model_type=arch,
        bos_token_id=_field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_ids=() if eos is None else (int(eos),),
        pad_token_id=_field(reader, "tokenizer.ggml.padding_token_id"),
    )


def import_gguf(
    gguf_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    param_dtype: str = "float32",
    mesh: Mesh | None = None,
) -> ModelConfig:
    """Converts a GGUF file (weights + tokenizer) to our checkpoint directory.

    Needs the `gguf` package and transformers (the [hf] extra). Weights are dequantised to
    f32, then cast to `param_dtype`.

    Args:
      gguf_path: the .gguf file.
      out_dir: the model directory to create.
      param_dtype: the dtype of the saved parameters.
      mesh: the mesh to build the parameters on (default: `sharding.make_mesh()`).

    Returns:
      The config of the saved checkpoint.

    Raises:
      FileNotFoundError: there is no such file.
      ConfigError: the file is not readable GGUF, describes an unsupported model, or lacks
        a tensor.
      CheckpointError: `out_dir` already holds a complete checkpoint.
      io_utils.OutputDirError: `out_dir` holds other files, or the GGUF file itself.
    """
    import gguf  # optional dependency: the [hf] extra

    path = str(gguf_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such GGUF file")
    checkpoint.check_can_save(out_dir, [path])  # before the minutes of dequantising
    try:
        reader = gguf.GGUFReader(path)
    except Exception as e:  # the reader raises ValueError/struct.error on bad files
        raise ConfigError(f"{path}: not a readable GGUF file: {e}") from e
    cfg = config_from_gguf(reader, path).replace(param_dtype=param_dtype)
    tensors = {t.name: t for t in reader.tensors}
    check_tensor_names(cfg, tensors, path)

    def get(hf_name: str) -> np.ndarray:
        name = gguf_name(hf_name)
        if name not in tensors:
            raise ConfigError(f"{path}: missing tensor {name!r} (for {hf_name})")
        t = tensors[name]
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        if cfg.model_type == "llama" and t.name.endswith(("attn_q.weight", "attn_q.bias")):
            w = unpermute_qk(w, cfg.num_heads)
        elif cfg.model_type == "llama" and t.name.endswith(("attn_k.weight", "attn_k.bias")):
            w = unpermute_qk(w, cfg.num_kv_heads)
        return w

    params = hf.params_from_tensors(
        cfg, get, mesh or sharding.make_mesh(), desc=f"import {os.path.basename(path)}"
    )
    with tempfile.TemporaryDirectory() as tok_dir:
        save_gguf_tokenizer(path, tok_dir)
        checkpoint.save_model(
            out_dir,
            params,
            cfg,
            tokenizer_dir=tok_dir,
            extra={"source": os.path.abspath(path), "source_format": "gguf"},
            sources=[path],
        )
    return cfg


def save_gguf_tokenizer(gguf_path: str, out_dir: str) -> None:
    """Writes the tokenizer carried in the GGUF file as Hugging Face tokenizer files.

    Uses transformers' GGUF tokenizer converter (the [hf] extra), which rebuilds the
    BPE/SentencePiece model, special tokens and chat template from the metadata.

    Args:
      gguf_path: the .gguf file.
      out_dir: the folder to write the tokenizer files into.
    """
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(
        os.path.dirname(os.path.abspath(gguf_path)), gguf_file=os.path.basename(gguf_path)
    )
    tok.save_pretrained(out_dir)
