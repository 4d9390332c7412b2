"""IFEval-format prompts: loading, scoring responses, strict/loose accuracy.

Input format (Google's public `input_data.jsonl`, and ours in `evals/data/`): one JSON
object per line with `key`, `prompt`, `instruction_id_list` and `kwargs` (one object per
instruction id).

Accuracy, as in the reference's report:
- strict: the raw response must follow the instruction;
- loose: any of `loose_variants(response)` may (first/last line dropped, `*` removed);
- prompt level: a prompt counts when all its instructions are followed;
- instruction level: every instruction of every prompt counts once.

Scoring a responses file (`isheep ifeval-score`): `load_responses` reads the reference's
`input_response_data` format (`prompt` and `response` per line), `score_responses` matches
it to the prompts by exact prompt text, as the reference does, and `write_scores` writes the
reference's `eval_results_strict.jsonl` / `eval_results_loose.jsonl` plus our `scores.json`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

from etils import epath

from isheep_jax.core import choices, io_utils
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


def outcome_rows(outcomes: Sequence[PromptOutcome]) -> list[dict[str, Any]]:
    """Per-prompt results as JSON-ready rows, to store beside the aggregate.

    Args:
      outcomes: scored prompts.

    Returns:
      One `{"key": ..., "strict": [...], "loose": [...]}` per outcome, in order; `strict` and
      `loose` hold one bool per instruction, in `IFEvalPrompt.instructions` order.
    """
    # bool(): the rows must hold JSON booleans whatever truthy value a checker returned.
    return [
        {"key": o.prompt.key, "strict": [bool(s) for s in o.strict], "loose": [bool(l) for l in o.loose]}
        for o in outcomes
    ]


# ------------------------------------------------------------------ scoring a responses file
Mode = Literal["strict", "loose"]
MODES: tuple[Mode, ...] = choices.values(Mode)

# The files of a score folder: the reference's per-prompt files (in MODES order), then ours.
SCORE_FILES = ("eval_results_strict.jsonl", "eval_results_loose.jsonl", "scores.json")
# Marks scores.json as ours, so that a rerun may replace the folder (and nothing else's).
SCORES_FORMAT = "isheep_jax.ifeval_score/1"

_SHOWN = 3  # missing responses named in the error message


def _excerpt(text: str, width: int = 60) -> str:
    """The start of `text`, quoted, for messages."""
    return repr(text if len(text) <= width else text[:width] + "...")


def load_responses(path: str | os.PathLike) -> dict[str, str]:
    """Reads a responses file in the reference scorer's `input_response_data` format.

    One JSON object per line with a string `prompt` and a string `response`; other fields
    (such as the `key` that `isheep eval` writes to ifeval_responses.jsonl) are ignored.

    Args:
      path: the JSONL file.

    Returns:
      The response to each prompt text, in file order.

    Raises:
      DataError: invalid JSON, a line that is not an object with string `prompt` and
        `response`, or a prompt given twice (the reference would silently keep the last);
        the message names the file and line.
    """
    responses: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict):
            raise DataError(
                f"{where}: expected a JSON object with prompt and response, got {type(record).__name__}"
            )
        missing = [f for f in ("prompt", "response") if f not in record]
        if missing:
            raise DataError(f"{where}: missing field(s) {missing}")
        for name in ("prompt", "response"):
            if not isinstance(record[name], str):
                raise DataError(f"{where}: {name} must be a string, got {type(record[name]).__name__}")
        prompt = record["prompt"]
        if prompt in first_line:
            raise DataError(
                f"{where}: duplicate prompt (first on line {first_line[prompt]}): {_excerpt(prompt)}"
            )
        first_line[prompt] = lineno
        responses[prompt] = record["response"]
    return responses


def _missing_message(
    missing: Sequence[IFEvalPrompt], total: int, responses: Mapping[str, str], source: str | os.PathLike
) -> str:
    """The error for prompts without a response: how many, the first few, a likely cause."""
    shown = "; ".join(f"key {p.key} (input line {p.line}): {_excerpt(p.prompt)}" for p in missing[:_SHOWN])
    more = f"; and {len(missing) - _SHOWN} more" if len(missing) > _SHOWN else ""
    message = (
        f"{source}: no response for {len(missing)} of {total} prompt(s) "
        f"(matched by exact prompt text): {shown}{more}"
    )
    # A prompt stripped or re-wrapped on its way through a generation script is the usual
    # cause, and invisible in the message: name it where stripping would have matched.
    stripped = {r.strip() for r in responses}
    near = sum(p.prompt.strip() in stripped for p in missing)
    if near:
        message += f" ({near} of them differ from a response's prompt only in leading/trailing whitespace)"
    return message


def score_responses(
    prompts: Sequence[IFEvalPrompt],
    responses_by_prompt: Mapping[str, str],
    *,
    source: str | os.PathLike = "responses",
) -> tuple[IFEvalResult, list[PromptOutcome]]:
    """Scores the response to each prompt, matched by exact prompt text, and aggregates.

    Responses to other prompts are ignored, as in the reference scorer. Unlike `evaluate`,
    the responses need not come in the prompts' order.

    Args:
      prompts: the prompts, e.g. `load_prompts(...).prompts`.
      responses_by_prompt: prompt text -> response, e.g. `load_responses(...)`.
      source: where the responses come from, to name in the error message.

    Returns:
      The aggregated accuracies and the per-prompt outcomes, in `prompts` order.

    Raises:
      DataError: some prompts have no response; the message says how many and names the
        first few (the reference stops at the first with a KeyError).
    """
    missing = [p for p in prompts if p.prompt not in responses_by_prompt]
    if missing:
        raise DataError(_missing_message(missing, len(prompts), responses_by_prompt, source))
    outcomes = [score_response(p, responses_by_prompt[p.prompt]) for p in prompts]
    return aggregate(outcomes), outcomes


def reference_rows(outcomes: Sequence[PromptOutcome], mode: Mode) -> list[dict[str, Any]]:
    """The rows of the reference's `eval_results_<mode>.jsonl`.

    `instruction_id_list` holds the prompt's scored instructions: an id without a checker,
    skipped on loading (`load_prompts(strict=False)`), is left out, so that it lines up
    with `follow_instruction_list`.

    Args:
      outcomes: scored prompts.
      mode: "strict" or "loose".

    Returns:
      One dict per outcome with `follow_all_instructions`, `follow_instruction_list`,
      `instruction_id_list`, `prompt` and `response` (the raw response in both modes), in
      that order: the reference writes its result's fields alphabetically.
    """
    rows = []
    for o in outcomes:
        follow = [bool(x) for x in (o.strict if mode == "strict" else o.loose)]
        rows.append(
            {
                "follow_all_instructions": all(follow),
                "follow_instruction_list": follow,
                "instruction_id_list": list(o.prompt.instruction_ids),
                "prompt": o.prompt.prompt,
                "response": o.response,
            }
        )
    return rows


def reference_report(result: IFEvalResult, mode: Mode, results_file: str | os.PathLike) -> str:
    """What the reference scorer prints for one mode, line for line.

    A rule of 64 `=`, "<results_file> Accuracy Scores:", the prompt- and instruction-level
    accuracy, then (each after a blank line) the accuracy per id group and per instruction
    id, sorted, with floats printed as Python prints them: the text compares line by line
    with the reference's output.

    Args:
      result: the aggregated accuracies.
      mode: "strict" or "loose".
      results_file: the per-prompt file of this mode, for the heading.

    Returns:
      The report, without a trailing newline.
    """
    acc = lambda a: a.strict_accuracy if mode == "strict" else a.loose_accuracy
    lines = [
        "=" * 64,
        f"{results_file} Accuracy Scores:",
        f"prompt-level: {acc(result.prompts)}",
        f"instruction-level: {acc(result.instructions)}",
        "",
        *(f"{group} {acc(a)}" for group, a in result.per_group.items()),
        "",
        *(f"{iid} {acc(a)}" for iid, a in result.per_instruction.items()),
    ]
    return "\n".join(lines)


def summary_lines(result: IFEvalResult) -> list[str]:
    """The four headline accuracies with their counts.

    Args:
      result: the aggregated accuracies.

    Returns:
      Two lines, "prompt-level: strict 0.25 (1/4), loose 0.75 (3/4)" and the same for the
      instruction level.
    """
    return [
        f"{name}: strict {a.strict_accuracy} ({a.strict}/{a.total}), "
        f"loose {a.loose_accuracy} ({a.loose}/{a.total})"
        for name, a in (("prompt-level", result.prompts), ("instruction-level", result.instructions))
    ]


def default_score_dir(responses: str | os.PathLike) -> epath.Path:
    """Where `isheep ifeval-score` writes by default: `<responses stem>_ifeval` beside the file.

    Args:
      responses: the responses file.

    Returns:
      The folder's absolute path.
    """
    path = io_utils.absolute(responses)
    return path.parent / f"{path.stem}_ifeval"


def _holds_our_scores(out: epath.Path) -> bool:
    """Whether `out` is a finished score folder of ours (our files only, our scores.json)."""
    if not out.is_dir():
        return False
    names = {p.name for p in out.iterdir()}
    if "scores.json" not in names or not names <= set(SCORE_FILES):
        return False
    try:
        scores = io_utils.read_json(out / "scores.json")
    except (DataError, UnicodeDecodeError):
        return False
    return isinstance(scores, dict) and scores.get("format") == SCORES_FORMAT


def _same_or_inside(child: epath.Path, parent: epath.Path) -> bool:
    return (str(child).rstrip("/") + "/").startswith(str(parent).rstrip("/") + "/")


def score_dir_problem(out_dir: str | os.PathLike, sources: Iterable[str | os.PathLike] = ()) -> str | None:
    """Why `write_scores` would refuse `out_dir`, or None if it may write there.

    Allowed: what `io_utils.claim_output_dir` allows (a missing or empty folder, or an
    interrupted save of ours), and a finished score folder of ours (its files are replaced).
    A folder of the reference scorer's results is not ours: it is kept to compare with.

    Args:
      out_dir: the score folder.
      sources: the scored files; the folder may be neither one of them nor hold one.

    Returns:
      A message naming the folder and what is in it, or None.
    """
    out = io_utils.absolute(out_dir)
    srcs = [io_utils.absolute(s) for s in sources]
    if _holds_our_scores(out) and not any(_same_or_inside(s, out) for s in srcs):
        return None
    return io_utils.output_dir_problem(out, srcs)


def write_scores(
    out_dir: str | os.PathLike,
    result: IFEvalResult,
    outcomes: Sequence[PromptOutcome],
    info: Mapping[str, Any] | None = None,
    sources: Iterable[str | os.PathLike] = (),
) -> epath.Path:
    """Writes a score folder: the reference's two per-prompt files and our scores.json.

    `eval_results_strict.jsonl` and `eval_results_loose.jsonl` hold `reference_rows`, as
    the reference writes them (ASCII escapes, its separators), so the files diff against its
    own. `scores.json` holds `SCORES_FORMAT`, `info` and `result.to_dict()`; it is written
    last. The folder must pass `score_dir_problem`; a finished score folder of ours is
    replaced. One process only (the `isheep ifeval-score` command).

    Args:
      out_dir: the score folder (created).
      result: the aggregated accuracies.
      outcomes: the per-prompt outcomes.
      info: more entries for scores.json (the scored files, skipped instructions, ...).
      sources: the scored files (see `score_dir_problem`).

    Returns:
      The folder's absolute path.

    Raises:
      io_utils.OutputDirError: the folder holds files that are not a score folder of ours,
        or is (or holds) one of `sources`; nothing was changed.
    """
    out = io_utils.absolute(out_dir)
    sources = list(sources)
    problem = score_dir_problem(out, sources)
    if problem:
        raise io_utils.OutputDirError(problem)
    if _holds_our_scores(out):  # an earlier score folder of ours: its files go, then it is claimed afresh
        for name in SCORE_FILES:
            if (out / name).exists():
                (out / name).unlink()
    out = io_utils.claim_output_dir(out, sources)
    for mode, name in zip(MODES, SCORE_FILES):
        # json.dumps' defaults, as the reference writes: the files compare byte for byte.
        io_utils.write_text_atomic(
            out / name, "".join(json.dumps(r) + "\n" for r in reference_rows(outcomes, mode))
        )
    io_utils.write_json(out / SCORE_FILES[2], {"format": SCORES_FORMAT, **(info or {}), **result.to_dict()})
    io_utils.release_output_dir(out)
    return out
