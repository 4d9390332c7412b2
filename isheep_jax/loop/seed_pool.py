"""The seed pool: hand-written tasks whose instructions serve as few-shot demos.

Accepted file formats (detected from the content, whatever the file is called):

* Self-Instruct `seed_tasks.jsonl`: one JSON object per line with `instruction`,
  `instances: [{"input": ..., "output": ...}, ...]`, optional `id`, `name`,
  `is_classification`. One `SeedTask` per *task*, built from its FIRST instance, as the
  Alpaca / I-SHEEP generators do: demos show one input per instruction, and a task with
  several instances must not count several times when demos are sampled. Every instance
  is still type-checked.
* Alpaca: objects with `instruction`, `output` and optional `input` (default ""),
  `id`, `is_classification`; either one JSON list (`[{...}, ...]`) or JSONL.

The first record decides the format (it has `instances` or not); every later record must
then be of the same format. Any problem raises `SeedPoolError` naming file, line and what
is wrong.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
from collections.abc import Iterator
from typing import Any

from isheep_jax.core import io_utils

SELF_INSTRUCT = "self_instruct"
ALPACA = "alpaca"


class SeedPoolError(ValueError):
    """A seed file is empty or holds a malformed record.

    Args:
      path: the file, as named in the message.
      line: the 1-based line of the problem, or None for the whole file.
      problem: what is wrong.
    """

    def __init__(self, path: str, line: int | None, problem: str) -> None:
        self.path, self.line, self.problem = path, line, problem
        where = f"{path}:{line}" if line is not None else path
        super().__init__(f"{where}: {problem}")


@dataclasses.dataclass(frozen=True)
class SeedTask:
    """One seed demo: an instruction, its (possibly empty) input and a reference output.

    Attributes:
      instruction: the task's instruction.
      input: its input ('' for none).
      output: the reference output.
      is_classification: whether the task is a classification task.
      id: the record's `id`, or "seed_task_<n>" by position.
    """

    instruction: str
    input: str = ""
    output: str = ""
    is_classification: bool = False
    id: str = ""


def load_seed_pool(path: str | os.PathLike[str] | None = None) -> list[SeedTask]:
    """Reads a seed pool; `None` reads the pool shipped with the package.

    Args:
      path: a seed file (format in the module docstring), or None.

    Returns:
      One `SeedTask` per task, in file order.

    Raises:
      SeedPoolError: the file is empty or holds a malformed record.
    """
    if path is None:
        resource = importlib.resources.files("isheep_jax.loop") / "data" / "seed_tasks.jsonl"
        name, raw = "<shipped seed_tasks.jsonl>", resource.read_bytes()
    else:
        name = os.fspath(path)
        p = io_utils.as_path(path)
        if not p.exists():
            raise SeedPoolError(f"{name}: no such seed file")
        raw = p.read_bytes()
    return parse_seed_pool(raw, name)


def parse_seed_pool(raw: bytes | str, name: str = "<string>") -> list[SeedTask]:
    """Parses the bytes (or text) of a seed file; `name` only labels error messages.

    Args:
      raw: the file's contents, as UTF-8 bytes or as text; a leading BOM is dropped.
      name: the file name used in messages.

    Returns:
      One `SeedTask` per task, in file order.

    Raises:
      SeedPoolError: not UTF-8, empty, bad JSON, a record of the wrong shape or format, or
        a duplicate id.
    """
    text = _decode(raw, name) if isinstance(raw, bytes) else raw
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise SeedPoolError(name, None, "file is empty: expected Self-Instruct JSONL or Alpaca JSON/JSONL")
    records = _json_list(text, name) if text.lstrip().startswith("[") else _jsonl(text, name)
    tasks: list[SeedTask] = []
    fmt: str | None = None
    first_line_of: dict[str, int] = {}
    for line, record in records:
        if not isinstance(record, dict):
            raise SeedPoolError(name, line, f"expected a JSON object, got {_json_type(record)}")
        if fmt is None:
            fmt = SELF_INSTRUCT if "instances" in record else ALPACA
        task = _record_to_task(record, fmt, name, line, default_id=f"seed_task_{len(tasks)}")
        if task.id in first_line_of:
            raise SeedPoolError(
                name, line, f"duplicate id {task.id!r} (first seen on line {first_line_of[task.id]})"
            )
        first_line_of[task.id] = line
        tasks.append(task)
    if not tasks:
        raise SeedPoolError(name, None, "no seed tasks: the JSON list is empty")
    return tasks


def _decode(raw: bytes, name: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SeedPoolError(name, line, f"not valid UTF-8 (byte {e.start})") from None


def _jsonl(text: str, name: str) -> Iterator[tuple[int, Any]]:
    # split("\n"), not splitlines(): JSON strings may hold raw U+2028 and friends.
    for line, row in enumerate(text.split("\n"), start=1):
        if not row.strip():
            continue  # blank lines, e.g. a trailing one, carry no record
        try:
            yield line, json.loads(row)
        except json.JSONDecodeError as e:
            raise SeedPoolError(name, line, f"bad JSON: {e.msg} (column {e.colno})") from None


def _json_list(text: str, name: str) -> Iterator[tuple[int, Any]]:
    """Yields (line of the element's first character, element) for a top-level JSON list.

    Decoding element by element (rather than `json.loads` of the whole text) is what lets
    a schema error name the line where the bad element starts.
    """
    decoder = json.JSONDecoder()

    def fail(pos: int, problem: str) -> SeedPoolError:
        return SeedPoolError(name, text.count("\n", 0, pos) + 1, problem)

    def skip_ws(pos: int) -> int:
        while pos < len(text) and text[pos] in " \t\r\n":
            pos += 1
        return pos

    pos = skip_ws(text.index("[") + 1)
    if pos < len(text) and text[pos] == "]":
        pos += 1
    else:
        while True:
            try:
                element, end = decoder.raw_decode(text, pos)
            except json.JSONDecodeError as e:
                raise fail(e.pos, f"bad JSON: {e.msg} (column {e.colno})") from None
            yield text.count("\n", 0, pos) + 1, element
            pos = skip_ws(end)
            if pos < len(text) and text[pos] == ",":
                pos = skip_ws(pos + 1)
            elif pos < len(text) and text[pos] == "]":
                pos += 1
                break
            else:
                raise fail(pos, "bad JSON: expected ',' or ']' after a list element")
    if skip_ws(pos) != len(text):
        raise fail(skip_ws(pos), "bad JSON: extra data after the closing ']'")


def _record_to_task(record: dict[str, Any], fmt: str, name: str, line: int, default_id: str) -> SeedTask:
    def field(obj: dict[str, Any], key: str, kind: type, default: Any = None, where: str = "") -> Any:
        if key not in obj:
            if default is not None:
                return default
            raise SeedPoolError(
                name, line, f"missing field '{where}{key}' (format {fmt}, detected from the first record)"
            )
        value = obj[key]
        if not isinstance(value, kind):
            raise SeedPoolError(
                name, line, f"field '{where}{key}' must be {_TYPE_NAMES[kind]}, got {_json_type(value)}"
            )
        return value

    instruction = field(record, "instruction", str)
    if not instruction.strip():
        raise SeedPoolError(name, line, "empty instruction")
    if fmt == SELF_INSTRUCT:
        instances = field(record, "instances", list)
        if not instances:
            raise SeedPoolError(
                name, line, "field 'instances' is an empty list: need at least one input/output"
            )
        for i, inst in enumerate(instances):
            if not isinstance(inst, dict):
                raise SeedPoolError(
                    name, line, f"field 'instances[{i}]' must be an object, got {_json_type(inst)}"
                )
            field(inst, "input", str, default="", where=f"instances[{i}].")
            field(inst, "output", str, where=f"instances[{i}].")
        source = instances[0]
    else:
        if "instances" in record:
            raise SeedPoolError(
                name, line, f"unexpected field 'instances' (format {fmt}, detected from the first record)"
            )
        source = record
    return SeedTask(
        instruction=instruction,
        input=field(source, "input", str, default=""),
        output=field(source, "output", str),
        is_classification=field(record, "is_classification", bool, default=False),
        id=field(record, "id", str, default=default_id),
    )


_TYPE_NAMES = {str: "a string", list: "a list", bool: "true or false"}


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "an object",
    }.get(type(value), type(value).__name__)
