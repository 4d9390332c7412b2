"""Language identification for `language:response_language` and the English-case checks.

IFEval's reference scorer calls `langdetect.detect` (google-research
`instruction_following_eval/instructions.py`: `ResponseLanguageChecker`,
`CapitalLettersEnglishChecker`, `LowercaseLettersEnglishChecker`). We run the same library
through a private `DetectorFactory` seeded with 0, so verdicts are deterministic and
`langdetect`'s module-level factory and its class-level `seed` are left untouched.
"""

from __future__ import annotations

import functools
import os

from langdetect.detector_factory import PROFILES_DIRECTORY, DetectorFactory
from langdetect.lang_detect_exception import LangDetectException

# The codes langdetect can answer: one profile file per language ("zh-cn", "zh-tw", ...).
SUPPORTED_LANGUAGES: frozenset[str] = frozenset(
    name for name in os.listdir(PROFILES_DIRECTORY) if not name.startswith(".")
)

_SEED = 0


@functools.cache
def _factory() -> DetectorFactory:
    """langdetect's profiles, loaded once into a factory of our own, seeded with 0."""
    factory = DetectorFactory()
    factory.load_profile(PROFILES_DIRECTORY)
    factory.set_seed(_SEED)  # an instance attribute: DetectorFactory.seed stays as it is
    return factory


@functools.lru_cache(maxsize=1024)  # loose scoring asks about the same variants again
def detect_language(text: str) -> str | None:
    """langdetect's language code for `text`, or None where langdetect cannot tell.

    Equal to `langdetect.detect(text)` with `DetectorFactory.seed = 0`. langdetect raises
    `LangDetectException` on text without features (no letters, e.g. "42!"); the reference
    then counts the instruction as followed, which the checkers do on None.

    Args:
      text: any text.

    Returns:
      A code from `SUPPORTED_LANGUAGES` ("en", "de", "zh-cn", ...), or None.
    """
    detector = _factory().create()
    try:
        detector.append(text)
        return detector.detect()
    except LangDetectException:
        return None
