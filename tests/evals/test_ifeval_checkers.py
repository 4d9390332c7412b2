"""Every IFEval checker on hand-written passing and failing responses; loose variants."""

import pytest

from isheep_jax.evals import ifeval_text
from isheep_jax.evals.ifeval_checkers import (
    CHECKERS,
    KWARGS,
    InstructionArgsError,
    UnknownInstructionError,
    check,
    check_loose,
    loose_variants,
    validate_kwargs,
)
from isheep_jax.evals.language_id import SUPPORTED_LANGUAGES, detect_language

LONG_EN = "the quick brown fox jumps over the lazy dog and it is happy with that"

# (instruction id, kwargs, a response that follows it, one that does not)
CASES = [
    ("punctuation:no_comma", {}, "No commas here at all.", "Well, here is one."),
    (
        "change_case:english_lowercase",
        {},
        "this is all lowercase and it is english.",
        "This starts with a capital.",
    ),
    (
        "change_case:english_lowercase",
        {},
        "this is all lowercase and it is english.",
        "das ist nicht englisch und es ist auch sehr klein geschrieben.",
    ),
    (
        "change_case:english_capital",
        {},
        "THIS IS ALL IN CAPITALS AND IT IS ENGLISH.",
        "THIS IS almost all capitals.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "at least"},
        "We MUST act NOW.",
        "We MUST act soon.",
    ),
    (
        "change_case:capital_word_frequency",
        {"capital_frequency": 2, "capital_relation": "less than"},
        "Only ONE shout here.",
        "TWO LOUD words.",
    ),
    (
        "language:response_language",
        {"language": "de"},
        "Das ist ein kurzer Satz, und er ist auf Deutsch geschrieben.",
        "This is a short sentence and it is written in English.",
    ),
    (
        "language:response_language",
        {"language": "hi"},
        "भारत एक विशाल देश है और यहाँ कई भाषाएँ बोली जाती हैं।",
        "महाराष्ट्र हे भारतातील एक मोठे राज्य आहे आणि मुंबई ही त्याची राजधानी आहे.",
    ),
    ("keywords:existence", {"keywords": ["moon", "tide"]}, "The Moon pulls the TIDE.", "The moon is bright."),
    (
        "keywords:frequency",
        {"keyword": "tea", "frequency": 3, "relation": "at least"},
        "Tea, more tea, and green tea.",
        "Tea and more tea.",
    ),
    (
        "keywords:frequency",
        {"keyword": "tea", "frequency": 2, "relation": "less than"},
        "I like tea.",
        "Tea and tea.",
    ),
    (
        "keywords:forbidden_words",
        {"forbidden_words": ["run", "dog"]},
        "The runner rested.",
        "Let the Dog RUN.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "z", "let_frequency": 2, "let_relation": "at least"},
        "Zebras zigzag.",
        "A zebra.",
    ),
    (
        "keywords:letter_frequency",
        {"letter": "e", "let_frequency": 3, "let_relation": "less than"},
        "A cat sat.",
        "Eleven geese.",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "less than"},
        "Just four words here.",
        "These are exactly five words.",
    ),
    (
        "length_constraints:number_words",
        {"num_words": 5, "relation": "at least"},
        "These are exactly five words.",
        "Only three words.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 3, "relation": "at least"},
        "One. Two! Three?",
        "One. Two.",
    ),
    (
        "length_constraints:number_sentences",
        {"num_sentences": 2, "relation": "less than"},
        "Dr. Smith met Mr. Jones at 3.30 today.",
        "One sentence. Another one.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 3},
        "First part.\n***\nSecond part.\n***\nThird part.",
        "First part.\n***\n\n***\nThird.",
    ),
    (
        "length_constraints:number_paragraphs",
        {"num_paragraphs": 2},
        "***\nOne.\n***\nTwo.\n***",
        "One.\n***\nTwo.\n***\nThree.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"},
        'Start here.\n\n"Then, we go.\n\nEnd.',
        "Start here.\n\nNext we go.\n\nEnd.",
    ),
    (
        "length_constraints:nth_paragraph_first_word",
        {"num_paragraphs": 3, "nth_paragraph": 2, "first_word": "then"},
        "Start here.\n\nThen we go.\n\nEnd.",
        "Start here.\n\nThen we go.",
    ),
    (
        "detectable_format:number_bullet_lists",
        {"num_bullets": 3},
        "List:\n* one\n* two\n- three",
        "List:\n* one\n**bold** line\n* two",
    ),
    (
        "detectable_format:number_highlighted_sections",
        {"num_highlights": 2},
        "Some *first* and **second** parts.",
        "Only *one* and an empty ** pair.",
    ),
    (
        "detectable_format:multiple_sections",
        {"section_spliter": "Section", "num_sections": 2},
        "Section 1\nIntro.\nSection 2\nBody.",
        "Section 1\nIntro.\nsection 2\nBody.",
    ),
    ("detectable_format:json_format", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("detectable_format:json_format", {}, " [1, 2, 3] ", 'Here is JSON: {"a": 1}'),
    ("detectable_format:title", {}, "<<A Good Day>>\nText.", "<< >> has no title text."),
    (
        "detectable_format:constrained_response",
        {},
        "Thinking... My answer is maybe.",
        "My answer is probably.",
    ),
    (
        "detectable_content:number_placeholders",
        {"num_placeholders": 2},
        "Dear [name], see you at [place].",
        "Dear [name], see you soon.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.S."},
        "Thanks.\n\np. s. See you.",
        "Thanks.\nPS see you.",
    ),
    (
        "detectable_content:postscript",
        {"postscript_marker": "P.P.S"},
        "Thanks.\nP.P.S Bring snacks.",
        "Thanks.\nP.S. Bring snacks.",
    ),
    ("detectable_content:postscript", {"postscript_marker": "Note:"}, "Done.\nNOTE: check twice.", "Done."),
    (
        "startend:end_checker",
        {"end_phrase": "Any other questions?"},
        '"That is all. any other questions?"',
        "Any other questions? Bye.",
    ),
    ("startend:quotation", {}, '  "Quoted answer."  ', '"Half quoted.'),
    (
        "combination:repeat_prompt",
        {"prompt_to_repeat": "Write a poem."},
        "write a poem. Roses are red.",
        "Sure! Write a poem. Roses are red.",
    ),
    ("combination:two_responses", {}, "First answer.\n******\nSecond answer.", "Same.\n******\nSame."),
    ("combination:two_responses", {}, "******\nOne.\n******\nTwo.\n******", "One.\n******\n******\nTwo."),
]


def test_every_checker_has_cases():
    assert {c[0] for c in CASES} == set(CHECKERS)


@pytest.mark.parametrize("iid, kwargs, good, bad", CASES, ids=[c[0] for c in CASES])
def test_checker_pass_and_fail(iid, kwargs, good, bad):
    assert check(iid, good, kwargs) is True
    assert check(iid, bad, kwargs) is False


@pytest.mark.parametrize("iid", sorted(CHECKERS))
def test_blank_response_follows_nothing(iid):
    kwargs = {name: _example_value(hint) for name, hint in KWARGS[iid].items()}
    assert check(iid, "   \n", kwargs) is False


def _example_value(hint):
    text = str(hint)
    if "Literal" in text:
        return "at least" if "at least" in text else "en"
    if "int" in text:
        return 1
    if "list" in text:
        return ["x"]
    if "single character" in text:
        return "x"
    return "x"


def test_unknown_id_and_bad_kwargs_are_named():
    with pytest.raises(UnknownInstructionError, match="keywords:nope"):
        check("keywords:nope", "text", {})
    with pytest.raises(InstructionArgsError, match=r"unknown kwargs \['colour'\].*accepted"):
        check("punctuation:no_comma", "text", {"colour": "red"})
    with pytest.raises(InstructionArgsError, match=r"missing kwargs \['relation'\]"):
        check("length_constraints:number_words", "text", {"num_words": 3})
    with pytest.raises(InstructionArgsError, match="relation='more than' must be one of"):
        check("length_constraints:number_words", "t", {"num_words": 3, "relation": "more than"})
    with pytest.raises(InstructionArgsError, match="must be an integer"):
        check("length_constraints:number_words", "t", {"num_words": "3", "relation": "at least"})
    with pytest.raises(InstructionArgsError, match="single character"):
        validate_kwargs(
            "keywords:letter_frequency", {"letter": "ab", "let_frequency": 1, "let_relation": "at least"}
        )
    with pytest.raises(InstructionArgsError, match="language='xx'"):
        validate_kwargs("language:response_language", {"language": "xx"})


def test_null_kwargs_are_ignored():
    # The Hugging Face copy of IFEval lists every kwarg, null where unused.
    assert validate_kwargs("punctuation:no_comma", {"num_words": None, "language": None}) == {}


def test_loose_variants_match_reference_order():
    response = "Sure!\n*Body* text\nBye"
    assert loose_variants(response) == (
        response,
        "Sure!\nBody text\nBye",
        "*Body* text\nBye",
        "Sure!\n*Body* text",
        "*Body* text",
        "Body text\nBye",
        "Sure!\nBody text",
        "Body text",
    )


def test_loose_forgives_preamble_signoff_and_markdown():
    quoted = 'Sure, here it is:\n"All quoted."\nHope this helps!'
    assert not check("startend:quotation", quoted)
    assert check_loose("startend:quotation", quoted)
    starred = "**My answer is yes.**"
    assert check("detectable_format:constrained_response", "My answer is yes.")
    assert check_loose("detectable_format:constrained_response", starred)
    assert not check_loose("punctuation:no_comma", "Intro\nA, B\nOutro")


def test_word_sentence_and_capital_counts():
    assert ifeval_text.count_words("don't stop-me now") == 5  # \w+ splits at ' and -
    # English Punkt, as the reference: a list number ends a "sentence", "e.g." is no abbreviation.
    assert ifeval_text.split_sentences("Steps:\n1. Mix flour.\n2. Add eggs.") == [
        "Steps:\n1.",
        "Mix flour.",
        "2.",
        "Add eggs.",
    ]
    assert ifeval_text.count_sentences('He said "Stop." Then left. Wait... what?') == 3
    assert ifeval_text.count_sentences("The U.S. grew. It was e.g. fine.") == 3
    assert ifeval_text.count_sentences("Dr. Smith paid $3.50 at noon. He left.") == 2
    assert ifeval_text.count_sentences("") == 0
    # nltk.word_tokenize: hyphenated words stay whole, "DON'T" is "DO" + "N'T".
    assert ifeval_text.word_tokenize("DON'T stop, WELL-KNOWN U.S.") == [
        "DO",
        "N'T",
        "stop",
        ",",
        "WELL-KNOWN",
        "U.S",
        ".",
    ]
    assert ifeval_text.count_capital_words("I LOVE NASA and WELL-KNOWN things") == 4
    assert ifeval_text.count_capital_words("DON'T STOP") == 3


LANGUAGE_SAMPLES = {
    "en": "London is the capital of England and it is a very large city.",
    "de": "Berlin ist die Hauptstadt von Deutschland und eine sehr schöne Stadt.",
    "es": "Madrid es la capital de España y es una ciudad muy bonita.",
    "fr": "Paris est la capitale de la France et c'est une très belle ville.",
    "it": "Roma è la capitale d'Italia ed è una città molto bella.",
    "pt": "Lisboa é a capital de Portugal e uma cidade muito bonita.",
    "fi": "Helsinki on Suomen pääkaupunki ja se on kaunis kaupunki.",
    "sw": "Nairobi ni mji mkuu wa Kenya na ni mji mzuri sana.",
    "vi": "Hà Nội là thủ đô của Việt Nam và là một thành phố rất đẹp.",
    "ru": "Москва — это столица России, и это очень большой город.",
    "bg": "София е столицата на България и това е много красив град.",
    "uk": "Київ є столицею України, і це дуже гарне місто.",
    "ar": "القاهرة هي عاصمة مصر وهي مدينة كبيرة جدا في العالم العربي.",
    "fa": "تهران پایتخت ایران است و این شهر بسیار بزرگ است.",
    "ur": "پاکستان ایک خوبصورت ملک ہے اور اس کے لوگ مہمان نواز ہیں۔",
    "hi": "भारत एक विशाल देश है और यहाँ कई भाषाएँ बोली जाती हैं।",
    "mr": "महाराष्ट्र हे भारतातील एक मोठे राज्य आहे आणि मुंबई ही त्याची राजधानी आहे.",
    "ne": "नेपाल एक सुन्दर देश हो र यहाँ धेरै हिमालहरू छन्।",
    "bn": "বাংলাদেশ একটি সুন্দর দেশ।",
    "gu": "ગુજરાત ભારતનું એક રાજ્ય છે.",
    "pa": "ਪੰਜਾਬ ਭਾਰਤ ਦਾ ਇੱਕ ਸੂਬਾ ਹੈ।",
    "ta": "தமிழ் ஒரு பழமையான மொழி.",
    "te": "తెలుగు ఒక అందమైన భాష.",
    "kn": "ಕನ್ನಡ ಒಂದು ಸುಂದರ ಭಾಷೆ.",
    "th": "ประเทศไทยเป็นประเทศที่สวยงาม",
    "ko": "한국어는 아름다운 언어입니다.",
    "ja": "東京は日本の首都です。",
    "zh-cn": "北京是中国的首都。",
}


@pytest.mark.parametrize("lang", sorted(LANGUAGE_SAMPLES))
def test_language_identifier(lang):
    assert lang in SUPPORTED_LANGUAGES
    assert detect_language(LANGUAGE_SAMPLES[lang]) == lang


def test_language_identifier_is_seeded_and_leaves_langdetect_alone():
    import langdetect

    before = langdetect.DetectorFactory.seed
    text = "Ciao, come va? Tutto bene, grazie."  # short texts are where the seed matters
    detect_language.cache_clear()
    first = detect_language(text)
    detect_language.cache_clear()
    assert detect_language(text) == first
    assert langdetect.DetectorFactory.seed == before


def test_language_identifier_edges():
    assert detect_language("12345 !!!") is None  # langdetect finds no features
    assert detect_language("ሰላም ለዓለም") is None  # no langdetect profile has Ethiopic
    assert detect_language("OK THANKS") == "en"
    # Undetectable counts as followed, as the reference does when langdetect raises.
    assert check("language:response_language", "42!", {"language": "ko"})
    assert check("change_case:english_lowercase", LONG_EN)
