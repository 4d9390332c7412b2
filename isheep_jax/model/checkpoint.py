"""Model checkpoints: our config + orbax-saved (sharded) params + the tokenizer files.

Layout of a model directory:
  config.json      our ModelConfig
  params/          orbax StandardCheckpointer tree (written atomically by orbax)
  tokenizer/       tokenizer.json / tokenizer.model / tokenizer_config.json ... as imported
  model.json       written last: {"format": "isheep_jax.model", ...}; its presence marks a
                   complete checkpoint (a killed save leaves a directory without it)
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from jax.sharding import Mesh

from isheep_jax.core import io_utils
from isheep_jax.model.config import ModelConfig
from isheep_jax.model.params import Params, abstract_params
from isheep_jax.parallel import distributed, sharding

FORMAT = "isheep_jax.model"
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
)


class CheckpointError(ValueError):
    """A model directory that is missing, incomplete or inconsistent."""


def is_complete(model_dir: str | os.PathLike) -> bool:
    """Whether `model_dir` holds a complete checkpoint (its model.json exists).

    The same answer on every process (`io_utils.exists`): every process must call it.

    Args:
      model_dir: the model directory (local or a URL).

    Returns:
      Whether model.json is there.
    """
    return io_utils.exists(io_utils.as_path(model_dir) / "model.json")


def save_model(
    model_dir: str | os.PathLike,
    params: Params,
    cfg: ModelConfig,
    tokenizer_dir: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
    sources: Sequence[str | os.PathLike] = (),
) -> None:
    """Saves params + config (+ tokenizer files). An existing complete checkpoint is refused.

    The folder is claimed first (`io_utils.claim_output_dir`): a missing or empty folder,
    or a leftover of a killed save of ours, which is cleared; a folder holding anything
    else, or the input itself, is refused before anything is written. model.json is
    written last. In a multi-process run every process must call it (each saves its own
    shards).

    Args:
      model_dir: the model directory to create (local or a URL).
      params: the parameter tree (sharded or not).
      cfg: the model configuration, saved as config.json.
      tokenizer_dir: a folder whose tokenizer files (`TOKENIZER_FILES`) are copied into
        tokenizer/ (None: no tokenizer).
      extra: more entries for model.json (e.g. the source of an import).
      sources: the inputs of the save (the output may neither be nor hold one of them);
        `tokenizer_dir` counts as one.

    Raises:
      CheckpointError: `model_dir` already holds a complete checkpoint, or `tokenizer_dir`
        has neither tokenizer.json nor tokenizer.model.
      io_utils.OutputDirError: `model_dir` holds files we did not write, or the input.
    """

    path = io_utils.absolute(model_dir)
    _refuse_complete(path)
    if tokenizer_dir is not None and not any(
        (io_utils.as_path(tokenizer_dir) / n).exists() for n in ("tokenizer.json", "tokenizer.model")
    ):
        raise CheckpointError(f"{tokenizer_dir}: no tokenizer.json or tokenizer.model")  # before any write
    srcs = [*sources, *([tokenizer_dir] if tokenizer_dir is not None else [])]
    io_utils.claim_output_dir(path, srcs)  # refuses a folder of other files, or the input
    # Every process saves its own params shards; io_utils writes (and waits for) the small files
    # once; the rest is process 0's.
    cfg.save(str(path / "config.json"))
    ckptr = ocp.StandardCheckpointer()
    ckptr.save(path / "params", params)
    ckptr.wait_until_finished()
    if tokenizer_dir is not None and distributed.is_writer():
        copy_tokenizer_files(tokenizer_dir, path / "tokenizer")
    io_utils.write_json(path / "model.json", {"format": FORMAT, "created": time.time(), **(extra or {})})
    io_utils.release_output_dir(path)


def _refuse_complete(model_dir: str | os.PathLike) -> None:
    if is_complete(model_dir):
        raise CheckpointError(
            f"{io_utils.absolute(model_dir)}: a complete checkpoint already exists; refusing to overwrite"
        )


def check_can_save(model_dir: str | os.PathLike, sources: Sequence[str | os.PathLike] = ()) -> None:
    """Raises now what `save_model(model_dir, ...)` would refuse later, before expensive work.

    Args:
      model_dir: the model directory a save will write.
      sources: the save's inputs (see `io_utils.output_dir_problem`).

    Raises:
      CheckpointError: `model_dir` already holds a complete checkpoint.
      io_utils.OutputDirError: `model_dir` holds files we did not write, or the input.
    """
    _refuse_complete(model_dir)
    problem = io_utils.output_dir_problem(model_dir, sources)
    if problem:
        raise io_utils.OutputDirError(problem)


def copy_tokenizer_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copies the `TOKENIZER_FILES` that `src` has into `dst` (created; files overwritten).

    Args:
      src: the folder to copy from.
      dst: the folder to copy into.

    Returns:
      The names of the files copied, in `TOKENIZER_FILES` order.

    Raises:
      CheckpointError: `src` has neither tokenizer.json nor tokenizer.model (the other
        files are copied nonetheless).
    """
    src, dst = io_utils.as_path(src), io_utils.as_path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in TOKENIZER_FILES:
        if (src / name).exists():
            (src / name).copy(dst / name, overwrite=True)
            copied.append(name)
    if not any(n in copied for n in ("tokenizer.json", "tokenizer.model")):
        raise CheckpointError(f"{src}: no tokenizer.json or tokenizer.model")
    return copied


def load_config(model_dir: str | os.PathLike) -> ModelConfig:
    """The `ModelConfig` of a complete checkpoint.

    Args:
      model_dir: the model directory.

    Returns:
      The config from its config.json.

    Raises:
      CheckpointError: the directory does not exist or the checkpoint is incomplete.
    """
    path = io_utils.as_path(model_dir)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model directory")
    if not is_complete(path):
        raise CheckpointError(f"{path}: incomplete checkpoint (no model.json; the save was interrupted?)")
    return ModelConfig.load(str(path / "config.json"))


def load_model(
    model_dir: str | os.PathLike,
    mesh: Mesh | None = None,
    rules: Sequence[tuple[str, Any]] = sharding.DEFAULT_RULES,
    **config_overrides: Any,
) -> tuple[ModelConfig, Params]:
    """Restores (config, params) with params sharded over `mesh` (default: all devices, fsdp).

    Args:
      model_dir: the model directory.
      mesh: the mesh to shard over (default: `sharding.make_mesh()`).
      rules: (logical name, mesh axes) pairs (`sharding.logical_to_pspec`).
      **config_overrides: `ModelConfig` fields replaced after loading (e.g. `dtype`,
        `remat_policy`); the parameter shapes must still match the saved ones.

    Returns:
      (the config with the overrides, the parameter tree laid out by the rules).

    Raises:
      CheckpointError: the directory is missing or incomplete, or the params cannot be
        restored for this config.
    """
    cfg = load_config(model_dir)
    if config_overrides:
        cfg = cfg.replace(**config_overrides)
    mesh = mesh or sharding.make_mesh()
    abstract, names = abstract_params(cfg)
    shardings = sharding.tree_shardings(names, abstract, mesh, rules)
    target = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )
    path = io_utils.absolute(model_dir)
    try:
        params = ocp.StandardCheckpointer().restore(path / "params", target)
    except Exception as e:  # orbax raises several types; name the directory either way
        raise CheckpointError(f"{path / 'params'}: cannot restore params for this config: {e}") from e
    return cfg, params


def tokenizer_dir(model_dir: str | os.PathLike) -> str:
    """The tokenizer folder of a model directory.

    Args:
      model_dir: the model directory.

    Returns:
      The path of its tokenizer/ subfolder (which may not exist).
    """
    return str(io_utils.as_path(model_dir) / "tokenizer")
