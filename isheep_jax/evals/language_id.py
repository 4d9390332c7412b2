"""Offline language identification for `language:response_language` and the English checks.

IFEval's reference uses `langdetect`; we avoid the dependency (and its random seeding) with
a two-stage identifier that needs no model file:

1. Script: count letters per Unicode script; the script with the most letters wins. Scripts
   used by one supported language decide alone (Hangul → ko, Thai → th, Gujarati → gu, ...).
2. Within a shared script (Latin, Cyrillic, Arabic, Devanagari, Han/Kana), score each
   candidate by how many tokens are among its frequent function words, plus a smaller
   bonus for letters only that language uses (ы for Russian, ے for Urdu, ơ for Vietnamese).

Limits, by design: only the languages in `SUPPORTED_LANGUAGES` (IFEval's 30 codes plus zh,
el); a Latin-script text with no evidence at all (no stopwords, no distinctive letters,
e.g. "OK THANKS") is called English; very short texts and code-switched texts can be
misjudged, as they are by langdetect; closely related languages outside the list (Spanish
vs Galician, Hindi vs Maithili, Malay vs Indonesian) are not told apart. A text with no
letters at all is undetectable (`None`), which the checkers count as followed, as the
reference does when langdetect raises.
"""

from __future__ import annotations

import unicodedata
from collections import Counter

# (first, last) code points of each script's main blocks; order does not matter.
_SCRIPT_RANGES: dict[str, tuple[tuple[int, int], ...]] = {
    "Latin": ((0x0041, 0x024F), (0x1E00, 0x1EFF)),
    "Greek": ((0x0370, 0x03FF),),
    "Cyrillic": ((0x0400, 0x052F),),
    "Hebrew": ((0x0590, 0x05FF),),
    "Arabic": ((0x0600, 0x06FF), (0x0750, 0x077F), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF)),
    "Devanagari": ((0x0900, 0x097F),),
    "Bengali": ((0x0980, 0x09FF),),
    "Gurmukhi": ((0x0A00, 0x0A7F),),
    "Gujarati": ((0x0A80, 0x0AFF),),
    "Tamil": ((0x0B80, 0x0BFF),),
    "Telugu": ((0x0C00, 0x0C7F),),
    "Kannada": ((0x0C80, 0x0CFF),),
    "Malayalam": ((0x0D00, 0x0D7F),),
    "Thai": ((0x0E00, 0x0E7F),),
    "Hangul": ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF)),
    # Han and Kana count as one script so mixed Japanese text is not split in two.
    "CJK": ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF)),
}

_SINGLE_LANGUAGE_SCRIPTS = {
    "Greek": "el",
    "Hebrew": "he",
    "Bengali": "bn",
    "Gurmukhi": "pa",
    "Gujarati": "gu",
    "Tamil": "ta",
    "Telugu": "te",
    "Kannada": "kn",
    "Malayalam": "ml",
    "Thai": "th",
    "Hangul": "ko",
}

# Frequent function words per language, lowercase. Chosen to be common in running text and,
# where possible, rare in the other languages of the same script.
_STOPWORDS: dict[str, frozenset[str]] = {
    lang: frozenset(words.split())
    for lang, words in {
        "en": "the and of to in is it that for you with on as are this be was have not or by"
        " from at but an they we my your will can all there what so if about which their"
        " has would more when one do he she his her our been were it's i'm i",
        "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch"
        " es als wie ich sie wir sind werden wird oder aber nach bei einen einer noch kann"
        " nur sehr über durch",
        "es": "el la los las del y es en un una por con para no se lo le más pero muy también"
        " sus este esta fue hay yo como que al",
        "fr": "le la les de des et est un une du en que qui pas pour dans ce il elle sur avec"
        " au aux sont mais ou nous vous je très cette être",
        "it": "il di che è per un una non sono del della con si da gli nel anche come più ma"
        " questo questa ha lo le dei delle alla al",
        "pt": "não uma são é os as do da em com para que mais ao dos das pelo pela isso também"
        " você muito está ser foi tem seu sua ele ela ou mas eu",
        "pl": "i w nie na się z do to że jest o jak co ale po tak za od jego są przez dla czy"
        " już tylko ten ta jej",
        "fi": "ja on ei se että hän oli ovat mutta kun tai myös joka jotka tämä niin kuin sen"
        " ole olla mitä voi vain nyt jo siitä sitä kanssa hyvin minä sinä me te he",
        "sw": "na ya wa za kwa ni la katika kama hii lakini pia sana kuwa yake ambayo hiyo"
        " hivyo watu mimi wewe yeye sisi cha vya kila hata au bado tu huu hayo zaidi"
        " kutoka baada wakati",
        "vi": "và của là có không được các những cho trong với một người này để đã khi như từ"
        " thì cũng về sẽ đến nhưng rất ra tôi bạn chúng nhiều làm nếu",
        "ru": "и в не что на я с он как это по но они к у же вы за бы так из от то для его"
        " все она был мы если или когда уже только ещё очень можно который также этот",
        "bg": "и в на е се да за не от са че с по това как той тя те но със към ще бъде може"
        " който която които също много или като ако така му ги им",
        "uk": "і в у на не що з та це як до за але від для він вона вони ми ви його її також"
        " які який бути є так чи",
        "ar": "في من على إلى أن هذا التي الذي عن مع كان هذه ما لا هو هي قد كل ذلك بين أو",
        "fa": "و در به از که این را با است برای آن یک می تا هم بود شود نیز ها های",
        "ur": "کے میں کی ہے اور سے کو کا نے یہ ہیں پر ایک بھی تھا کہ جو وہ لیے ہو",
        "hi": "है हैं के की का में और से को नहीं यह वह एक पर भी था थे थी लिए कि जो तो हो कर गया करने रहा साथ अपने कुछ",
        "mr": "आहे आहेत आणि या हे ते की ला च्या मध्ये नाही होते केले करून त्या त्यांनी असे एक पण तर व ही तो",
        "ne": "छ छन् र हो को मा पनि गर्न लागि भएको गरेको थियो यो त्यो हुन्छ गर्छ रहेको तथा उनी हामी तपाईं भने",
    }.items()
}

# Letters that only (or mostly) one candidate of a shared script uses.
_DISTINCTIVE_LETTERS: dict[str, str] = {
    "de": "äöüß",
    "es": "ñ¿¡",
    "fr": "çœàèêëîïôûù",
    "pt": "ãõç",
    "pl": "ąęłńśźżć",
    "it": "àèìòù",
    "fi": "äö",
    # Vietnamese: horn/breve vowels, đ, and the dotted/hooked tone marks of U+1EA0..U+1EF9.
    "vi": "ơưđă" + "".join(chr(c) for c in range(0x1EA0, 0x1EFA)),
    "ru": "ыэё",
    "bg": "ъ",
    "uk": "іїєґ",
    "ar": "ةيكىأإ",
    "fa": "پچژگیک",
    "ur": "ٹڈڑںےہھ",
    "mr": "ळ",
}

_SHARED_SCRIPT_CANDIDATES: dict[str, tuple[str, ...]] = {
    # English first: ties (including no evidence) go to the first candidate.
    "Latin": ("en", "de", "es", "fr", "it", "pt", "pl", "fi", "sw", "vi"),
    "Cyrillic": ("ru", "bg", "uk"),
    "Arabic": ("ar", "fa", "ur"),
    "Devanagari": ("hi", "mr", "ne"),
}

# Word hits are strong evidence; letters are many per word, so each weighs less.
_LETTER_WEIGHT = 0.25

SUPPORTED_LANGUAGES: frozenset[str] = frozenset(
    set(_SINGLE_LANGUAGE_SCRIPTS.values())
    | {lang for langs in _SHARED_SCRIPT_CANDIDATES.values() for lang in langs}
    | {"ja", "zh"}
)

UNDETERMINED = "und"  # letters of a script we do not model


def _script_of(char: str) -> str | None:
    code = ord(char)
    for script, ranges in _SCRIPT_RANGES.items():
        if any(lo <= code <= hi for lo, hi in ranges):
            return script
    return None


def _letter_scripts(text: str) -> Counter[str]:
    """Letter counts per script ("other" for scripts we do not model)."""
    counts: Counter[str] = Counter()
    for char in text:
        if unicodedata.category(char).startswith("L"):
            counts[_script_of(char) or "other"] += 1
    return counts


def _tokens(text: str) -> list[str]:
    """Lowercased whitespace tokens with surrounding punctuation and symbols stripped.

    Not `\\w+`: Python's `\\w` excludes combining marks, which would cut Devanagari words.
    """
    out = []
    for raw in text.casefold().split():
        start, end = 0, len(raw)
        while start < end and unicodedata.category(raw[start])[0] in "PS":
            start += 1
        while end > start and unicodedata.category(raw[end - 1])[0] in "PS":
            end -= 1
        if start < end:
            out.append(raw[start:end])
    return out


def _best_candidate(text: str, candidates: tuple[str, ...]) -> str:
    tokens = _tokens(text)
    lowered = text.casefold()
    letter_counts = Counter(lowered)
    scores = []
    for lang in candidates:
        words = _STOPWORDS[lang]
        score = sum(1 for t in tokens if t in words)
        score += _LETTER_WEIGHT * sum(letter_counts[c] for c in _DISTINCTIVE_LETTERS.get(lang, ""))
        scores.append(score)
    return candidates[max(range(len(candidates)), key=lambda i: (scores[i], -i))]


def detect_language(text: str) -> str | None:
    """ISO 639-1 code of `text`'s language, `"und"` for an unmodelled script, None if no letters.

    The script with the most letters decides; within a shared script the candidates are
    scored on stopwords and distinctive letters (see the module docstring).

    Args:
      text: any text.

    Returns:
      A code from `SUPPORTED_LANGUAGES`, `UNDETERMINED` ("und") when the script with the
      most letters is not modelled here, or None when `text` has no letters.
    """
    scripts = _letter_scripts(text)
    if not scripts:
        return None
    script = max(scripts, key=lambda s: scripts[s])
    if script in _SINGLE_LANGUAGE_SCRIPTS:
        return _SINGLE_LANGUAGE_SCRIPTS[script]
    if script in _SHARED_SCRIPT_CANDIDATES:
        return _best_candidate(text, _SHARED_SCRIPT_CANDIDATES[script])
    if script == "CJK":
        # Japanese writes grammar in kana; Chinese text has (almost) none.
        kana = sum(1 for c in text if 0x3040 <= ord(c) <= 0x30FF)
        return "ja" if kana >= 0.1 * scripts["CJK"] else "zh"
    return UNDETERMINED
