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
    """`path` as an `etils.epath.Path` (local, or a URL such as gs://...).

    Args:
      path: a local path or a URL.

    Returns:
      The path object.
    """
    return epath.Path(path)


def absolute(path: str | os.PathLike) -> epath.Path:
    """A local path made absolute; URLs such as gs://... as they are.

    An absolute path stays stable in manifests and across a changed working directory.

    Args:
      path: a local path (relative or absolute) or a URL (anything containing '://').

    Returns:
      The absolute local path, or the URL unchanged.
    """
    return as_path(path if "://" in str(path) else os.path.abspath(path))


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` through a temporary sibling and a rename.

    In a multi-process run (every process computes the same text) process 0 writes and the
    others wait for it, so a later read sees the file everywhere (the run directory must
    then be shared, e.g. gs://). Every process must therefore call it.

    Args:
      path: the file to write; its parent directories are created.
      text: the whole content.

    Raises:
      OSError: the file cannot be written; the message names it.
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
    """Writes `obj` as indented JSON with sorted keys, atomically (`write_text_atomic`).

    Args:
      path: the file to write.
      obj: a JSON-serialisable object; non-ASCII characters are written as they are.
    """
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> None:
    """Writes `rows` as JSON Lines (one object per line), atomically (`write_text_atomic`).

    Args:
      path: the file to write.
      rows: JSON-serialisable objects; non-ASCII characters are written as they are.
    """
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def exists(path: str | os.PathLike) -> bool:
    """Whether `path` exists as process 0 sees it, the same answer on every process.

    Use it (not `Path.exists`) wherever the answer decides what a multi-process run does
    next. In a multi-process run it is a collective (`distributed.agree`): every process
    must call it.

    Args:
      path: a local path or a URL.

    Returns:
      Whether process 0 sees `path`.
    """
    return distributed.agree(as_path(path).exists())


def read_json(path: str | os.PathLike) -> Any:
    """The JSON object of a file.

    Args:
      path: a local path or a URL.

    Returns:
      The parsed JSON value.

    Raises:
      FileNotFoundError: there is no such file.
      DataError: the file is not valid JSON; the message names the file and the line.
    """
    path = as_path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """Yields (line_number, object) for each non-blank line of a JSONL file.

    Args:
      path: a local path or a URL.

    Yields:
      (line number counted from 1, parsed JSON value) for each non-blank line.

    Raises:
      DataError: a line is not valid JSON; the message names the file and the line.
    """
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
    """All objects of a JSONL file.

    Args:
      path: a local path or a URL.
      missing_ok: return [] for a missing file instead of raising.

    Returns:
      The parsed values of the non-blank lines, in file order.

    Raises:
      DataError: a line is not valid JSON; the message names the file and the line.
    """
    if missing_ok and not as_path(path).exists():
        return []
    return [obj for _, obj in iter_jsonl(path)]
