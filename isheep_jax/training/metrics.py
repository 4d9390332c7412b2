"""Training metrics: one JSON object per logged step (machine-readable), plus TensorBoard
event files when TensorFlow and TensorBoard are importable (both are dependencies)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping

from isheep_jax.core import io_utils
from isheep_jax.parallel.distributed import is_writer


class MetricsWriter:
    """Appends rows to `path` (JSONL) and scalars to `tb_dir`.

    `truncate_after(step)` drops rows of steps a resumed run will redo, so the file
    always describes one consistent run. In a multi-process run only process 0 writes.

    Args:
      path: the JSONL file; its parent directory is created.
      tb_dir: directory for TensorBoard event files, or None for JSONL only. Left out
        silently when TensorFlow or TensorBoard cannot be imported.
    """

    def __init__(self, path: str | os.PathLike, tb_dir: str | os.PathLike | None = None):

        self.path = io_utils.as_path(path)
        self.enabled = is_writer()
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tb_dir, self._tb_local = tb_dir, None
        self._remote_text: str | None = None  # an object store's copy of the file (no append there)
        if tb_dir is not None and self.enabled:
            try:  # tf.summary needs both packages; TensorBoard files are a convenience, JSONL is the record
                import tensorboard  # noqa: F401
                import tensorflow as tf

                # A remote folder (gs://) is written locally and copied at close: all our
                # remote I/O goes through epath, none through TensorFlow's own GCS client.
                if "://" in os.fspath(tb_dir):
                    self._tb_local = tempfile.mkdtemp(prefix="isheep-tensorboard-")
                self._tb = tf.summary.create_file_writer(self._tb_local or os.fspath(tb_dir))
            except ImportError:
                self._tb = None

    def truncate_after(self, step: int) -> None:
        """Drops the rows of steps after `step` from the JSONL file, and a torn last line.

        A collective, like every io_utils write: every process must call it (process 0
        rewrites the file, the others wait for it).

        Args:
          step: the last step to keep, e.g. the step a resumed run restarts from.
        """
        if not io_utils.exists(self.path):
            return
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        io_utils.write_jsonl(self.path, rows)
        self._remote_text = None

    def write(self, step: int, values: Mapping[str, float]) -> None:
        """Appends one row `{"step": step, **values}` and logs the numeric values to TensorBoard.

        Args:
          step: the step the values belong to.
          values: metric name -> number (stored as float) or string (stored as is; not sent
            to TensorBoard).
        """
        if not self.enabled:
            return
        row = {
            "step": int(step),
            **{k: (float(v) if not isinstance(v, str) else v) for k, v in values.items()},
        }
        line = json.dumps(row) + "\n"
        if "://" in str(self.path):
            # Object stores have no append: the file is rewritten whole (a few hundred rows
            # per training run), through a temporary object and a rename.
            if self._remote_text is None:  # read once; this writer is the file's only writer
                self._remote_text = self.path.read_text() if self.path.exists() else ""
            self._remote_text += line
            tmp = self.path.parent / f".{self.path.name}.tmp"
            tmp.write_text(self._remote_text)
            tmp.replace(self.path)
        else:
            with self.path.open("a") as f:
                f.write(line)
        if self._tb is not None:
            import tensorflow as tf

            with self._tb.as_default(step=int(step)):
                for k, v in values.items():
                    if not isinstance(v, str):
                        tf.summary.scalar(k, float(v))

    def close(self) -> None:
        """Flushes and closes the TensorBoard writer (the JSONL file is never held open)."""
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None
        if self._tb_local is not None:
            dst = io_utils.as_path(self._tb_dir)
            dst.mkdir(parents=True, exist_ok=True)
            for name in sorted(os.listdir(self._tb_local)):
                io_utils.as_path(os.path.join(self._tb_local, name)).copy(dst / name, overwrite=True)
            shutil.rmtree(self._tb_local, ignore_errors=True)
            self._tb_local = None


def read_metrics(path: str | os.PathLike) -> list[dict]:
    """All rows of a metrics JSONL file.

    Args:
      path: the file `MetricsWriter` wrote.

    Returns:
      The rows in file order; [] when the file does not exist. A torn last line (a run
      killed while appending) is skipped.
    """
    return io_utils.read_jsonl(path, missing_ok=True, torn_tail_ok=True)
