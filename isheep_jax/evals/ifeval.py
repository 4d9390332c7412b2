"""IFEval-format prompts: loading, scoring responses, strict/loose accuracy.

Input format (Google's public `input_data.jsonl`, and ours in `evals/data/`): one JSON
object per line with `key`, `prompt`, `instruction_id_list` and `kwargs` (one object per
instruction id).

Accuracy, as in the reference's report:
- strict: the raw response must follow the instruction;
- loose: any of `loose_variants(response)` may (first/last line dropped, `*` removed);
- prompt level: a prompt counts when all its instructions are followed;
- instruction level: every instruction of every prompt counts once.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from isheep_jax.core.io_utils import DataError, iter_jsonl
from isheep_jax.evals.ifeval_checkers import (
    CHECKERS,
    InstructionArgsError,
    check,
    check_loose,
    validate_kwargs,
)


@dataclass(frozen=True)
class Instruction:
    """One verifiable instruction of a prompt: its id and checked kwargs.

    Attributes:
      id: the instruction id, a key of `ifeval_checkers.CHECKERS`.
      kwargs: its kwargs, as `validate_kwargs` returned them.
    """

    id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class IFEvalPrompt:
    """One prompt of an IFEval-format file with the instructions it carries.

    Attributes:
      key: the record's `key`.
      prompt: the prompt text.
      instructions: the prompt's instructions that have a checker, in file order.
      line: 1-based line in the source file, for messages.
    """

    key: int | str
    prompt: str
    instructions: tuple[Instruction, ...]
    line: int = 0  # 1-based line in the source file, for messages

    @property
    def instruction_ids(self) -> tuple[str, ...]:
        """The ids of `instructions`, in order."""
        return tuple(i.id for i in self.instructions)


@dataclass(frozen=True)
class UnknownInstruction:
    """An instruction id with no checker, where it was found.

    Attributes:
      path: the prompt file.
      line: 1-based line of the record.
      key: the record's `key`.
      instruction_id: the id without a checker.
    """

    path: str
    line: int
    key: int | str
    instruction_id: str

    def __str__(self) -> str:
        """ "<path>:<line>: key <key>: unknown instruction id '<id>'"."""
        return f"{self.path}:{self.line}: key {self.key}: unknown instruction id {self.instruction_id!r}"


@dataclass(frozen=True)
class LoadedPrompts:
    """What `load_prompts` read.

    Attributes:
      prompts: the prompts with at least one known instruction, in file order.
      unknown: the instructions skipped for an unknown id (only with `strict=False`).
    """

    prompts: tuple[IFEvalPrompt, ...]
    unknown: tuple[UnknownInstruction, ...] = ()


_FIELDS = ("key", "prompt", "instruction_id_list", "kwargs")


def _parse_record(record: Any, where: str) -> tuple[Any, str, list[str], list[Any]]:
    """The four fields of one line, checked for presence and shape."""
    if not isinstance(record, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    missing = [f for f in _FIELDS if f not in record]
    if missing:
        raise DataError(f"{where}: missing field(s) {missing}")
    key, prompt, ids, kwargs = (record[f] for f in _FIELDS)
    if not isinstance(key, (int, str)) or isinstance(key, bool):
        raise DataError(f"{where}: key must be an integer or string, got {key!r}")
    if not isinstance(prompt, str) or not prompt.strip():
        raise DataError(f"{where}: prompt must be a non-empty string")
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise DataError(f"{where}: instruction_id_list must be a list of strings")
    if not isinstance(kwargs, list) or len(kwargs) != len(ids):
        raise DataError(f"{where}: kwargs must be a list with one object per instruction id ({len(ids)} ids)")
    return key, prompt, ids, kwargs


def load_prompts(path: str | os.PathLike, *, strict: bool = True) -> LoadedPrompts:
    """Reads an IFEval-format JSONL file.

    Unknown instruction ids are collected with their lines. With `strict=True` any unknown
    id raises one `DataError` listing all of them; with `strict=False` those instructions are
    skipped (a prompt left with none is skipped too) and returned in `.unknown`. Malformed
    JSON, missing fields, duplicate keys and bad kwargs of known ids always raise, naming
    file and line.

    Args:
      path: the JSONL file.
      strict: raise on unknown instruction ids instead of skipping them.

    Returns:
      The prompts and the skipped unknown instructions.

    Raises:
      DataError: a malformed record, a duplicate key, bad kwargs of a known id, or (with
        `strict`) unknown instruction ids.
    """
    prompts: list[IFEvalPrompt] = []
    unknown: list[UnknownInstruction] = []
    seen_keys: dict[Any, int] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        key, prompt, ids, kwargs = _parse_record(record, where)
        if key in seen_keys:
            raise DataError(f"{where}: duplicate key {key!r} (first on line {seen_keys[key]})")
        seen_keys[key] = lineno
        instructions = []
        for iid, kw in zip(ids, kwargs):
            if iid not in CHECKERS:
                unknown.append(UnknownInstruction(str(path), lineno, key, iid))
                continue
            try:
                instructions.append(Instruction(iid, validate_kwargs(iid, kw)))
            except InstructionArgsError as e:
                raise DataError(f"{where}: {e}") from None
        if instructions:
            prompts.append(IFEvalPrompt(key, prompt, tuple(instructions), lineno))
    if unknown and strict:
        listing = "\n  ".join(str(u) for u in unknown)
        raise DataError(f"{path}: {len(unknown)} unknown instruction id(s):\n  {listing}")
    return LoadedPrompts(tuple(prompts), tuple(unknown))


def shipped_prompts_path() -> os.PathLike:
    """Our own hand-written prompt set, shipped with the package.

    Returns:
      The path of `isheep_jax/evals/data/ifeval_prompts.jsonl`.
    """
    return resources.files("isheep_jax.evals") / "data" / "ifeval_prompts.jsonl"


@dataclass(frozen=True)
class PromptOutcome:
    """Per-instruction results of one prompt's response.

    Attributes:
      prompt: the prompt.
      response: the response scored.
      strict: per instruction of `prompt`, whether the raw response follows it.
      loose: per instruction, whether some loose variant of the response follows it.
    """

    prompt: IFEvalPrompt
    response: str
    strict: tuple[bool, ...]
    loose: tuple[bool, ...]


def score_response(prompt: IFEvalPrompt, response: str) -> PromptOutcome:
    """Checks one response against each instruction of its prompt, strict and loose.

    Args:
      prompt: the prompt with its instructions.
      response: the model's response to it.

    Returns:
      The strict and loose result of each instruction.
    """
    strict, loose = [], []
    for inst in prompt.instructions:
        strict.append(check(inst.id, response, inst.kwargs, prompt.prompt))
        # Strict success implies loose success (the raw response is the first variant).
        loose.append(strict[-1] or check_loose(inst.id, response, inst.kwargs, prompt.prompt))
    return PromptOutcome(prompt, response, tuple(strict), tuple(loose))


@dataclass(frozen=True)
class Accuracy:
    """How many of `total` items (prompts or instructions) were followed, strict and loose.

    Attributes:
      total: the number of items.
      strict: items followed by the raw response.
      loose: items followed by some loose variant.
    """

    total: int
    strict: int
    loose: int

    @property
    def strict_accuracy(self) -> float:
        """strict / total; NaN when there are no items."""
        return self.strict / self.total if self.total else float("nan")

    @property
    def loose_accuracy(self) -> float:
        """loose / total; NaN when there are no items."""
        return self.loose / self.total if self.total else float("nan")

    def to_dict(self) -> dict[str, Any]:
        """The counts and both accuracies as a JSON-ready dict.

        Returns:
          {total, strict, loose, strict_accuracy, loose_accuracy}.
        """
        return {
            "total": self.total,
            "strict": self.strict,
            "loose": self.loose,
            "strict_accuracy": self.strict_accuracy,
            "loose_accuracy": self.loose_accuracy,
        }


@dataclass(frozen=True)
class IFEvalResult:
    """Prompt- and instruction-level accuracy, and instruction level broken down.

    `per_instruction` is keyed by full id ("keywords:frequency"), `per_group` by the part
    before the colon ("keywords"), both sorted by key.

    Attributes:
      prompts: prompt-level accuracy (a prompt counts when all its instructions pass).
      instructions: instruction-level accuracy over every instruction of every prompt.
      per_instruction: instruction-level accuracy per instruction id.
      per_group: instruction-level accuracy per id group.
    """

    prompts: Accuracy
    instructions: Accuracy
    per_instruction: Mapping[str, Accuracy]
    per_group: Mapping[str, Accuracy]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready summary.

        Returns:
          {prompt_level, instruction_level, per_instruction: {id: ...}, per_group: {group: ...}},
          each accuracy as `Accuracy.to_dict`.
        """
        return {
            "prompt_level": self.prompts.to_dict(),
            "instruction_level": self.instructions.to_dict(),
            "per_instruction": {k: v.to_dict() for k, v in self.per_instruction.items()},
            "per_group": {k: v.to_dict() for k, v in self.per_group.items()},
        }


def _tally(triples: Iterable[tuple[str, bool, bool]]) -> dict[str, Accuracy]:
    """(key, strict, loose) triples → Accuracy per key, sorted by key."""
    totals: dict[str, list[int]] = {}
    for key, strict, loose in triples:
        row = totals.setdefault(key, [0, 0, 0])
        row[0] += 1
        row[1] += strict
        row[2] += loose
    return {k: Accuracy(*totals[k]) for k in sorted(totals)}


def aggregate(outcomes: Sequence[PromptOutcome]) -> IFEvalResult:
    """Prompt- and instruction-level accuracy over scored prompts.

    Args:
      outcomes: one scored response per prompt.

    Returns:
      The accuracies, also per instruction id and per id group.
    """
    triples = [
        (inst.id, s, l) for o in outcomes for inst, s, l in zip(o.prompt.instructions, o.strict, o.loose)
    ]
    return IFEvalResult(
        prompts=Accuracy(
            len(outcomes), sum(all(o.strict) for o in outcomes), sum(all(o.loose) for o in outcomes)
        ),
        instructions=Accuracy(len(triples), sum(s for _, s, _ in triples), sum(l for _, _, l in triples)),
        per_instruction=_tally(triples),
        per_group=_tally((iid.split(":")[0], s, l) for iid, s, l in triples),
    )


def evaluate(prompts: Sequence[IFEvalPrompt], responses: Sequence[str]) -> IFEvalResult:
    """Scores `responses[i]` against `prompts[i]` and aggregates.

    Args:
      prompts: the prompts.
      responses: one response per prompt, in the same order.

    Returns:
      The aggregated accuracies.

    Raises:
      ValueError: the two sequences differ in length.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    return aggregate([score_response(p, r) for p, r in zip(prompts, responses)])
