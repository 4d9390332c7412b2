"""File I/O used everywhere: atomic writes, JSON/JSONL with errors that name the file.

All paths go through `etils.epath`, so a run directory may be local or `gs://...`.
Atomicity: write to a temporary sibling, then rename; a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from etils import epath

from isheep_jax.parallel import distributed


class DataError(ValueError):
    """Malformed input data; the message names the file and, where known, the line."""


def as_path(path: str | os.PathLike) -> epath.Path:
    return epath.Path(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute (stable in manifests and across a changed cwd); URLs such as
    gs://... as they are."""
    return as_path(path if "://" in str(path) else os.path.abspath(path))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary sibling and a rename.

    In a multi-process run (every process computes the same text) process 0 writes and the
    others wait for it, so a later read sees the file everywhere (the run directory must
    then be shared, e.g. gs://).
    """
    path = as_path(path)
    if distributed.is_writer():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
            tmp.write_text(text)
            tmp.replace(path)  # overwrites, like os.replace (rename refuses an existing target)
        except OSError as e:
            raise OSError(f"cannot write {path}: {e.strerror or e}") from e
    distributed.barrier(f"write {path}")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def exists(path: str | os.PathLike) -> bool:
    """Whether `path` exists as process 0 sees it, the same answer on every process: use it
    (not `Path.exists`) wherever the answer decides what a multi-process run does next."""
    return distributed.agree(as_path(path).exists())


def read_json(path: str | os.PathLike) -> Any:
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yields (line_number, object) for each non-blank line; bad JSON names file and line."""
    path = as_path(path)
    with path.open("r") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None


def read_jsonl(path: str | os.PathLike, missing_ok: bool = False) -> list[Any]:
    """All objects of a JSONL file; [] for a missing file when missing_ok."""
    if missing_ok and not as_path(path).exists():
        return []
    return [obj for _, obj in iter_jsonl(path)]
