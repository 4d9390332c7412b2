"""Rule filter on a synthesized response (DESIGN §1 step 3), before self-assessment.

Each rule catches a way a base model fails to *answer*: it stops mid-answer, plays both
sides of a chat, turns the task into a quiz, asks the user back, drifts into another
language, or loops. `filter_response` returns the first matching reason or None.
"""

from __future__ import annotations

import dataclasses
import re
import unicodedata

# Drop reasons (stable strings: they are counted in run manifests).
TRUNCATED = "truncated"
EMPTY = "empty"
ROLE_PLAY_LEAKAGE = "role_play_leakage"
REPETITION = "repetition"
NON_TARGET_LANGUAGE = "non_target_language"
MULTIPLE_CHOICE = "multiple_choice"
ASKS_QUESTION_BACK = "asks_question_back"

# Target language -> the scripts its letters are written in (prefixes of
# unicodedata.name; "ascii" means a-z/A-Z). The check is by script: it catches drift into
# another script (Chinese, Cyrillic, ...) but cannot tell English from French. A
# translation task into another script is dropped too, as in the reference pipeline.
LANGUAGE_SCRIPTS: dict[str, tuple[str, ...]] = {
    "en": ("ascii",),
    "latin": ("LATIN",),  # any Latin-script language: fr, de, es, ...
    "ru": ("CYRILLIC",),
    "zh": ("CJK",),
    "ja": ("CJK", "HIRAGANA", "KATAKANA"),
    "ko": ("HANGUL",),
    "ar": ("ARABIC",),
    "el": ("GREEK",),
}


@dataclasses.dataclass(frozen=True)
class ResponseFilterConfig:
    """Thresholds of the rule filter.

    Attributes:
      target_language: a key of `LANGUAGE_SCRIPTS`: the language responses should be in.
      min_target_letters: least fraction of letters (str.isalpha) in the target script;
        0.8 lets English with accented names ("crème brûlée in Zürich") through.
      ngram_size: n of the word n-grams of the repetition check.
      min_ngrams: see min_unique_ngram_ratio.
      min_unique_ngram_ratio: a response with at least `min_ngrams` word n-grams of which
        fewer than this fraction are distinct is looping.
      max_loop_chars: a chunk of 1-20 characters repeated back to back over more than this
        many characters is looping too ("hahaha...", "1, 1, 1, ...").
      short_question_words: a response of at most this many words that ends in "?" is a
        question back (unless the task asks for questions).

    Raises:
      ValueError: an unknown target_language.
    """

    target_language: str = "en"
    min_target_letters: float = 0.8
    ngram_size: int = 4
    min_ngrams: int = 30
    min_unique_ngram_ratio: float = 0.5
    max_loop_chars: int = 60
    short_question_words: int = 40

    def __post_init__(self) -> None:
        """Checks that the target language is known."""
        if self.target_language not in LANGUAGE_SCRIPTS:
            raise ValueError(
                f"unknown target_language {self.target_language!r}; known: {sorted(LANGUAGE_SCRIPTS)}"
            )


DEFAULT_CONFIG = ResponseFilterConfig()

# Chat-turn markers at a line start; they are expected when the task asks for a dialogue.
_ROLE_MARKER_RE = re.compile(r"^[ \t]*(?:user|assistant|human|system)[ \t]*:", re.I | re.M)
_WANTS_DIALOGUE_RE = re.compile(
    r"\b(?:conversation|dialog(?:ue)?|chat|script|transcript|role[- ]?play)\b", re.I
)
# Instruction-format headers and special tokens: leakage whatever the task.
_TEMPLATE_LEAK_RE = re.compile(
    r"^[ \t]*#{2,}[ \t]*(?:instruction|input|response|output)\b"
    r"|^[ \t]*(?:\d+[ \t]*\.[ \t]*)?instruction[ \t]*:"
    r"|<\|[a-z_]+\|>|\[/?INST\]|</s>|<(?:start|end)_of_turn>",
    re.I | re.M,
)
# An option marker opening a line: "A)", "(B)", "C.", "d:" followed by text.
_OPTION_LINE_RE = re.compile(r"^[ \t]*(?:\(([A-Ea-e])\)|([A-Ea-e])[).:])[ \t]+\S", re.M)
_INLINE_OPTION_RE = re.compile(r"\(([A-E])\)[ \t]*\w")
_ANSWER_CHOICES_RE = re.compile(r"\banswer\s+choices\s*:", re.I)
_OPTIONS_HEADER_RE = re.compile(r"^[ \t]*(?:options|choices)\s*:", re.I | re.M)
_ANSWER_LINE_RE = re.compile(r"^[ \t]*(?:correct\s+)?answer\s*(?:is)?\s*[:=]?\s*\(?[A-E]\b", re.I | re.M)
_WANTS_OPTIONS_RE = re.compile(
    r"\b(?:options?|choices?|multiple[- ]choice|mcq|quiz(?:zes)?|exam|test\s+questions?"
    r"|alternatives?|outline)\b",
    re.I,
)
_CLARIFY_OPENER_RE = re.compile(
    r"(?:(?:i'?m|i\s+am)\s+sorry,?\s+(?:but\s+)?)?"
    r"(?:(?:could|can|would)\s+you\s+(?:please\s+)?(?:clarify|specify|provide|share|tell\s+me|give\s+me|"
    r"elaborate|explain\s+what|let\s+me\s+know)"
    r"|please\s+(?:clarify|specify|provide|share)"
    r"|i\s+(?:would\s+)?need\s+(?:more|additional|some\s+more)\s+(?:information|details|context)"
    r"|(?:what|which\s+\w+)\s+(?:do|did)\s+you\s+mean"
    r"|(?:do|would)\s+you\s+(?:want|like)\s+me\s+to)",
    re.I,
)
# Tasks whose answer may itself be a question: asking or quizzing, writing a message or
# a reply, or rewording / translating a text (which may be a question).
_WANTS_QUESTIONS_RE = re.compile(
    r"\b(?:questions?|ask(?:s|ing)?|inquir(?:y|e|ies)|riddles?|quiz(?:zes)?|trivia|interview|survey|questionnaire|"
    r"faq|rhetorical|email|letter|message|reply|respond|response|chat|dialog(?:ue)?|conversation|script|rewrite|"
    r"rephrase|paraphrase|reword|translate)\b",
    re.I,
)
_YOU_RE = re.compile(r"\byou(?:r)?\b", re.I)
_LOOP_RE = re.compile(r"(.{1,20}?)\1{2,}", re.S)


def filter_response(
    response: str,
    instruction: str = "",
    input: str = "",
    finish_reason: str | None = None,
    config: ResponseFilterConfig = DEFAULT_CONFIG,
) -> str | None:
    """Returns why `response` to `instruction` (+ `input`) should be dropped, or None.

    `finish_reason` is the sampler's: "length" means the token limit cut the response.
    Rules, in order: truncated, empty (no letter or digit), role-play leakage, repetition,
    non-target language, multiple choice, asks a question back. The task text exempts
    some: chat-turn markers ("User:") are fine when it asks for a dialogue, options when
    it asks for options (or shows some), questions when it asks for questions, a message
    or a rewording, or its input is itself a question.

    Args:
      response: the sampled response.
      instruction: the task's instruction.
      input: the task's input ('' for none).
      finish_reason: why sampling stopped ("length", "stop", ...), or None if unknown.
      config: the filter's thresholds.

    Returns:
      One of the drop reasons (`TRUNCATED`, `EMPTY`, ...) or None to keep the response.
    """
    if finish_reason == "length":
        return TRUNCATED
    if not any(c.isalnum() for c in response):
        return EMPTY
    text = response.strip()
    task = f"{instruction}\n{input}"
    if _TEMPLATE_LEAK_RE.search(text) or (
        _ROLE_MARKER_RE.search(text) and not _WANTS_DIALOGUE_RE.search(task)
    ):
        return ROLE_PLAY_LEAKAGE
    if is_repetitive(text, config):
        return REPETITION
    if target_letter_fraction(text, config.target_language) < config.min_target_letters:
        return NON_TARGET_LANGUAGE
    if has_multiple_choice(text) and not (
        _WANTS_OPTIONS_RE.search(task) or has_multiple_choice(task, strict=False)
    ):
        return MULTIPLE_CHOICE
    if (
        asks_question_back(text, config)
        and not _WANTS_QUESTIONS_RE.search(task)
        and not input.rstrip().endswith("?")
    ):
        return ASKS_QUESTION_BACK
    return None


def is_repetitive(text: str, config: ResponseFilterConfig = DEFAULT_CONFIG) -> bool:
    """Low distinct word n-gram ratio, or a short chunk looping back to back.

    Only chunks holding a letter or digit count as loops, so markdown rules ("-----") and
    indentation do not.

    Args:
      text: the response.
      config: the thresholds (`ngram_size`, `min_ngrams`, `min_unique_ngram_ratio`,
        `max_loop_chars`).

    Returns:
      Whether the text loops.
    """
    words = text.lower().split()
    n = config.ngram_size
    ngrams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if len(ngrams) >= config.min_ngrams and len(set(ngrams)) < config.min_unique_ngram_ratio * len(ngrams):
        return True
    for loop in _LOOP_RE.finditer(text):
        if len(loop.group(0)) > config.max_loop_chars and any(c.isalnum() for c in loop.group(1)):
            return True
    return False


def target_letter_fraction(text: str, target_language: str = "en") -> float:
    """Fraction of the letters in `text` written in the target language's script.

    It is 1.0 when there are no letters: digits and symbols say nothing about language.

    Args:
      text: the response.
      target_language: a key of `LANGUAGE_SCRIPTS`.

    Returns:
      A fraction in [0, 1].
    """
    scripts = LANGUAGE_SCRIPTS[target_language]
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    if scripts == ("ascii",):
        hits = sum(c.isascii() for c in letters)
    else:
        hits = sum(unicodedata.name(c, "").startswith(scripts) for c in letters)
    return hits / len(letters)


def has_multiple_choice(text: str, strict: bool = True) -> bool:
    """Whether `text` presents lettered answer options.

    Options are lines opening with consecutive letters from A ("A)", "(B)", "C.", any
    case), or inline "(A) ... (B) ..." markers; an "Answer Choices:" header counts alone.
    With `strict` (for responses) three or more options always count, but two count only
    in a quiz context: a "?" in the text, an "Answer: B" line or an "Options:" header --
    so an outline with "A. Introduction / B. Body" sections is not taken for a quiz.
    Without `strict` (for the task text), two options are enough.

    Args:
      text: a response, or a task's text.
      strict: require a quiz context for two options (see above).

    Returns:
      Whether the text holds answer options.
    """
    if _ANSWER_CHOICES_RE.search(text):
        return True
    line_letters = [(m.group(1) or m.group(2)).upper() for m in _OPTION_LINE_RE.finditer(text)]
    inline_letters = _INLINE_OPTION_RE.findall(text)
    run = max(_run_from_a(line_letters), _run_from_a(inline_letters))
    if run < 2:
        return False
    if run >= 3 or not strict:
        return True
    return "?" in text or bool(_ANSWER_LINE_RE.search(text) or _OPTIONS_HEADER_RE.search(text))


def _run_from_a(letters: list[str]) -> int:
    """Length of the run A, B, C, ... in order of first appearance."""
    seen = list(dict.fromkeys(letters))
    run = 0
    for got, want in zip(seen, "ABCDE"):
        if got != want:
            break
        run += 1
    return run


def asks_question_back(text: str, config: ResponseFilterConfig = DEFAULT_CONFIG) -> bool:
    """Whether the response asks the user something instead of answering.

    True when it opens with a clarification request ("Could you clarify...", "Please
    provide...", "Do you want me to..."), when it is short (<= `short_question_words`
    words) and ends with "?", or when its last paragraph is a short question to the
    user ("...\\n\\nWould you like more examples?"). The caller exempts tasks that ask for
    questions or messages.

    Args:
      text: the response, stripped.
      config: the thresholds (`short_question_words`).

    Returns:
      Whether the response asks a question back.
    """
    if _CLARIFY_OPENER_RE.match(text):
        return True
    if text.endswith("?") and len(text.split()) <= config.short_question_words:
        return True
    paragraphs = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    if len(paragraphs) > 1:
        last = paragraphs[-1].strip()
        return last.endswith("?") and len(last.split()) <= 30 and bool(_YOU_RE.search(last))
    return False
