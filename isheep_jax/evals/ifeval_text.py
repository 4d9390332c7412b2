"""Text measures behind the IFEval checkers: words, sentences, capitalised words.

The reference implementation leans on NLTK (a `\\w+` tokenizer, the Punkt English sentence
model, `word_tokenize`). We keep the word count identical and approximate the other two with
rules, so nothing needs downloading:

- Sentences: a break after `.`, `!` or `?` (optionally followed by closing quotes or
  brackets) and whitespace, except after a known abbreviation, a single-letter initial, or a
  list number such as `1.`; an ellipsis breaks only before an uppercase letter. Like Punkt,
  a bare line break is not a sentence break.
- Capitalised words: tokens are runs of word characters joined by `-` or an apostrophe
  (so `WELL-KNOWN` and `DON'T` count once; NLTK would count `DO` and `N'T` twice).
"""

from __future__ import annotations

import re

_WORD = re.compile(r"\w+")
_CAPITAL_TOKEN = re.compile(r"\w+(?:[-'’]\w+)*")

# Closing quotes/brackets may follow the terminator; whitespace must follow them.
_BOUNDARY = re.compile(r"([.!?]+)([\"'”’)\]]*)(\s+)")

# "1." opening a line is a list number, not the end of a sentence.
_LIST_NUMBER = re.compile(r"(?:^|\n)[ \t]*\d+$")

_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof sr jr st vs etc e.g i.e inc ltd co fig approx dept est no vol ca cf"
    " al gen lt col sgt capt rev jan feb mar apr jun jul aug sep sept oct nov dec a.m p.m"
    " u.s u.k ph.d".split()
)


def count_words(text: str) -> int:
    """Number of `\\w+` runs, exactly as the reference's RegexpTokenizer(r"\\w+").

    Args:
      text: the response.

    Returns:
      The word count.
    """
    return len(_WORD.findall(text))


def _ends_with_non_break(before: str) -> bool:
    """True if the period just after `before` belongs to an abbreviation, initial or list number."""
    if _LIST_NUMBER.search(before):
        return True
    words = before.split()
    if not words:
        return True  # a lone "." with nothing before it
    last = words[-1].lstrip("\"'“‘([").lower()
    return last in _ABBREVIATIONS or (len(last) == 1 and last.isalpha())


def split_sentences(text: str) -> list[str]:
    """Sentences of `text`, non-empty and stripped (a Punkt-like rule set; see module doc).

    Args:
      text: the response.

    Returns:
      The sentences in order; closing quotes or brackets after a terminator stay with its
      sentence.
    """
    sentences: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        terminator = match.group(1)
        if terminator == "." and _ends_with_non_break(text[start : match.start(1)]):
            continue
        if len(terminator) > 1 and set(terminator) == {"."}:
            following = text[match.end() : match.end() + 1]
            if not following.isupper():
                continue
        sentence = text[start : match.end(2)].strip()
        if sentence:
            sentences.append(sentence)
        start = match.end()
    tail = text[start:].strip()
    if tail:
        sentences.append(tail)
    return sentences


def count_sentences(text: str) -> int:
    """Number of sentences, as `split_sentences` finds them.

    Args:
      text: the response.

    Returns:
      The sentence count.
    """
    return len(split_sentences(text))


def count_capital_words(text: str) -> int:
    """Number of tokens that are entirely uppercase (`str.isupper`: "I" and "NASA" count).

    Tokens are runs of word characters joined by `-` or an apostrophe (see module doc).

    Args:
      text: the response.

    Returns:
      The count of all-uppercase tokens.
    """
    return sum(1 for token in _CAPITAL_TOKEN.findall(text) if token.isupper())
