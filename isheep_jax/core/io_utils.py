"""File I/O used everywhere: atomic writes, JSON/JSONL with errors that name the file.

All paths go through `etils.epath`, so a run directory may be local or `gs://...`.
Atomicity: write to a temporary sibling, then rename; a reader never sees half a file.

The rule of a multi-process run: every write here (`write_text_atomic`, `write_json`,
`write_jsonl`, `claim_output_dir`, `release_output_dir`) and `exists` is a collective that
every process calls with the same arguments, never one process alone: process 0 does the
I/O, and each ends in a barrier (or an agreement) that every process enters. A caller never
guards them with `distributed.is_writer()`.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from etils import epath

from isheep_jax.parallel import distributed

log = logging.getLogger(__name__)


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
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(text)
            tmp.replace(path)  # overwrites, like os.replace (rename refuses an existing target)
        except OSError as e:
            try:  # a full disk leaves a partial temporary file: remove it, keep the old file
                if tmp.exists():
                    tmp.unlink()
            except OSError:
                pass
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


def iter_jsonl(path: str | os.PathLike, torn_tail_ok: bool = False) -> Iterator[tuple[int, Any]]:
    """Yields (line_number, object) for each non-blank line of a JSONL file.

    Args:
      path: a local path or a URL.
      torn_tail_ok: skip (with a warning) a last line that is not valid JSON and has no
        newline: what a process killed while appending leaves. Any other bad line is an
        error.

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
                if torn_tail_ok and not line.endswith("\n"):  # only a last line lacks it
                    log.warning("%s:%d: skipping a torn last line (an interrupted append)", path, lineno)
                    return
                torn = "" if line.endswith("\n") else " (a torn last line: the write was interrupted?)"
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}{torn}") from None


def read_jsonl(path: str | os.PathLike, missing_ok: bool = False, torn_tail_ok: bool = False) -> list[Any]:
    """All objects of a JSONL file.

    Args:
      path: a local path or a URL.
      missing_ok: return [] for a missing file instead of raising.
      torn_tail_ok: skip a torn last line (see `iter_jsonl`).

    Returns:
      The parsed values of the non-blank lines, in file order.

    Raises:
      DataError: a line is not valid JSON; the message names the file and the line.
    """
    if missing_ok and not as_path(path).exists():
        return []
    return [obj for _, obj in iter_jsonl(path, torn_tail_ok)]


# ---------------------------------------------------------------------------- output folders
# A folder we are writing whole (a checkpoint, an HF export) holds this marker from its
# creation until the save is complete: only such a folder may be cleared, so a rerun after
# a kill starts the save afresh, and nothing we did not write is ever deleted.
IN_PROGRESS = ".isheep_in_progress"


class OutputDirError(ValueError):
    """An output folder that we may not write into (it holds someone else's files or the input)."""


def _inside(child: epath.Path, parent: epath.Path) -> bool:
    c, p = str(child).rstrip("/") + "/", str(parent).rstrip("/") + "/"
    return c.startswith(p)


def output_dir_problem(path: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> str | None:
    """Why `path` cannot be claimed as an output folder, or None if it can (see `claim_output_dir`).

    Args:
      path: the output folder.
      sources: the inputs of the save: the output may be neither one of them nor a folder
        that holds one.

    Returns:
      A message naming the path and what is in it, or None.
    """
    out = absolute(path)
    for src in sources:
        s = absolute(src)
        if str(s).rstrip("/") == str(out).rstrip("/"):
            return f"{out}: the output folder is the input; choose another output folder"
        if _inside(s, out):
            return f"{out}: the output folder holds the input {s}; choose a new, empty folder"
    if not out.exists():
        return None
    if not out.is_dir():
        return f"{out}: exists and is not a folder"
    names = sorted(p.name for p in out.iterdir())
    if not names or IN_PROGRESS in names:
        return None
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return (
        f"{out}: not empty ({shown}) and not an interrupted save of ours; refusing to write into it "
        "(nothing was changed): choose a new folder, or empty this one"
    )


def claim_output_dir(path: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> epath.Path:
    """Makes `path` an empty folder marked as being written by us.

    Allowed: a missing or empty folder, or one holding our in-progress marker (a save of
    ours that was killed: it is cleared). Anything else is refused before anything is
    written. Every process must call it (the check is agreed on, then process 0 writes).

    Args:
      path: the output folder (local or a URL).
      sources: the save's inputs (see `output_dir_problem`).

    Returns:
      The folder's absolute path.

    Raises:
      OutputDirError: the folder holds files we did not write, or is (or holds) the input.
    """
    out = absolute(path)
    problem = output_dir_problem(out, sources)
    if not distributed.agree(problem is None):
        raise OutputDirError(problem or f"{out}: refused by process 0 (it sees files there)")
    if distributed.is_writer():
        try:
            if out.exists() and (out / IN_PROGRESS).exists():
                out.rmtree()
            out.mkdir(parents=True, exist_ok=True)
            # Written in place, not atomically: a temporary sibling left by a kill would make
            # the folder look foreign.
            (out / IN_PROGRESS).write_text("isheep_jax: a save in progress; safe to delete\n")
        except OSError as e:
            raise OSError(f"cannot create {out}: {e.strerror or e}") from e
    distributed.barrier(f"claim {out}")
    return out


def release_output_dir(path: str | os.PathLike) -> None:
    """Removes the in-progress marker of a finished save (every process must call it)."""
    out = absolute(path)
    if distributed.is_writer():
        marker = out / IN_PROGRESS
        if marker.exists():
            marker.unlink()
    distributed.barrier(f"release {out}")


def remove_tree(path: str | os.PathLike) -> None:
    """Deletes a folder and everything in it, if it exists (every process must call it).

    Process 0 deletes, the others wait for it. The caller decides that `path` may go: this
    checks nothing about what is inside.

    Args:
      path: the folder (local or a URL).

    Raises:
      OSError: it cannot be deleted; the message names it.
    """
    out = absolute(path)
    if distributed.is_writer():
        try:
            if out.exists():
                out.rmtree()
        except OSError as e:
            raise OSError(f"cannot delete {out}: {e.strerror or e}") from e
    distributed.barrier(f"remove {out}")
