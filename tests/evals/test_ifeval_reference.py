"""The language, case, sentence and capital-word checks agree with IFEval's reference scorer.

The reference (google-research `instruction_following_eval`; the same code ships in
lm-eval's `lm_eval/tasks/ifeval/`) is not installed here, so its formulas are restated
below from its source and run on the real libraries: `langdetect.detect` seeded with 0,
and NLTK's own `sent_tokenize`/`word_tokenize` loading the `punkt_tab` English model the
ordinary way (written from the bundled model into a temporary NLTK data folder, since
nothing may be downloaded).
"""

import functools
import json

import langdetect
import nltk
import pytest
from helpers import SHARED_DATA

from isheep_jax.evals import ifeval_text
from isheep_jax.evals.ifeval_checkers import check

PUBLIC = SHARED_DATA / "ifeval_input_data.jsonl"

# instructions_util.py, LANGUAGE_CODES: the codes `language:response_language` is built with.
IFEVAL_LANGUAGES = (
    "en es pt ar hi fr ru de ja it bn uk th ur ta te bg ko pl he fa vi ne sw kn mr gu pa ml fi"
).split()

# Synthetic responses: several languages; abbreviations, decimals, lists, quotes, ellipses,
# shouting; text langdetect cannot read. Each is also checked upper- and lowercased.
RESPONSES = [
    "London is the capital of England and it is a very large city.",
    "Dr. Smith arrived at 5 p.m. on Jan. 3rd. He paid $3.50 for coffee, e.g. a latte. Then he left.",
    "Mr. and Mrs. Brown live in the U.S. They moved from the U.K. in 2010. It was a big change!",
    "The value of pi is approx. 3.14159. That's i.e. more than three. Is it? Yes!",
    'He said "Stop." Then he left. Wait... what? Really?! No way.',
    "Steps:\n1. Mix the flour.\n2. Add two eggs.\n3. Bake at 180 C for 25 min.",
    "Can you add a postscript starting with P.S.? Sure. P.S. I love you.",
    "Wow!!! That was great. Amazing!!!",
    "Prof. Lee (Ph.D.) wrote vol. 2, fig. 3, and no. 7 of the series. St. Louis hosted it.",
    "I LOVE NASA and WELL-KNOWN things. DON'T stop. U.S. ARMY. OK?",
    "THIS IS ALL IN CAPITALS AND IT IS ENGLISH. IT HAS TWO SENTENCES.",
    "this is all lowercase and it is english, with a comma.",
    "i think, therefore i am. e.g. descartes said so. mr. smith agreed.",
    "Das ist ein kurzer Satz, und er ist auf Deutsch geschrieben. Dr. Müller kommt z. B. morgen.",
    "Madrid es la capital de España y es una ciudad muy bonita. ¿Vienes mañana?",
    "Paris est la capitale de la France et c'est une très belle ville. M. Dupont y habite.",
    "Roma è la capitale d'Italia ed è una città molto bella.",
    "Lisboa é a capital de Portugal e uma cidade muito bonita.",
    "Helsinki on Suomen pääkaupunki ja se on kaunis kaupunki.",
    "Nairobi ni mji mkuu wa Kenya na ni mji mzuri sana.",
    "Hà Nội là thủ đô của Việt Nam và là một thành phố rất đẹp.",
    "Warszawa jest stolicą Polski i jest bardzo pięknym miastem.",
    "Москва — это столица России, и это очень большой город.",
    "София е столицата на България и това е много красив град.",
    "Київ є столицею України, і це дуже гарне місто.",
    "القاهرة هي عاصمة مصر وهي مدينة كبيرة جدا في العالم العربي.",
    "تهران پایتخت ایران است و این شهر بسیار بزرگ است.",
    "پاکستان ایک خوبصورت ملک ہے اور اس کے لوگ مہمان نواز ہیں۔",
    "भारत एक विशाल देश है और यहाँ कई भाषाएँ बोली जाती हैं।",
    "महाराष्ट्र हे भारतातील एक मोठे राज्य आहे आणि मुंबई ही त्याची राजधानी आहे.",
    "नेपाल एक सुन्दर देश हो र यहाँ धेरै हिमालहरू छन्।",
    "বাংলাদেশ একটি সুন্দর দেশ।",
    "ગુજરાત ભારતનું એક રાજ્ય છે.",
    "ਪੰਜਾਬ ਭਾਰਤ ਦਾ ਇੱਕ ਸੂਬਾ ਹੈ।",
    "தமிழ் ஒரு பழமையான மொழி.",
    "తెలుగు ఒక అందమైన భాష.",
    "ಕನ್ನಡ ಒಂದು ಸುಂದರ ಭಾಷೆ.",
    "മലയാളം ഒരു മനോഹരമായ ഭാഷയാണ്.",
    "ประเทศไทยเป็นประเทศที่สวยงาม",
    "한국어는 아름다운 언어입니다. 서울은 큰 도시입니다.",
    "東京は日本の首都です。とても大きな都市です。",
    "北京是中国的首都。",
    "שלום עולם, זה משפט בעברית.",
    "Ελλάδα είναι μια όμορφη χώρα.",
    "OK THANKS",
    "42!",
    "...",
    "12345 !!! 3.5 + 2.25 = 5.75",
    "ሰላም ለዓለም",
    "def f(x):\n    return x * 2  # double it\n\nprint(f(3))",
    "Visit https://example.com or mail info@example.org. Then reply.",
    "This answer mixes English with a bit of español, y también un poco más.",
    "- first bullet\n- second bullet\n\n*** \n\nA NEW PARAGRAPH.",
]


def _public_prompts() -> list[str]:
    if not PUBLIC.exists():
        pytest.skip(f"public IFEval data not present at {PUBLIC}")
    return [json.loads(line)["prompt"] for line in PUBLIC.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The reference's measures, on the libraries it uses (see the module docstring)."""
    import punkt
    from nltk.tabdata import TabEncoder

    folder = tmp_path_factory.mktemp("nltk_data")
    english = folder / "tokenizers" / "punkt_tab" / "english"
    english.mkdir(parents=True)
    model, enc = punkt.load_model("english"), TabEncoder()
    (english / "collocations.tab").write_text(enc.tups2tab(model.collocations))
    (english / "sent_starters.txt").write_text(enc.set2txt(model.sent_starters))
    (english / "abbrev_types.txt").write_text(enc.set2txt(model.abbrev_types))
    (english / "ortho_context.tab").write_text(enc.ivdict2tab(model.ortho_context))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(nltk.data, "path", [str(folder)])
        mp.setattr(langdetect.DetectorFactory, "seed", 0)
        nltk.tokenize._get_punkt_tokenizer.cache_clear()
        # Seeded, langdetect is deterministic: remember its answers (or its refusal).
        yield _Reference(functools.lru_cache(maxsize=None)(_detect_or_error))
        nltk.tokenize._get_punkt_tokenizer.cache_clear()


def _detect_or_error(text: str) -> str | langdetect.LangDetectException:
    try:
        return langdetect.detect(text)
    except langdetect.LangDetectException as error:
        return error


class _Reference:
    """The reference's formulas, restated from its source with the file and class of each."""

    def __init__(self, detect):
        self._detect = detect

    def _detect_or_raise(self, value):
        found = self._detect(value)
        if isinstance(found, langdetect.LangDetectException):
            raise found
        return found

    def response_language(self, value, language):
        # instructions.py, ResponseLanguageChecker.check_following
        try:
            return self._detect_or_raise(value) == language
        except langdetect.LangDetectException:
            return True  # "Count as instruction is followed."

    def english_capital(self, value):
        # instructions.py, CapitalLettersEnglishChecker.check_following
        try:
            return value.isupper() and self._detect_or_raise(value) == "en"
        except langdetect.LangDetectException:
            return True

    def english_lowercase(self, value):
        # instructions.py, LowercaseLettersEnglishChecker.check_following
        try:
            return value.islower() and self._detect_or_raise(value) == "en"
        except langdetect.LangDetectException:
            return True

    @functools.cached_property
    def _sentence_tokenizer(self):
        # instructions_util.py, _get_sentence_tokenizer (lru-cached there too); NLTK >= 3.9
        # answers the pickle's name with the pickle-free punkt_tab tokenizer.
        return nltk.data.load("nltk:tokenizers/punkt/english.pickle")

    def count_sentences(self, value):
        # instructions_util.py, count_sentences
        return len(self._sentence_tokenizer.tokenize(value))

    def count_capital_words(self, value):
        # instructions.py, CapitalWordFrequencyChecker.check_following
        return len([word for word in nltk.word_tokenize(value) if word.isupper()])


def _language_and_case_disagreements(ref, texts):
    wrong = []
    for base in texts:
        for text in dict.fromkeys((base, base.upper(), base.lower())):
            if not text.strip():
                continue  # `check` fails blank responses before any checker runs
            for code in IFEVAL_LANGUAGES:
                ours = check("language:response_language", text, {"language": code})
                if ours != ref.response_language(text, code):
                    wrong.append(("language", code, text))
            if check("change_case:english_capital", text) != ref.english_capital(text):
                wrong.append(("english_capital", text))
            if check("change_case:english_lowercase", text) != ref.english_lowercase(text):
                wrong.append(("english_lowercase", text))
    return wrong


def _count_disagreements(ref, texts):
    wrong = []
    for text in texts:
        if not text.strip():
            continue
        n = ref.count_sentences(text)
        for relation, bound in (("at least", n), ("less than", n + 1), ("at least", n + 1), ("less than", n)):
            kwargs = {"num_sentences": bound, "relation": relation}
            if check("length_constraints:number_sentences", text, kwargs) != _holds(n, relation, bound):
                wrong.append(("sentences", n, text))
        c = ref.count_capital_words(text)
        for relation, bound in (("at least", c), ("less than", c + 1), ("at least", c + 1), ("less than", c)):
            kwargs = {"capital_frequency": bound, "capital_relation": relation}
            if check("change_case:capital_word_frequency", text, kwargs) != _holds(c, relation, bound):
                wrong.append(("capital words", c, text))
    return wrong


def _holds(count, relation, bound):
    # instructions.py: "less than" is count < bound; "at least" is count >= bound.
    return count < bound if relation == "less than" else count >= bound


def test_language_and_case_checks_agree_with_reference_on_synthetic_responses(reference):
    assert _language_and_case_disagreements(reference, RESPONSES) == []


def test_sentence_and_capital_word_checks_agree_with_reference_on_synthetic_responses(reference):
    texts = RESPONSES + [t.upper() for t in RESPONSES]
    assert _count_disagreements(reference, texts) == []
    for text in texts:  # the very tokens, not only their number
        assert ifeval_text.split_sentences(text) == nltk.sent_tokenize(text), text
        assert ifeval_text.word_tokenize(text) == nltk.word_tokenize(text), text


def test_checks_agree_with_reference_on_the_public_prompts(reference):
    prompts = _public_prompts()
    assert len(prompts) == 541
    assert _count_disagreements(reference, prompts) == []
    # Every third prompt for the (slower) language checks, in all three cases.
    assert _language_and_case_disagreements(reference, prompts[::3]) == []


def test_the_reference_harness_is_not_vacuous(reference):
    # The setup really reaches NLTK's Punkt and langdetect, and they answer as documented.
    assert reference.count_sentences("Dr. Smith left. He was tired! e.g. this") == 4
    assert nltk.word_tokenize("DON'T stop.") == ["DO", "N'T", "stop", "."]
    assert reference.response_language("Das ist ein kurzer Satz auf Deutsch.", "de") is True
    assert reference.response_language("This is a plain English sentence.", "de") is False
    assert reference.response_language("42!", "ko") is True  # langdetect raises: followed
