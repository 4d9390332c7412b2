"""Instruction synthesis, text side: the few-shot prompt, its parser, the heuristic filter.

The prompt lists k seed demos as numbered items and ends with an open
`{k+1}. Instruction:` header, so the model continues the list::

    ###
    1. Instruction: Sort these words alphabetically.
    1. Input:
    pear, apple, fig
    ###
    2. Instruction: Name three uses of vinegar in cleaning.
    2. Input:
    <noinput>
    ###
    3. Instruction:

`parse_instructions` reads the continuation back into items; `heuristic_filter` applies
the reference pipeline's rules (DESIGN §1).

The other mode (`LoopConfig.synthesis_mode = 'template_prefix'`, Magpie: Xu et al. 2024)
prompts a chat model with its template's text up to a user message
(`Tokenizer.user_turn_prefix`); the model writes one user message, read back by
`parse_user_turn`, and the same filters apply. The ROUGE-L near-duplicate check against the
pool is `rouge.RougeDeduper`; its drop reason is `ROUGE_DUPLICATE` here.
"""

from __future__ import annotations

import dataclasses
import re
import string
from collections.abc import Sequence
from string import Template

from isheep_jax.loop.seed_pool import SeedTask
from isheep_jax.prompts.templates import render

# Drop reasons (stable strings: they are counted in run manifests).
TRUNCATED = "truncated"
EMPTY_INSTRUCTION = "empty_instruction"
TEMPLATE_LEFTOVER = "template_leftover"
URL = "url"
TOO_SHORT = "too_short"
TOO_LONG = "too_long"
STARTS_WITH_PUNCTUATION = "starts_with_punctuation"
NON_ASCII_START = "non_ascii_start"
BLACKLISTED = "blacklisted"
ROUGE_DUPLICATE = "rouge_duplicate"

NO_INPUT = "<noinput>"
MIN_WORDS = 3  # an instruction needs more than this many words
MAX_WORDS = 150
# Tasks a text-only model cannot do (DESIGN §1); matched as whole words, any case.
BLACKLIST = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to", "video", "audio", "music", "flowchart", "diagram",
)  # fmt: skip
# No "Write a program" rule: Self-Instruct has one, but the Alpaca / I-SHEEP pipelines
# the method follows do not, and coding tasks are part of the intended mix.

_BLACKLIST_RE = re.compile(
    r"\b(?:" + "|".join(re.escape(w).replace(r"\ ", r"\s+") for w in BLACKLIST) + r")\b", re.I
)
_HEADER_RE = re.compile(r"^[ \t]*(\d+)[ \t]*[.)][ \t]*Instruction[ \t]*:", re.M | re.I)
_INPUT_RE = re.compile(r"(?:^|(?<=\s))\d+[ \t]*[.)][ \t]*Input[ \t]*:", re.M | re.I)
_OUTPUT_RE = re.compile(r"(?:^|(?<=\s))\d+[ \t]*[.)][ \t]*Output[ \t]*:", re.M | re.I)
# "###" closing a line ends an item; "### Heading" inside an input does not.
_SEPARATOR_RE = re.compile(r"#{3,}[ \t]*$", re.M)
_NO_INPUT_RE = re.compile(r"<?\s*(?:no[\s_-]*input|none|n/?a|null|empty)\s*>?\.?", re.I)
# Fragments of the list format inside a parsed field mean the parse went wrong or the
# model mixed items up. Capitalised field names and "###" are leftovers in an
# instruction; in an input (which may legitimately show "Input: 3, Output: 9" examples or
# a markdown "### Heading") only the numbered item form and "noinput" count.
_LEFTOVER_INPUT_RE = re.compile(r"(?i:\d+\s*[.)]\s*(?:instruction|input|output)\s*:|no\s*input)")
_LEFTOVER_INSTRUCTION_RE = re.compile(
    r"\b(?:Instruction|Input|Output)\s*:|#{3}|" + _LEFTOVER_INPUT_RE.pattern
)
_URL_RE = re.compile(r"https?:|www\.\w", re.I)
# Finish reasons (`generator.FinishReason`) of a completion the model ended itself.
_ENDED = ("eos", "stop")


@dataclasses.dataclass(frozen=True)
class ParsedInstruction:
    """One item read from a synthesis completion.

    `reason` is set when the item is unusable as parsed (e.g. `TRUNCATED`); the text is
    kept anyway so drop statistics can show it.

    Attributes:
      index: the item's number in the list.
      instruction: the instruction text, stripped.
      input: its input; '' for none (also when the model wrote e.g. `<noinput>`).
      reason: a drop reason, or None.
    """

    index: int
    instruction: str
    input: str = ""
    reason: str | None = None


def format_demo(index: int, task: SeedTask) -> str:
    """One demo in the list format.

    Whitespace in the instruction is collapsed so the `N. Instruction:` line stays one line
    (trailing colons are dropped); an empty input is written as `<noinput>`.

    Args:
      index: the demo's number in the list.
      task: the seed task.

    Returns:
      The demo item, opening with a `###` line.
    """
    instruction = " ".join(task.instruction.split()).rstrip(":")
    body = task.input.strip() or NO_INPUT
    return f"###\n{index}. Instruction: {instruction}\n{index}. Input:\n{body}"


def build_synthesis_prompt(
    demos: Sequence[SeedTask], template: Template | str, num_tasks: int = 20
) -> tuple[str, int]:
    """Renders the synthesis prompt; returns it and the number the model continues at.

    Placeholders: `$demos` (the numbered demo items), `$next_index` (len(demos) + 1),
    `$num_tasks` (the list length the prompt announces).

    Args:
      demos: the seed tasks shown, numbered from 1.
      template: the `instruction_synthesis` template (or its text).
      num_tasks: the list length the prompt announces; at least len(demos) + 1.

    Returns:
      (prompt, len(demos) + 1).

    Raises:
      ValueError: no demos, or `num_tasks` below len(demos) + 1.
    """
    if not demos:
        raise ValueError("build_synthesis_prompt needs at least one demo")
    next_index = len(demos) + 1
    if num_tasks < next_index:
        raise ValueError(f"num_tasks={num_tasks} must be at least len(demos) + 1 = {next_index}")
    block = "\n".join(format_demo(i, task) for i, task in enumerate(demos, start=1))
    return render(template, demos=block, next_index=next_index, num_tasks=num_tasks), next_index


def parse_instructions(
    completion: str, first_index: int, finish_reason: str | None = None
) -> list[ParsedInstruction]:
    """Parses the model's continuation of the numbered list into items.

    The completion normally starts right after the prompt's open `{first_index}.
    Instruction:` header; if it starts with a header (or `###`) itself, that is used.
    An item ends at a `###` line or at the next item's header; text between the two is
    junk and ignored, and a `N. Output:` section is dropped. The last item, with neither
    after it, is taken as cut off by the token limit and is marked `TRUNCATED` -- unless
    the model ended on its own (`finish_reason` "eos", or "stop": a stop string, which the
    sampler strips), in which case it is complete.

    Args:
      completion: the sampled continuation of the synthesis prompt.
      first_index: the number of the prompt's open header.
      finish_reason: why sampling stopped ("eos", "stop", "length"), or None.

    Returns:
      The items in order; an item with an empty instruction (and no other reason) gets
      `EMPTY_INSTRUCTION`.
    """
    text = completion.lstrip()
    text = re.sub(r"^#{3,}[ \t]*\n", "", text).lstrip("\n")
    if not _HEADER_RE.match(text):
        text = f"{first_index}. Instruction:{completion}"
    headers = list(_HEADER_RE.finditer(text))
    items = []
    for i, header in enumerate(headers):
        is_last = i + 1 == len(headers)
        body = text[header.end() : len(text) if is_last else headers[i + 1].start()]
        separator = _SEPARATOR_RE.search(body)
        if separator:
            body = body[: separator.start()]
        complete = separator is not None or not is_last or finish_reason in _ENDED
        items.append(_split_item(int(header.group(1)), body, None if complete else TRUNCATED))
    return items


def parse_user_turn(completion: str, finish_reason: str | None = None, index: int = 0) -> ParsedInstruction:
    """Reads a user message sampled from a chat template's user-turn prefix as one item.

    The message is the instruction; it has no separate input (a model writing a user turn
    puts any input inside it).

    Args:
      completion: the sampled message (the sampler strips the end-of-turn token).
      finish_reason: why sampling stopped; "length" (or None) means the message was cut
        off, "eos" or "stop" that the model closed its turn.
      index: the item's number (one message per prompt: 0).

    Returns:
      The item; `TRUNCATED` unless the turn was closed, `EMPTY_INSTRUCTION` if it is blank.
    """
    instruction = completion.strip()
    reason = TRUNCATED if finish_reason not in _ENDED else (None if instruction else EMPTY_INSTRUCTION)
    return ParsedInstruction(index=index, instruction=instruction, reason=reason)


def _split_item(index: int, body: str, reason: str | None) -> ParsedInstruction:
    output = _OUTPUT_RE.search(body)
    if output:
        body = body[: output.start()]
    marker = _INPUT_RE.search(body)
    instruction = (body[: marker.start()] if marker else body).strip()
    given = body[marker.end() :].strip() if marker else ""
    if _NO_INPUT_RE.fullmatch(given):
        given = ""
    if reason is None and not instruction:
        reason = EMPTY_INSTRUCTION
    return ParsedInstruction(index=index, instruction=instruction, input=given, reason=reason)


def heuristic_filter(item: ParsedInstruction) -> str | None:
    """Returns why `item` should be dropped, or None to keep it.

    An item already carrying a parse `reason` returns that. The checks, in order:
    template leftovers, URLs (the model cannot open them), word count (<= 3 or > 150),
    a leading punctuation mark or non-ASCII character, blacklisted non-text words in the
    instruction or the input.

    Args:
      item: a parsed item.

    Returns:
      A drop reason (`TEMPLATE_LEFTOVER`, `URL`, ...) or None.
    """
    if item.reason is not None:
        return item.reason
    instruction, given = item.instruction.strip(), item.input
    if not instruction:
        return EMPTY_INSTRUCTION
    if _LEFTOVER_INSTRUCTION_RE.search(instruction) or _LEFTOVER_INPUT_RE.search(given):
        return TEMPLATE_LEFTOVER
    if _URL_RE.search(instruction) or _URL_RE.search(given):
        return URL
    words = len(instruction.split())
    if words <= MIN_WORDS:
        return TOO_SHORT
    if words > MAX_WORDS:
        return TOO_LONG
    if instruction[0] in string.punctuation:
        return STARTS_WITH_PUNCTUATION
    if not instruction[0].isascii():
        return NON_ASCII_START
    if _BLACKLIST_RE.search(instruction) or _BLACKLIST_RE.search(given):
        return BLACKLISTED
    return None
