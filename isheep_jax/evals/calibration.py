"""Judge calibration: answer pairs in which one answer is known to be the worse one.

A judge model that picks the better of two answers (`evals.winrate`) is only useful if it
prefers a complete, on-topic answer to an obviously degraded one. This module turns a small
hand-written set of instructions with good reference answers into such labelled pairs, so a
judge's accuracy (and its position bias) can be measured before its verdicts are trusted.

Input format (our shipped `evals/data/judge_calibration.jsonl`, or a user's file of the same
shape): one JSON object per line with

* `id`: a unique, non-empty string;
* `instruction`: a non-empty string; `input`: a string ('' or missing for none);
* `reference`: a good answer that fully answers (and obeys any stated format);
* `other_language`: the same answer in another language, or '' (no such pair);
* `format`: the format requirement the instruction states (e.g. "as a numbered list"), or '';
* `ignores_format`: an answer that is otherwise fine but ignores `format`, or ''.

Every degraded answer is a pure, deterministic function of the items (see `DEGRADATIONS`),
so the same file always yields the same pairs in the same order.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from isheep_jax.core import choices, io_utils
from isheep_jax.core.io_utils import DataError

Degradation = Literal["other_answer", "truncated", "repetition", "empty", "other_language", "ignores_format"]
# The order in which each item's pairs are built.
DEGRADATIONS: tuple[Degradation, ...] = choices.values(Degradation)

# The fields of a calibration row; all but the required ones default to ''.
_REQUIRED = ("id", "instruction", "reference")
FIELDS: tuple[str, ...] = (
    "id",
    "instruction",
    "input",
    "reference",
    "other_language",
    "format",
    "ignores_format",
)

# A "word" is a whitespace-separated run holding at least one letter or digit, so a bullet
# marker ("-") or a lone dash never counts as one and a cut never ends on it.
_RUN = re.compile(r"\S+")
# A numbered-list marker such as "2." ends with a full stop but does not end a sentence.
_LIST_MARKER = re.compile(r"\d+[.)]")
# Closing quotes and brackets may follow a sentence's final punctuation: `... "later."`.
_CLOSERS = "\"')]}»”’"
# How far `repetition` looks for the end of the first sentence before falling back to a
# fixed-length opening.
_MAX_SENTENCE_WORDS = 25
_FALLBACK_WORDS = 12


@dataclass(frozen=True)
class CalibrationPair:
    """Two answers to one instruction, the better one known.

    Attributes:
      id: f"{item id}:{degradation}".
      instruction: the item's instruction.
      input: the item's input ('' for none).
      better: the reference answer.
      worse: the degraded answer.
      degradation: how `worse` was made, one of `DEGRADATIONS`.
    """

    id: str
    instruction: str
    input: str
    better: str
    worse: str
    degradation: Degradation


def shipped_calibration_path() -> os.PathLike:
    """Our own hand-written calibration set, shipped with the package.

    Returns:
      The path of `isheep_jax/evals/data/judge_calibration.jsonl`.
    """
    return resources.files("isheep_jax.evals") / "data" / "judge_calibration.jsonl"


def load_items(path: str | os.PathLike | None = None) -> list[dict[str, str]]:
    """Reads and checks a calibration file.

    Args:
      path: a calibration JSONL file (format in the module docstring); None (or '') reads
        the shipped set.

    Returns:
      One dict per row, in file order, with exactly the keys of `FIELDS` (missing optional
      fields filled with '').

    Raises:
      DataError: invalid JSON, a row that is not an object, a missing, empty or non-string
        required field, a non-string optional field, a duplicate id, an `ignores_format`
        answer without a `format`, a degraded answer equal to the reference, or no rows at
        all; the message names the file and the line.
      FileNotFoundError: there is no such file.
    """
    path = path or shipped_calibration_path()
    if not io_utils.as_path(path).exists():
        raise FileNotFoundError(f"{path}: no such calibration file")
    items: list[dict[str, str]] = []
    first_line: dict[str, int] = {}
    for lineno, row in io_utils.iter_jsonl(path):
        where = f"{path}:{lineno}"
        item = _check_row(row, where)
        if item["id"] in first_line:
            raise DataError(f"{where}: duplicate id {item['id']!r} (first on line {first_line[item['id']]})")
        first_line[item["id"]] = lineno
        items.append(item)
    if not items:
        raise DataError(f"{path}: no calibration items (the file holds no rows)")
    return items


def _check_row(row: Any, where: str) -> dict[str, str]:
    """One row as a complete item dict, or a DataError naming `where`."""
    if not isinstance(row, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
    item: dict[str, str] = {}
    for name in FIELDS:
        value = row.get(name, None if name in _REQUIRED else "")
        if name in _REQUIRED and (not isinstance(value, str) or not value.strip()):
            raise DataError(f"{where}: field {name!r} must be a non-empty string, got {value!r}")
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        item[name] = value
    if item["ignores_format"] and not item["format"]:
        raise DataError(
            f"{where}: 'ignores_format' is set but 'format' is empty: which format does it ignore?"
        )
    for name in ("other_language", "ignores_format"):
        # A "worse" answer identical to the better one would be a pair with no right verdict.
        if item[name] and item[name].strip() == item["reference"].strip():
            raise DataError(f"{where}: field {name!r} equals the reference; it must be a different answer")
    return item


# ---------------------------------------------------------------------------- degradations


def other_answer(items: Sequence[Mapping[str, str]], index: int) -> str | None:
    """The reference answer of the item `len(items) // 2` positions further on (cyclically).

    Half the set away keeps the two items far apart in a file grouped by topic, so the
    answer is clearly off-topic for this instruction.

    Args:
      items: all calibration items.
      index: the position of the item whose pair is built.

    Returns:
      The other item's reference, or None when there is no other item or its reference is
      the same text as this item's.
    """
    if len(items) < 2:
        return None
    answer = items[(index + len(items) // 2) % len(items)]["reference"]
    return None if answer.strip() == items[index]["reference"].strip() else answer


def truncated(reference: str) -> str | None:
    """The reference cut after about its first third of words, mid-sentence, unpunctuated.

    The cut keeps round(n / 3) words (at least one), moved to the nearest later (else
    earlier) word that neither ends a sentence (or a line) nor is a list marker, so the
    answer visibly stops mid-thought; the text up to the cut keeps its own spacing and line
    breaks, and trailing punctuation is dropped.

    Args:
      reference: the answer to cut.

    Returns:
      The truncated answer, or None for a reference of fewer than 3 words (nothing
      meaningful to cut).
    """
    words = _words(reference)
    n = len(words)
    if n < 3:
        return None
    base = max(1, round(n / 3))  # <= n - 1 for n >= 3: something is always cut off
    # The nearest cut after a word inside a sentence: forward first (never the last word),
    # then backward; a text made only of sentence ends (a list of one-word items) keeps base.
    order = [*range(base, n), *range(base - 1, 0, -1)]
    k = next((j for j in order if _inside_sentence(reference, words[j - 1])), base)
    return _strip_trailing_punctuation(reference[: words[k - 1].end()])


def repetition(reference: str) -> str:
    """A degenerate loop: the reference's opening repeated to about 3x its length.

    The opening is the first sentence (ending at `.`, `!`, `?` or a line break, a list
    marker such as "1." not counting); when none ends within the first 25 words, the first
    12 words. It is repeated, joined by spaces, until the result has at least three times
    the reference's word count (at least twice).

    Args:
      reference: a non-empty answer.

    Returns:
      The looping answer.
    """
    words = _words(reference)
    if not words:
        return " ".join([reference.strip()] * 3)
    end = None
    for i, word in enumerate(words[:_MAX_SENTENCE_WORDS]):
        if _ends_sentence(reference, word) and not _is_marker(word):
            end = i + 1
            break
    if end is None:
        end = min(_FALLBACK_WORDS, len(words))
    # From the very start, so a list's opening marker ("- ", "1. ") loops with its item.
    unit = reference[: words[end - 1].end()].strip()
    reps = max(2, math.ceil(3 * len(words) / end))
    return " ".join([unit] * reps)


def _words(text: str) -> list[re.Match[str]]:
    return [m for m in _RUN.finditer(text) if any(c.isalnum() for c in m.group())]


def _is_marker(word: re.Match[str]) -> bool:
    return _LIST_MARKER.fullmatch(word.group()) is not None


def _ends_sentence(text: str, word: re.Match[str]) -> bool:
    """Whether `word` closes a sentence: final punctuation, or the end of a line or the text."""
    if word.group().rstrip(_CLOSERS).endswith((".", "!", "?")) and not _is_marker(word):
        return True
    rest = text[word.end() :]
    return not rest.strip() or rest.lstrip(" \t").startswith("\n")


def _inside_sentence(text: str, word: re.Match[str]) -> bool:
    return not _ends_sentence(text, word) and not _is_marker(word)


def _strip_trailing_punctuation(text: str) -> str:
    text = text.rstrip()
    while text and (unicodedata.category(text[-1]).startswith("P") or text[-1].isspace()):
        text = text[:-1]
    return text


# ---------------------------------------------------------------------------- pairs


def _degrade(items: Sequence[Mapping[str, str]], index: int, degradation: Degradation) -> str | None:
    """The worse answer for one item and degradation, or None when it does not apply."""
    item = items[index]
    reference = item["reference"]
    if degradation == "other_answer":
        return other_answer(items, index)
    if degradation == "truncated":
        return truncated(reference)
    if degradation == "repetition":
        return repetition(reference)
    if degradation == "empty":
        return ""
    # other_language / ignores_format: written by hand in the file; '' = not available.
    return item.get(degradation, "") or None


def build_pairs(items: Sequence[Mapping[str, str]]) -> list[CalibrationPair]:
    """All labelled pairs of `items`: for each item, one pair per applicable degradation.

    Pure and deterministic: item order, then `DEGRADATIONS` order. A degradation is left out
    where it does not apply (an empty `other_language` / `ignores_format`, a reference too
    short to truncate, a single item for `other_answer`) and wherever the degraded answer
    would be the reference itself.

    Args:
      items: calibration items as `load_items` returns them (`id`, `instruction`,
        `reference`; `input`, `other_language`, `ignores_format` may be missing).

    Returns:
      The pairs; `better` is always the item's reference.
    """
    pairs: list[CalibrationPair] = []
    for index, item in enumerate(items):
        better = item["reference"]
        for degradation in DEGRADATIONS:
            worse = _degrade(items, index, degradation)
            if worse is None or (degradation != "empty" and worse.strip() == better.strip()):
                continue
            pairs.append(
                CalibrationPair(
                    id=f"{item['id']}:{degradation}",
                    instruction=item["instruction"],
                    input=item.get("input", "") or "",
                    better=better,
                    worse=worse,
                    degradation=degradation,
                )
            )
    return pairs


def load_pairs(path: str | os.PathLike | None = None, limit: int = 0) -> list[CalibrationPair]:
    """The labelled pairs of a calibration file.

    Args:
      path: a calibration file; None (or '') reads the shipped set.
      limit: only the pairs of the first N items (0 = all). `other_answer` still draws on
        the whole file, so a limited run holds exactly the first pairs of a full one.

    Returns:
      The pairs, in `build_pairs` order.

    Raises:
      ValueError: a negative limit.
      DataError: a malformed file (see `load_items`).
    """
    if limit < 0:
        raise ValueError(f"limit must be >= 0 (0 = all), got {limit}")
    items = load_items(path)
    pairs = build_pairs(items)
    if not limit:
        return pairs
    kept = {item["id"] for item in items[:limit]}
    return [p for p in pairs if p.id.rsplit(":", 1)[0] in kept]
