"""Model configuration: one frozen dataclass for the Llama 1/2/3 and Qwen2 (= Qwen1.5) families.

`ModelConfig.from_hf_dict` reads a Hugging Face `config.json` (both the classic
`rope_theta` / `rope_scaling` keys and the transformers-5 `rope_parameters` key) and
refuses anything the model does not implement, naming the field. `to_hf_dict` writes
one back that `transformers.AutoConfig` reads.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any, Literal

import gin

from isheep_jax.core import choices, io_utils

RematPolicy = Literal["none", "full", "dots"]  # what the backward pass recomputes
AttentionImpl = Literal["xla", "cudnn"]  # the full forward's attention

SUPPORTED_ARCHITECTURES = {"LlamaForCausalLM": "llama", "Qwen2ForCausalLM": "qwen2"}


class ConfigError(ValueError):
    """A model configuration that this implementation cannot run faithfully."""


@gin.configurable
@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a decoder-only transformer.

    The constructor validates the fields (`__post_init__`) and raises `ConfigError`.

    Attributes:
      vocab_size: V, the number of token ids.
      hidden_size: E, the width of the residual stream.
      intermediate_size: F, the width of the SwiGLU MLP.
      num_layers: L, the number of decoder layers.
      num_heads: H, the number of query heads.
      num_kv_heads: K, the number of key/value heads (H is a multiple of K).
      head_dim: D, the per-head dimension.
      rms_norm_eps: the epsilon of every RMSNorm.
      rope_theta: the RoPE base.
      rope_scaling: None, or the (key, value) pairs of a 'llama3' or 'linear' RoPE scaling.
      max_position_embeddings: the model's maximum context length (prompt plus new tokens).
      qkv_bias: whether q/k/v projections have biases.
      o_bias: whether the output projection has a bias.
      tie_embeddings: whether the output head is the token embedding (no `lm_head`).
      model_type: 'llama' or 'qwen2': decides the Hugging Face architecture on export.
      bos_token_id: the beginning-of-sequence id, if any.
      eos_token_ids: the end-of-sequence ids (possibly several).
      pad_token_id: the padding id, if any.
      dtype: the compute dtype of activations and matmuls.
      param_dtype: the dtype of the stored parameters (f32 for training, may be bf16 for
        sampling-only use).
      remat_policy: what the backward pass recomputes: 'none', 'full' or 'dots'.
      scan_layers: whether the layers run as one `lax.scan` (else unrolled).
      attention_impl: the full forward's attention: 'xla' or 'cudnn'.
    """

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or a tuple of (key, value) pairs, e.g. (("rope_type", "llama3"), ("factor", 8.0), ...).
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    o_bias: bool = False
    tie_embeddings: bool = False
    model_type: str = "llama"  # 'llama' | 'qwen2': decides the HF architecture on export.
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()
    pad_token_id: int | None = None
    dtype: str = "float32"
    param_dtype: str = "float32"
    # Memory knobs (see sharding/remat in README): 'none' | 'full' | 'dots'.
    remat_policy: RematPolicy = "none"
    # True: the layers run as one `lax.scan` (one compiled layer body: fast compiles, small
    # programs for 80-layer models); False: unrolled (XLA may schedule across layers, at
    # the cost of compile time). The parameter layout (stacked over `layers`) is the same.
    scan_layers: bool = True
    # Attention of the full forward (training, evaluation losses): 'xla' (ours: scores in
    # f32, any backend) or 'cudnn' (jax.nn.dot_product_attention's fused cuDNN kernel: NVIDIA
    # GPUs, bf16/fp16 compute; never materialises the [T, T] scores). Decoding keeps ours.
    attention_impl: AttentionImpl = "xla"

    def __post_init__(self) -> None:
        """Validates the fields; raises `ConfigError` naming the first one that is invalid."""
        for name in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
        ):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})"
            )
        if self.model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ConfigError(
                f"model_type {self.model_type!r} not in {sorted(SUPPORTED_ARCHITECTURES.values())}"
            )
        for name, choice in (("remat_policy", RematPolicy), ("attention_impl", AttentionImpl)):
            try:
                choices.check("ModelConfig", name, getattr(self, name), choice)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        if self.attention_impl == "cudnn" and self.dtype not in ("bfloat16", "float16"):
            raise ConfigError(f"attention_impl 'cudnn' needs bfloat16 or float16 compute, not {self.dtype}")
        if self.rope_scaling is not None:
            rope_type = dict(self.rope_scaling).get("rope_type")
            if rope_type not in ("llama3", "linear"):
                raise ConfigError(f"rope scaling type {rope_type!r} is not supported (llama3, linear)")

    @property
    def rope_scaling_dict(self) -> dict[str, Any] | None:
        """`rope_scaling` as a dict, or None without scaling."""
        return None if self.rope_scaling is None else dict(self.rope_scaling)

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again).

        Args:
          **changes: field names and their new values.

        Returns:
          The new config.

        Raises:
          ConfigError: the changed config is invalid.
        """
        return dataclasses.replace(self, **changes)

    def num_params(self) -> int:
        """Exact parameter count (embeddings counted once when tied).

        Returns:
          The number of scalar parameters, biases and norm scales included.
        """
        e, f, h, kv, d = (
            self.hidden_size,
            self.intermediate_size,
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
        )
        attn = e * h * d * 2 + e * kv * d * 2
        if self.qkv_bias:
            attn += h * d + 2 * kv * d
        if self.o_bias:
            attn += e
        layer = attn + 3 * e * f + 2 * e
        head = 0 if self.tie_embeddings else e * self.vocab_size
        return self.vocab_size * e + self.num_layers * layer + e + head

    # ----------------------------------------------------------------- serialisation
    def to_json_dict(self) -> dict[str, Any]:
        """The fields as a JSON-serialisable dict (our `config.json`, read by `from_json_dict`).

        Returns:
          One entry per field; `rope_scaling` as a dict (or None), `eos_token_ids` as a list.
        """
        d = dataclasses.asdict(self)
        d["rope_scaling"] = self.rope_scaling_dict
        d["eos_token_ids"] = list(self.eos_token_ids)
        return d

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any], source: str = "config") -> ModelConfig:
        """The config that `to_json_dict` wrote.

        Args:
          d: the dict (fields left out take their defaults).
          source: what `d` came from, for error messages.

        Returns:
          The config.

        Raises:
          ConfigError: `d` has unknown fields, lacks a required one, or holds invalid values.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ConfigError(f"{source}: unknown fields {unknown}")
        d = dict(d)
        if d.get("rope_scaling") is not None:
            d["rope_scaling"] = tuple(sorted(d["rope_scaling"].items()))
        d["eos_token_ids"] = tuple(d.get("eos_token_ids", ()))
        try:
            return cls(**d)
        except TypeError as e:  # a missing required field
            raise ConfigError(f"{source}: {e}") from None

    def save(self, path: str) -> None:
        """Writes `to_json_dict` as JSON, atomically (`io_utils.write_text_atomic`).

        Args:
          path: the file to write.
        """
        io_utils.write_text_atomic(path, json.dumps(self.to_json_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, path: str) -> ModelConfig:
        """Reads a config that `save` wrote.

        Args:
          path: the JSON file.

        Returns:
          The config.

        Raises:
          FileNotFoundError: there is no such file.
          io_utils.DataError: the file is not valid JSON.
          ConfigError: the fields are unknown, missing or invalid.
        """
        return cls.from_json_dict(io_utils.read_json(path), source=str(path))

    # ----------------------------------------------------------------- Hugging Face
    @classmethod
    def from_hf_dict(cls, hf: Mapping[str, Any], source: str = "config.json") -> ModelConfig:
        """Builds a config from a Hugging Face `config.json` dict, refusing unsupported features.

        The architecture comes from `architectures` (else `model_type`). RoPE settings are
        read from `rope_theta` / `rope_scaling` or from transformers-5 `rope_parameters`; a
        legacy `type` key counts as `rope_type`, and 'default' means no scaling. Qwen2 always
        has q/k/v biases and no o_proj bias; Llama's `attention_bias` covers all four.

        Args:
          hf: the parsed `config.json`.
          source: what `hf` came from, for error messages.

        Returns:
          The config (compute and parameter dtypes float32).

        Raises:
          ConfigError: an unsupported architecture or feature, a missing required field, or
            values the model cannot run; the message names the field.
        """
        archs = hf.get("architectures") or []
        model_type = hf.get("model_type")
        if archs:
            bad = [a for a in archs if a not in SUPPORTED_ARCHITECTURES]
            if bad:
                raise ConfigError(
                    f"{source}: unsupported architectures {bad}; supported: {sorted(SUPPORTED_ARCHITECTURES)}"
                )
            model_type = SUPPORTED_ARCHITECTURES[archs[0]]
        if model_type not in SUPPORTED_ARCHITECTURES.values():
            raise ConfigError(
                f"{source}: unsupported model_type {model_type!r}; supported: "
                f"{sorted(SUPPORTED_ARCHITECTURES.values())}"
            )
        _refuse_unsupported(hf, model_type, source)

        def req(key: str) -> Any:
            if key not in hf or hf[key] is None:
                raise ConfigError(f"{source}: missing required field {key!r}")
            return hf[key]

        hidden, heads = int(req("hidden_size")), int(req("num_attention_heads"))
        rope = dict(hf.get("rope_parameters") or {})
        rope_theta = float(hf.get("rope_theta") or rope.pop("rope_theta", None) or 10000.0)
        rope.pop("rope_theta", None)
        scaling = hf.get("rope_scaling") or rope
        scaling = {k: v for k, v in dict(scaling).items() if k != "rope_theta"}
        if "type" in scaling and "rope_type" not in scaling:
            scaling["rope_type"] = scaling.pop("type")
        if scaling.get("rope_type", "default") == "default":
            scaling = {}
        eos = hf.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        bias = bool(hf.get("attention_bias", False))
        return cls(
            vocab_size=int(req("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(req("intermediate_size")),
            num_layers=int(req("num_hidden_layers")),
            num_heads=heads,
            num_kv_heads=int(hf.get("num_key_value_heads") or heads),
            head_dim=int(hf.get("head_dim") or hidden // heads),
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=tuple(sorted(scaling.items())) or None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 4096)),
            # Qwen2 always has q/k/v biases and no o_proj bias; Llama's attention_bias covers all four.
            qkv_bias=True if model_type == "qwen2" else bias,
            o_bias=False if model_type == "qwen2" else bias,
            tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            model_type=model_type,
            bos_token_id=hf.get("bos_token_id"),
            eos_token_ids=eos_ids,
            pad_token_id=hf.get("pad_token_id"),
        )

    @classmethod
    def from_hf_file(cls, path: str) -> ModelConfig:
        """`from_hf_dict` of a Hugging Face `config.json` file.

        Args:
          path: the `config.json` file.

        Returns:
          The config.

        Raises:
          FileNotFoundError: there is no such file.
          io_utils.DataError: the file is not valid JSON.
          ConfigError: as `from_hf_dict`.
        """
        return cls.from_hf_dict(io_utils.read_json(path), source=str(path))

    def to_hf_dict(self) -> dict[str, Any]:
        """A Hugging Face `config.json` dict for this config, which `transformers.AutoConfig` reads.

        Returns:
          The dict (`torch_dtype` float32; the exporter sets the dtype it writes).

        Raises:
          ConfigError: the biases cannot be expressed in the architecture (Llama: q/k/v and o
            together; Qwen2: q/k/v biases and no o_proj bias).
        """
        arch = {v: k for k, v in SUPPORTED_ARCHITECTURES.items()}[self.model_type]
        d: dict[str, Any] = {
            "architectures": [arch],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling_dict,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": (
                list(self.eos_token_ids)
                if len(self.eos_token_ids) > 1
                else (self.eos_token_ids[0] if self.eos_token_ids else None)
            ),
            "pad_token_id": self.pad_token_id,
            "torch_dtype": "float32",
        }
        if self.model_type == "llama":
            if self.qkv_bias != self.o_bias:
                raise ConfigError(
                    "Llama's attention_bias covers q/k/v and o together; "
                    f"qkv_bias={self.qkv_bias} o_bias={self.o_bias} cannot be exported"
                )
            d["attention_bias"] = self.qkv_bias
            d["mlp_bias"] = False
        else:
            if not self.qkv_bias or self.o_bias:
                raise ConfigError("Qwen2 has q/k/v biases and no o_proj bias; this config differs")
            d["use_sliding_window"] = False
        return d


def _refuse_unsupported(hf: Mapping[str, Any], model_type: str, source: str) -> None:
    """Raises on config features whose semantics our model does not implement."""
    problems = []
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):
        problems.append(f"hidden_act={hf['hidden_act']!r} (only silu)")
    if hf.get("mlp_bias"):
        problems.append("mlp_bias=true")
    if model_type == "qwen2" and hf.get("use_sliding_window"):
        problems.append("use_sliding_window=true (sliding-window attention)")
    if model_type == "llama" and hf.get("sliding_window"):
        problems.append(f"sliding_window={hf['sliding_window']}")
    for moe_key in ("num_experts", "num_local_experts", "moe_intermediate_size"):
        if hf.get(moe_key):
            problems.append(f"{moe_key}={hf[moe_key]} (mixture of experts)")
    if int(hf.get("pretraining_tp", 1) or 1) != 1:
        problems.append(f"pretraining_tp={hf['pretraining_tp']}")
    if problems:
        raise ConfigError(f"{source}: unsupported config fields: " + "; ".join(problems))
