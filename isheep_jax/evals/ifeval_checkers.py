"""IFEval's verifiable instructions: one pure checker per public instruction id.

Ids and kwargs names are exactly those of Google's IFEval (`instruction_following_eval`), so
its public prompt file and ours load alike; the semantics follow its reference checkers,
quirks included (keyword counts match substrings, bullets are `*` or `-` lines, paragraphs
are split on `***`, ...). Where the reference needs NLTK or langdetect, `ifeval_text` and
`language_id` run the same libraries offline (no downloads).

Every checker is `fn(response, *, kwarg=...) -> bool`; its keyword parameters, with their
type hints, are the kwargs the id accepts, so `validate_kwargs` can name an unknown,
missing or ill-typed one before anything runs.
"""

from __future__ import annotations

import inspect
import json
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, Literal, get_args, get_origin, get_type_hints

from isheep_jax.evals import ifeval_text
from isheep_jax.evals.language_id import SUPPORTED_LANGUAGES, detect_language


class InstructionArgsError(ValueError):
    """Kwargs that do not fit an instruction id (unknown, missing or of the wrong kind)."""


class UnknownInstructionError(KeyError):
    """An instruction id we have no checker for."""

    def __str__(self) -> str:  # KeyError would repr() the message
        """The message itself (KeyError would repr() it)."""
        return str(self.args[0])


@dataclass(frozen=True)
class _Rule:
    """A constraint on a kwarg's value, read from `Annotated` metadata by `validate_kwargs`."""

    holds: Callable[[Any], bool]
    meaning: str


Count = Annotated[int, _Rule(lambda v: v >= 0, "a non-negative integer")]
Text = Annotated[str, _Rule(lambda v: bool(v.strip()), "a non-blank string")]
Letter = Annotated[str, _Rule(lambda v: len(v) == 1, "a single character")]
Words = Annotated[
    list,
    _Rule(
        lambda v: bool(v) and all(isinstance(w, str) and w.strip() for w in v),
        "a non-empty list of non-blank strings",
    ),
]
Relation = Literal["less than", "at least"]
LanguageCode = Literal[tuple(sorted(SUPPORTED_LANGUAGES))]  # type: ignore[valid-type]


def _compare(count: int, relation: str, threshold: int) -> bool:
    return count < threshold if relation == "less than" else count >= threshold


# --- punctuation, case, language ---------------------------------------------------------


def no_comma(response: str) -> bool:
    """punctuation:no_comma: the response holds no ASCII comma.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    # Only the ASCII comma, as in the reference (a "，" slips through there too).
    return "," not in response


def english_lowercase(response: str) -> bool:
    """change_case:english_lowercase: all lowercase, and English (or undetectable).

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    # Undetectable language counts as followed, as the reference does on langdetect errors.
    return response.islower() and detect_language(response) in ("en", None)


def english_capital(response: str) -> bool:
    """change_case:english_capital: all uppercase, and English (or undetectable).

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    return response.isupper() and detect_language(response) in ("en", None)


def capital_word_frequency(response: str, *, capital_frequency: Count, capital_relation: Relation) -> bool:
    """change_case:capital_word_frequency: how many words are entirely uppercase.

    Args:
      response: the model's response.
      capital_frequency: the threshold.
      capital_relation: "less than" or "at least" the threshold.

    Returns:
      Whether the instruction is followed.
    """
    return _compare(ifeval_text.count_capital_words(response), capital_relation, capital_frequency)


def response_language(response: str, *, language: LanguageCode) -> bool:
    """language:response_language: the response is in `language` (or undetectable).

    Args:
      response: the model's response.
      language: a langdetect code from `SUPPORTED_LANGUAGES` (ISO 639-1, or "zh-cn"/"zh-tw").

    Returns:
      Whether the instruction is followed.
    """
    return detect_language(response) in (language, None)


# --- keywords ----------------------------------------------------------------------------


def keyword_existence(response: str, *, keywords: Words) -> bool:
    """keywords:existence: every keyword occurs (case-insensitive substring match).

    Args:
      response: the model's response.
      keywords: the words that must appear.

    Returns:
      Whether the instruction is followed.
    """
    # Substring match, case-insensitive ("cat" is found in "category"), as in the reference.
    return all(re.search(re.escape(k), response, flags=re.IGNORECASE) for k in keywords)


def keyword_frequency(response: str, *, keyword: Text, frequency: Count, relation: Relation) -> bool:
    """keywords:frequency: how often a keyword occurs (case-insensitive substring count).

    Args:
      response: the model's response.
      keyword: the keyword (surrounding whitespace ignored).
      frequency: the threshold.
      relation: "less than" or "at least" the threshold.

    Returns:
      Whether the instruction is followed.
    """
    found = len(re.findall(re.escape(keyword.strip()), response, flags=re.IGNORECASE))
    return _compare(found, relation, frequency)


def forbidden_words(response: str, *, forbidden_words: Words) -> bool:
    """keywords:forbidden_words: none of the words occurs as a whole word (any case).

    Args:
      response: the model's response.
      forbidden_words: the words that must not appear.

    Returns:
      Whether the instruction is followed.
    """
    # Whole words here (\b...\b), unlike existence and frequency.
    return not any(
        re.search(r"\b" + re.escape(w) + r"\b", response, flags=re.IGNORECASE) for w in forbidden_words
    )


def letter_frequency(response: str, *, letter: Letter, let_frequency: Count, let_relation: Relation) -> bool:
    """keywords:letter_frequency: how often a letter occurs (any case).

    Args:
      response: the model's response.
      letter: the character counted.
      let_frequency: the threshold.
      let_relation: "less than" or "at least" the threshold.

    Returns:
      Whether the instruction is followed.
    """
    found = Counter(response.lower())[letter.lower()]
    return _compare(found, let_relation, let_frequency)


# --- length ------------------------------------------------------------------------------


def number_words(response: str, *, num_words: Count, relation: Relation) -> bool:
    """length_constraints:number_words: the word count (`ifeval_text.count_words`).

    Args:
      response: the model's response.
      num_words: the threshold.
      relation: "less than" or "at least" the threshold.

    Returns:
      Whether the instruction is followed.
    """
    return _compare(ifeval_text.count_words(response), relation, num_words)


def number_sentences(response: str, *, num_sentences: Count, relation: Relation) -> bool:
    """length_constraints:number_sentences: the sentence count (`ifeval_text.count_sentences`).

    Args:
      response: the model's response.
      num_sentences: the threshold.
      relation: "less than" or "at least" the threshold.

    Returns:
      Whether the instruction is followed.
    """
    return _compare(ifeval_text.count_sentences(response), relation, num_sentences)


def number_paragraphs(response: str, *, num_paragraphs: Count) -> bool:
    """Exactly `num_paragraphs` parts between `***` dividers; an empty inner part fails.

    Args:
      response: the model's response.
      num_paragraphs: the required number of paragraphs.

    Returns:
      Whether the instruction is followed.
    """
    parts = re.split(r"\s?\*\*\*\s?", response)
    found = len(parts)
    for index, part in enumerate(parts):
        if not part.strip():
            if index in (0, len(parts) - 1):
                found -= 1  # a divider at the very start or end opens no paragraph
            else:
                return False
    return found == num_paragraphs


def nth_paragraph_first_word(
    response: str, *, num_paragraphs: Count, nth_paragraph: Count, first_word: Text
) -> bool:
    """Exactly `num_paragraphs` blank-line paragraphs, the nth (1-based) opening with the word.

    The first word is compared case-insensitively, without leading quotes and cut at its
    first `.`, `,`, `?`, `!` or quote.

    Args:
      response: the model's response.
      num_paragraphs: the required number of non-empty paragraphs.
      nth_paragraph: which paragraph (1-based) must open with `first_word`.
      first_word: the word.

    Returns:
      Whether the instruction is followed.
    """
    parts = response.split("\n\n")
    found = sum(1 for part in parts if part.strip())
    # Indexing the raw split (empty parts included) is the reference's behaviour.
    if not 1 <= nth_paragraph <= found:
        return False
    paragraph = parts[nth_paragraph - 1].strip()
    if not paragraph:
        return False
    word = paragraph.split()[0].strip().lstrip("'").lstrip('"')
    head = re.match(r"[^.,?!'\"]*", word).group(0).lower()
    return found == num_paragraphs and head == first_word.lower()


# --- format ------------------------------------------------------------------------------


def number_bullet_lists(response: str, *, num_bullets: Count) -> bool:
    """Exactly `num_bullets` lines starting with `* ` (not `**`) or `-`.

    Args:
      response: the model's response.
      num_bullets: the required number of bullet lines.

    Returns:
      Whether the instruction is followed.
    """
    stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
    dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
    return len(stars) + len(dashes) == num_bullets


def number_highlighted_sections(response: str, *, num_highlights: Count) -> bool:
    """At least `num_highlights` non-empty `*single*` or `**double**` highlights on one line.

    Args:
      response: the model's response.
      num_highlights: the least number of highlights.

    Returns:
      Whether the instruction is followed.
    """
    singles = re.findall(r"\*[^\n\*]*\*", response)
    doubles = re.findall(r"\*\*[^\n\*]*\*\*", response)
    found = sum(1 for h in singles if h.strip("*").strip())
    found += sum(1 for h in doubles if h[2:-2].strip())
    return found >= num_highlights


def multiple_sections(response: str, *, section_spliter: Text, num_sections: Count) -> bool:
    """At least `num_sections` headers "<spliter> <number>" (case-sensitive).

    Args:
      response: the model's response.
      section_spliter: the header word, e.g. "Section".
      num_sections: the least number of headers.

    Returns:
      Whether the instruction is followed.
    """
    # "spliter" is the reference's spelling of the kwarg; keep it for compatibility.
    pattern = r"\s?" + re.escape(section_spliter.strip()) + r"\s?\d+\s?"
    return len(re.split(pattern, response)) - 1 >= num_sections


def json_format(response: str) -> bool:
    """detectable_format:json_format: the response parses as JSON, a Markdown code fence allowed.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    text = response.strip()
    for fence in ("```json", "```Json", "```JSON", "```"):
        if text.startswith(fence):
            text = text[len(fence) :]
            break
    text = text.removesuffix("```").strip()
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def title(response: str) -> bool:
    """detectable_format:title: a non-blank title in double angle brackets, `<<like this>>`.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    return any(t[2:-2].strip() for t in re.findall(r"<<[^\n]+>>", response))


_CONSTRAINED_OPTIONS = ("My answer is yes.", "My answer is no.", "My answer is maybe.")


def constrained_response(response: str) -> bool:
    """detectable_format:constrained_response: "My answer is yes.", "... no." or "... maybe." occurs.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    return any(option in response.strip() for option in _CONSTRAINED_OPTIONS)


# --- content, start/end, combinations ----------------------------------------------------


def number_placeholders(response: str, *, num_placeholders: Count) -> bool:
    """detectable_content:number_placeholders: at least this many `[placeholders]`.

    Args:
      response: the model's response.
      num_placeholders: the least number of square-bracket placeholders.

    Returns:
      Whether the instruction is followed.
    """
    return len(re.findall(r"\[.*?\]", response)) >= num_placeholders


def postscript(response: str, *, postscript_marker: Text) -> bool:
    """A line containing the marker; "P.S." and "P.P.S" tolerate a space after each dot.

    Matching is case-insensitive.

    Args:
      response: the model's response.
      postscript_marker: the marker, e.g. "P.S.".

    Returns:
      Whether the instruction is followed.
    """
    marker = postscript_marker.strip()
    if marker == "P.P.S":
        pattern = r"\s*p\.\s?p\.\s?s.*$"
    elif marker == "P.S.":
        pattern = r"\s*p\.\s?s\..*$"
    else:
        pattern = r"\s*" + re.escape(marker.lower()) + r".*$"
    return re.search(pattern, response.lower(), flags=re.MULTILINE) is not None


def end_checker(response: str, *, end_phrase: Text) -> bool:
    """startend:end_checker: the response ends with the phrase (any case).

    Args:
      response: the model's response.
      end_phrase: the phrase the response must end with.

    Returns:
      Whether the instruction is followed.
    """
    # Closing double quotes around the whole answer are forgiven, as in the reference.
    return response.strip().strip('"').lower().endswith(end_phrase.strip().lower())


def quotation(response: str) -> bool:
    """startend:quotation: the whole response is wrapped in double quotes.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    text = response.strip()
    return len(text) > 1 and text[0] == '"' and text[-1] == '"'


def repeat_prompt(response: str, *, prompt_to_repeat: Text) -> bool:
    """combination:repeat_prompt: the response opens with the given prompt (any case).

    Args:
      response: the model's response.
      prompt_to_repeat: the text the response must start with.

    Returns:
      Whether the instruction is followed.
    """
    return response.strip().lower().startswith(prompt_to_repeat.strip().lower())


def two_responses(response: str) -> bool:
    """Two different answers separated by `******`; no empty answer between separators.

    Args:
      response: the model's response.

    Returns:
      Whether the instruction is followed.
    """
    answers = []
    parts = response.split("******")
    for index, part in enumerate(parts):
        if part.strip():
            answers.append(part.strip())
        elif index not in (0, len(parts) - 1):
            return False
    return len(answers) == 2 and answers[0] != answers[1]


CHECKERS: dict[str, Callable[..., bool]] = {
    "punctuation:no_comma": no_comma,
    "change_case:english_lowercase": english_lowercase,
    "change_case:english_capital": english_capital,
    "change_case:capital_word_frequency": capital_word_frequency,
    "language:response_language": response_language,
    "keywords:existence": keyword_existence,
    "keywords:frequency": keyword_frequency,
    "keywords:forbidden_words": forbidden_words,
    "keywords:letter_frequency": letter_frequency,
    "length_constraints:number_words": number_words,
    "length_constraints:number_sentences": number_sentences,
    "length_constraints:number_paragraphs": number_paragraphs,
    "length_constraints:nth_paragraph_first_word": nth_paragraph_first_word,
    "detectable_format:number_bullet_lists": number_bullet_lists,
    "detectable_format:number_highlighted_sections": number_highlighted_sections,
    "detectable_format:multiple_sections": multiple_sections,
    "detectable_format:json_format": json_format,
    "detectable_format:title": title,
    "detectable_format:constrained_response": constrained_response,
    "detectable_content:number_placeholders": number_placeholders,
    "detectable_content:postscript": postscript,
    "startend:end_checker": end_checker,
    "startend:quotation": quotation,
    "combination:repeat_prompt": repeat_prompt,
    "combination:two_responses": two_responses,
}


def _kwarg_hints(checker: Callable[..., bool]) -> dict[str, Any]:
    """The checker's keyword-only parameters and their (Annotated/Literal) type hints."""
    hints = get_type_hints(checker, include_extras=True)
    return {
        name: hints[name]
        for name, param in inspect.signature(checker).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }


KWARGS: dict[str, dict[str, Any]] = {iid: _kwarg_hints(fn) for iid, fn in CHECKERS.items()}


def _value_problem(value: Any, hint: Any) -> str | None:
    """Why `value` does not fit `hint`, or None if it does."""
    if get_origin(hint) is Literal:
        options = get_args(hint)
        return None if value in options else f"one of {', '.join(map(repr, options))}"
    rules: tuple[_Rule, ...] = ()
    if get_origin(hint) is Annotated:
        hint, *meta = get_args(hint)
        rules = tuple(m for m in meta if isinstance(m, _Rule))
    if hint is int and (not isinstance(value, int) or isinstance(value, bool)):
        return "an integer"
    if hint is str and not isinstance(value, str):
        return "a string"
    if hint is list and not isinstance(value, (list, tuple)):
        return "a list"
    for rule in rules:
        if not rule.holds(value):
            return rule.meaning
    return None


def validate_kwargs(instruction_id: str, kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """Checked kwargs for `instruction_id`; raises naming the id and the offending kwarg.

    Keys whose value is None are dropped first: the Hugging Face copy of IFEval stores every
    kwarg of every instruction, with null where an instruction does not use it.

    Args:
      instruction_id: a key of `CHECKERS`, e.g. "keywords:frequency".
      kwargs: the instruction's kwargs as read from the prompt file; None for none.

    Returns:
      The kwargs without the None values, every one checked against the checker's hints.

    Raises:
      UnknownInstructionError: `instruction_id` has no checker.
      InstructionArgsError: `kwargs` is not a mapping, or has an unknown, missing or
        ill-typed kwarg.
    """
    if instruction_id not in CHECKERS:
        raise UnknownInstructionError(f"unknown IFEval instruction id {instruction_id!r}")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping):
        raise InstructionArgsError(f"{instruction_id}: kwargs must be an object, got {kwargs!r}")
    given = {k: v for k, v in kwargs.items() if v is not None}
    accepted = KWARGS[instruction_id]
    unknown = sorted(set(given) - set(accepted))
    if unknown:
        raise InstructionArgsError(
            f"{instruction_id}: unknown kwargs {unknown}; accepted: {sorted(accepted) or 'none'}"
        )
    missing = sorted(set(accepted) - set(given))
    if missing:
        raise InstructionArgsError(f"{instruction_id}: missing kwargs {missing}")
    for name, hint in accepted.items():
        problem = _value_problem(given[name], hint)
        if problem:
            raise InstructionArgsError(f"{instruction_id}: kwarg {name}={given[name]!r} must be {problem}")
    return given


def check(
    instruction_id: str, response: str, kwargs: Mapping[str, Any] | None = None, prompt: str = ""
) -> bool:
    """Whether `response` follows one instruction (strict: the response as given).

    A blank response follows nothing, as in the reference's evaluation. `prompt` is accepted
    for ids that need it; none of the public ids does (repeat_prompt carries its own text).

    Args:
      instruction_id: a key of `CHECKERS`.
      response: the model's response.
      kwargs: the instruction's kwargs (validated by `validate_kwargs`).
      prompt: the prompt the response answers.

    Returns:
      Whether the instruction is followed.

    Raises:
      UnknownInstructionError: `instruction_id` has no checker.
      InstructionArgsError: the kwargs do not fit the id.
    """
    args = validate_kwargs(instruction_id, kwargs)
    checker = CHECKERS[instruction_id]
    if "prompt" in KWARGS[instruction_id]:
        args["prompt"] = prompt
    return bool(response.strip()) and checker(response, **args)


def loose_variants(response: str) -> tuple[str, ...]:
    """The response as given plus the reference's seven relaxations.

    First line removed, last line removed, both removed (each stripped), and each of those
    four with every `*` deleted: forgives a chatty first line ("Sure, here it is:"), a sign-
    off, and markdown emphasis that breaks exact-match instructions.

    Args:
      response: the model's response.

    Returns:
      Eight texts: the response, the response without `*`, the three trimmed versions, and
      the three trimmed versions without `*`.
    """
    lines = response.split("\n")
    trimmed = (
        "\n".join(lines[1:]).strip(),
        "\n".join(lines[:-1]).strip(),
        "\n".join(lines[1:-1]).strip(),
    )
    return (response, response.replace("*", ""), *trimmed, *(t.replace("*", "") for t in trimmed))


def check_loose(
    instruction_id: str, response: str, kwargs: Mapping[str, Any] | None = None, prompt: str = ""
) -> bool:
    """Whether any loose variant of `response` follows the instruction.

    Args:
      instruction_id: a key of `CHECKERS`.
      response: the model's response.
      kwargs: the instruction's kwargs.
      prompt: the prompt the response answers.

    Returns:
      Whether some variant of `loose_variants(response)` passes `check`.

    Raises:
      UnknownInstructionError: `instruction_id` has no checker.
      InstructionArgsError: the kwargs do not fit the id.
    """
    return any(check(instruction_id, v, kwargs, prompt) for v in loose_variants(response))
