"""Response rule filter on hand-written model outputs, one group per rule."""

import random

import pytest

from isheep_jax.loop import response_filter as rf
from isheep_jax.loop.response_filter import ResponseFilterConfig, filter_response

REASONS = (rf.TRUNCATED, rf.EMPTY, rf.ROLE_PLAY_LEAKAGE, rf.REPETITION, rf.NON_TARGET_LANGUAGE,
           rf.MULTIPLE_CHOICE, rf.ASKS_QUESTION_BACK)  # fmt: skip

GOOD_ESSAY = (
    "Regular exercise strengthens the heart, so it pumps more blood with less effort. It also "
    "helps control weight, improves sleep quality and lowers the risk of type 2 diabetes. Many "
    "people notice better concentration and mood within a few weeks, because physical activity "
    "releases endorphins and reduces stress hormones. Even thirty minutes of brisk walking on most "
    "days brings measurable benefits."
)


@pytest.mark.parametrize(
    "response, instruction",
    [
        (GOOD_ESSAY, "Explain the benefits of regular exercise."),
        ("42", "What is six times seven?"),
        ("Paris is the capital of France.", "What is the capital of France?"),
        ("def add(a, b):\n    return a + b", "Write a Python function that adds two numbers."),
        (
            "| a | b |\n|---|---|\n| 1 | 2 |\n\n"
            "-----------------------------------------------------------------------",
            "Make a table.",
        ),  # a markdown rule is not a loop
        ("I. Introduction\nA. Background\nB. Thesis\nII. Body", "Outline an essay."),
        ("A. Introduction\nB. Main argument", "Suggest a two-part structure for a talk."),
        ("The café in Zürich serves crème brûlée.", "Write a sentence about a café."),
        ("Bonjour, comment ça va ?", "Translate 'Hello, how are you?' into French."),
        ("What has keys but can't open locks?", "Write a riddle."),
        (
            "Could you please send me the signed contract by Friday?",
            "Write a short email asking a client for a signed contract.",
        ),
        (
            "How are you doing today?",
            "Paraphrase the input.",
        ),
    ],
)
def test_good_responses_pass(response, instruction):
    assert filter_response(response, instruction) is None


def test_truncated_and_empty():
    assert filter_response(GOOD_ESSAY, "Explain exercise.", finish_reason="length") == rf.TRUNCATED
    assert filter_response(GOOD_ESSAY, "Explain exercise.", finish_reason="stop") is None
    for empty in ["", "   \n\t", "...", "\n---\n"]:
        assert filter_response(empty, "Say something.") == rf.EMPTY


@pytest.mark.parametrize(
    "response",
    [
        "Sure, here it is.\nUser: Thanks! Now write another one.",
        "The answer is 4.\n\nHuman: What about 5 + 5?\nAssistant: 10.",
        "Assistant: The answer is 4.",
        "The answer is 4.\n### Instruction:\nWrite a poem.",
        "The answer is 4.\n\n## Response\nAnother one.",
        "The answer is 4.<|im_end|>\n<|im_start|>user\nThanks",
        "The answer is 4. [INST] Tell me more [/INST]",
        "The answer is 4.</s>",
        "The answer is 4.\n7. Instruction: Name a color.",
        "The answer is 4.\nInstruction: Name a color.",
    ],
)
def test_role_play_leakage(response):
    assert filter_response(response, "What is 2 + 2?") == rf.ROLE_PLAY_LEAKAGE


def test_role_markers_allowed_when_a_dialogue_is_asked_for():
    response = "User: Is the museum open today?\nAssistant: Yes, until 6 pm."
    assert filter_response(response, "Write a short conversation between a user and an assistant.") is None
    # Special tokens stay leakage even then.
    assert filter_response(response + "<|im_end|>", "Write a dialogue.") == rf.ROLE_PLAY_LEAKAGE


@pytest.mark.parametrize(
    "response",
    [
        "Which is the capital of France?\nA) Paris\nB) Rome\nC) Madrid\nD) Berlin",
        "(A) Paris\n(B) Rome\n(C) Madrid",
        "a. Paris\nb. Rome\nc. Madrid",
        "The capital of France is?\nA. Paris\nB. Rome",
        "A) Paris\nB) Rome\nAnswer: A",
        "Options:\nA: Paris\nB: Rome",
        "Pick one: (A) Paris (B) Rome (C) Madrid",
        "Answer Choices: Paris, Rome, Madrid",
    ],
)
def test_multiple_choice(response):
    assert filter_response(response, "What is the capital of France?") == rf.MULTIPLE_CHOICE


@pytest.mark.parametrize(
    "instruction, input",
    [
        ("Write a multiple-choice question about French geography.", ""),
        ("Create a quiz question with four options.", ""),
        ("Which answer is correct?", "A) Paris\nB) Rome"),
        ("Pick the right option.", "(A) Paris (B) Rome"),
    ],
)
def test_multiple_choice_allowed_when_asked_for(instruction, input):
    response = "Which is the capital of France?\nA) Paris\nB) Rome\nC) Madrid\nAnswer: A"
    assert filter_response(response, instruction, input) is None


def test_has_multiple_choice_rule():
    # Two options need a quiz context in a response; in the task text two are enough.
    assert not rf.has_multiple_choice("A. Introduction\nB. Body")
    assert rf.has_multiple_choice("A. Introduction\nB. Body", strict=False)
    assert rf.has_multiple_choice("A. Introduction\nB. Body\nC. Conclusion")
    # Letters must run from A in order.
    assert not rf.has_multiple_choice("B) one\nC) two\nD) three")
    assert not rf.has_multiple_choice("A) one\nC) two\nD) three")
    assert not rf.has_multiple_choice("A. Lincoln was the 16th president.")


@pytest.mark.parametrize(
    "response",
    [
        "Could you clarify what kind of poem you would like?",
        "Could you please provide the text you want summarized? Once I have it, I will write a clear, "
        "three-sentence summary that covers the main points, the key evidence, and the conclusion, "
        "and I can also adjust the tone if you tell me who the summary is for and how it will be used.",
        "Please provide more details about your project.",
        "I need more information to answer this.",
        "I'm sorry, but could you specify the programming language?",
        "Do you want me to include examples as well?",
        "What do you mean by efficient?",
        "Which one do you mean?",
        "Is this for a school project?",
        GOOD_ESSAY + "\n\nWould you like me to suggest a weekly routine for you?",
    ],
)
def test_asks_question_back(response):
    assert filter_response(response, "Summarize the benefits of exercise.") == rf.ASKS_QUESTION_BACK


def test_question_back_exemptions():
    assert (
        filter_response("Is it raining?", "Translate the sentence into English.", "Est-ce qu'il pleut ?")
        is None
    )
    assert filter_response("Where is the station?", "Fix the grammar.", "Where the station is?") is None
    assert (
        filter_response(
            "Could you tell me more about the role?", "Write three questions to ask an interviewer."
        )
        is None
    )
    # A long answer that merely ends with a rhetorical question is kept.
    long_answer = GOOD_ESSAY + " So why not start today?"
    assert filter_response(long_answer, "Explain the benefits of exercise.") is None


@pytest.mark.parametrize(
    "response",
    [
        "the the the the the the the the the the the the the the the the the the the the the the the the "
        "the the the the the the the the the the the the",
        "The answer is simple. " * 12,
        "hahahahahahahahahahahahahahahahahahahahahahahahahahahahahahahahahahahaha",
        "The values are 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.",
    ],
)
def test_repetition(response):
    assert filter_response(response, "Explain the answer.") == rf.REPETITION


def test_repetition_thresholds():
    # A refrain repeated a few times in a longer text is fine.
    refrain = "Row, row, row your boat. "
    poem = GOOD_ESSAY + " " + refrain * 2 + GOOD_ESSAY.upper()
    assert not rf.is_repetitive(poem)
    strict = ResponseFilterConfig(min_unique_ngram_ratio=0.99, min_ngrams=10)
    assert rf.is_repetitive(poem, strict)


@pytest.mark.parametrize(
    "response",
    [
        "这是一个很好的问题，答案是四。",
        "Ответ: четыре, потому что два плюс два равно четыре.",
        "The answer is 4. 这是因为二加二等于四，这是基本的算术。",
    ],
)
def test_non_target_language(response):
    assert filter_response(response, "What is 2 + 2?") == rf.NON_TARGET_LANGUAGE


def test_target_language_is_configurable():
    chinese = "这是一个很好的问题，答案是四。"
    assert filter_response(chinese, "2 + 2 = ?", config=ResponseFilterConfig(target_language="zh")) is None
    assert filter_response(
        "The answer is four.", "2 + 2 = ?", config=ResponseFilterConfig(target_language="zh")
    ) == (rf.NON_TARGET_LANGUAGE)
    assert rf.target_letter_fraction("Größe und Maße", "latin") == 1.0
    assert rf.target_letter_fraction("12 + 30 = 42") == 1.0  # no letters, no verdict
    with pytest.raises(ValueError, match="unknown target_language 'xx'"):
        ResponseFilterConfig(target_language="xx")


def test_rule_order_first_match_wins():
    # Truncation is reported before anything else; leakage before language.
    leaking_chinese = "答案是四。\nUser: 谢谢"
    assert filter_response(leaking_chinese, "2 + 2?", finish_reason="length") == rf.TRUNCATED
    assert filter_response(leaking_chinese, "2 + 2?") == rf.ROLE_PLAY_LEAKAGE


def test_reason_constants():
    assert len(set(REASONS)) == len(REASONS)
    assert all(r.isidentifier() and r == r.lower() for r in REASONS)


def test_never_raises_on_random_text():
    rng = random.Random(0)
    pieces = [
        "A)",
        "(B)",
        "C.",
        "?",
        "\n",
        "\n\n",
        "User:",
        "you",
        "the",
        "é",
        "中",
        "ha",
        " ",
        "0, ",
        "Could you",
    ]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        assert filter_response(text, rng.choice(["", "Explain.", "Write a quiz."])) in (None, *REASONS)
