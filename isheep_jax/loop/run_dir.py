"""The run directory: manifest, per-iteration artifact paths, and chunked resumable sampling.

    RUN/manifest.json           resolved gin config, its hash, history of (forced) restarts
    RUN/config.gin              the resolved gin config as text
    RUN/metrics.jsonl           one row per finished iteration (machine-readable summary)
    RUN/iter_<i>/chunks/<stage>/<n>.jsonl   raw model outputs, one file per chunk of prompts
    RUN/iter_<i>/instructions.jsonl ... kept.jsonl, dropped.jsonl, train/, eval/, summary.json
    RUN/iter_<i>/train/checkpoints/  the trainer state; gone once train/model is exported,
                                unless TrainConfig.keep_trainer_state
    RUN/iter_<i>/model_pruned.json  train/model was deleted once a later iteration's model
                                superseded it (LoopConfig.keep_models = 'last')
    RUN/eval_base/              the base model's evaluation (when LoopConfig.evaluate)

Every file is written atomically (temporary sibling + rename), and each stage's last
artifact is its completion marker, so a killed run resumes at the first missing one;
sampling stages resume at the first missing chunk (`sampling.chunked`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from typing import Any, Literal

from isheep_jax.core import choices, io_utils
from isheep_jax.model import checkpoint

log = logging.getLogger(__name__)

# The stages of an iteration, in order; each one's last artifact marks it done.
Stage = Literal["synthesize", "respond", "assess", "filter", "train", "eval", "summary"]
STAGES: tuple[Stage, ...] = choices.values(Stage)


class RunError(ValueError):
    """The run directory cannot be used as asked (other config, unwritable, inconsistent)."""


@dataclasses.dataclass(frozen=True)
class IterationPaths:
    """The artifact paths of one iteration, RUN/iter_<i>/.

    `instructions`, `responses`, `assessments`, `kept` and `dropped` are the stage files
    RUN/iter_<i>/<name>.jsonl.

    Attributes:
      root: epath.Path of RUN/iter_<i>.
    """

    root: Any  # epath.Path of RUN/iter_<i>

    def __getattr__(self, name: str):  # instructions, responses, ... -> RUN/iter_i/<name>.jsonl
        """instructions, responses, assessments, kept, dropped -> RUN/iter_<i>/<name>.jsonl."""
        if name in ("instructions", "responses", "assessments", "kept", "dropped"):
            return self.root / f"{name}.jsonl"
        raise AttributeError(name)

    @property
    def summary(self):
        """RUN/iter_<i>/summary.json, the iteration's last artifact."""
        return self.root / "summary.json"

    @property
    def train_dir(self):
        """RUN/iter_<i>/train, the trainer's work directory."""
        return self.root / "train"

    @property
    def train_state_dir(self):
        """RUN/iter_<i>/train/checkpoints, the trainer state (deleted after the export unless
        TrainConfig.keep_trainer_state)."""
        return self.root / "train" / "checkpoints"

    @property
    def model_dir(self):
        """RUN/iter_<i>/train/model, the trained model (complete once training ends)."""
        return self.root / "train" / "model"

    @property
    def model_pruned(self):
        """RUN/iter_<i>/model_pruned.json: this iteration's model was deleted, superseded by a
        later one (LoopConfig.keep_models = 'last'); its train stage stays done."""
        return self.root / "model_pruned.json"

    @property
    def train_skipped(self):
        """RUN/iter_<i>/train_skipped.json: marks a train stage with no pair to train on."""
        return self.root / "train_skipped.json"

    @property
    def eval_dir(self):
        """RUN/iter_<i>/eval, the trained model's evaluation."""
        return self.root / "eval"

    @property
    def eval_skipped(self):
        """RUN/iter_<i>/eval_skipped.json: marks an eval stage that had nothing to do."""
        return self.root / "eval_skipped.json"

    def dropped_stage(self, stage: str):
        """The rows `stage` dropped, before the filter stage merges them into dropped.jsonl.

        Args:
          stage: "synthesize" or "respond".

        Returns:
          RUN/iter_<i>/dropped_<stage>.jsonl.
        """
        return self.root / f"dropped_{stage}.jsonl"

    def chunks(self, stage: str):
        """The chunk directory of a sampling stage.

        Args:
          stage: "synthesize", "respond" or "assess".

        Returns:
          RUN/iter_<i>/chunks/<stage>.
        """
        return self.root / "chunks" / stage

    def stage_done(self, stage: Stage) -> bool:
        """Whether `stage` has finished, from its completion marker on disk.

        Args:
          stage: one of `STAGES`.

        Returns:
          True when the stage's last artifact exists: its JSONL file (or summary.json); for
          "train" a complete model, model_pruned.json or train_skipped.json; for "eval"
          eval/eval.json or eval_skipped.json.
        """

        marker = {
            "synthesize": self.instructions,
            "respond": self.responses,
            "assess": self.assessments,
            "filter": self.kept,
            "summary": self.summary,
        }
        if stage == "train":
            return (
                checkpoint.is_complete(self.model_dir)
                or io_utils.exists(self.model_pruned)
                or io_utils.exists(self.train_skipped)
            )
        if stage == "eval":
            return io_utils.exists(self.eval_dir / "eval.json") or io_utils.exists(self.eval_skipped)
        return io_utils.exists(marker[stage])


class RunDir:
    """A run directory RUN (layout in the module docstring).

    Args:
      root: the directory, local or a URL such as gs://...; local paths are made absolute.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = io_utils.absolute(root)

    @property
    def manifest_path(self):
        """RUN/manifest.json."""
        return self.root / "manifest.json"

    @property
    def metrics_path(self):
        """RUN/metrics.jsonl, one row per finished iteration."""
        return self.root / "metrics.jsonl"

    @property
    def base_eval_dir(self):
        """The base model's evaluation: its numbers, and the reference answers of every win-rate."""
        return self.root / "eval_base"

    def iteration(self, i: int) -> IterationPaths:
        """The artifact paths of iteration `i`.

        Args:
          i: the iteration (0-based).

        Returns:
          The paths under RUN/iter_<i>.
        """
        return IterationPaths(self.root / f"iter_{i}")

    def open(self, config_str: str, force: bool = False) -> dict:
        """Creates the run, or checks that an existing one was made with the same config.

        Writes RUN/config.gin and the manifest; a resumed run adds a "resumed" entry to the
        manifest's history, a forced one a "forced config change" entry.

        Args:
          config_str: the resolved gin config; its sha256 identifies the config.
          force: accept a changed config (recorded in the history) instead of raising.

        Returns:
          The manifest as written.

        Raises:
          RunError: the directory cannot be created, or it was started with another config
            and `force` is not set.
        """
        digest = hashlib.sha256(config_str.encode()).hexdigest()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create run directory {self.root}: {e.strerror or e}") from e
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        if self.manifest_path.exists():
            manifest = io_utils.read_json(self.manifest_path)
            if manifest.get("config_sha256") != digest:
                if not force:
                    raise RunError(
                        f"{self.root} was started with another config "
                        f"(sha256 {manifest.get('config_sha256', '?')[:12]} "
                        f"!= {digest[:12]}); see {self.root / 'config.gin'}. "
                        "Resume with the same gin files and "
                        "flags, use a new run directory, or pass --force to continue with the new config."
                    )
                manifest.setdefault("history", []).append(
                    {
                        "time": now,
                        "event": "forced config change",
                        "from": manifest["config_sha256"],
                        "to": digest,
                    }
                )
                manifest.update(config=config_str, config_sha256=digest)
            else:
                manifest.setdefault("history", []).append({"time": now, "event": "resumed"})
        else:
            manifest = {"config": config_str, "config_sha256": digest, "created": now, "history": []}
        io_utils.write_text_atomic(self.root / "config.gin", config_str)
        io_utils.write_json(self.manifest_path, manifest)
        return manifest

    def iterations_present(self) -> list[int]:
        """The iterations that have a directory RUN/iter_<i>.

        Returns:
          Their indices, ascending; [] when RUN does not exist.
        """
        if not self.root.exists():
            return []
        return sorted(
            int(p.name[5:])
            for p in self.root.iterdir()
            if p.name.startswith("iter_") and p.name[5:].isdigit()
        )
