"""Instruction synthesis: prompt building, parsing model continuations, heuristic filter."""

import random
from string import Template

import pytest

from isheep_jax.loop import synthesis as syn
from isheep_jax.loop.seed_pool import SeedTask
from isheep_jax.loop.synthesis import (
    ParsedInstruction,
    build_synthesis_prompt,
    heuristic_filter,
    parse_instructions,
)
from isheep_jax.prompts.templates import PromptTemplateError, load_template

DEMOS = [
    SeedTask("Sort these words\n  alphabetically:", "pear, apple, fig", "apple, fig, pear"),
    SeedTask("Name three uses of vinegar in cleaning.", "", "Windows, kettles, drains."),
]


# -- prompt ----------------------------------------------------------------------------------


def test_prompt_with_shipped_template():
    prompt, next_index = build_synthesis_prompt(DEMOS, load_template("instruction_synthesis"))
    assert next_index == 3
    assert "invent 20 varied tasks" in prompt
    assert prompt.endswith(
        "###\n1. Instruction: Sort these words alphabetically\n1. Input:\npear, apple, fig\n"
        "###\n2. Instruction: Name three uses of vinegar in cleaning.\n2. Input:\n<noinput>\n"
        "###\n3. Instruction:"
    )
    assert "apple, fig, pear" not in prompt  # outputs are not shown


def test_prompt_with_custom_template_and_num_tasks():
    template = "List of $num_tasks:\n$demos\n###\n$next_index. Instruction:"
    prompt, next_index = build_synthesis_prompt(DEMOS[:1], Template(template), num_tasks=7)
    assert next_index == 2
    assert prompt.startswith("List of 7:\n###\n1. Instruction: Sort these words alphabetically\n")
    assert build_synthesis_prompt(DEMOS[:1], template, num_tasks=7)[0] == prompt  # str works too


def test_prompt_errors():
    with pytest.raises(ValueError, match="at least one demo"):
        build_synthesis_prompt([], "$demos $next_index")
    with pytest.raises(ValueError, match="num_tasks=2"):
        build_synthesis_prompt(DEMOS, "$demos $next_index", num_tasks=2)
    with pytest.raises(PromptTemplateError, match=r"\$missing"):
        build_synthesis_prompt(DEMOS, "$demos $next_index $missing")


def test_prompt_round_trips_through_the_parser():
    prompt, next_index = build_synthesis_prompt(DEMOS, "$demos\n###\n$next_index. Instruction:")
    items = parse_instructions(prompt.split("###", 1)[1], 1, finish_reason="stop")
    assert [(i.index, i.instruction, i.input) for i in items[:2]] == [
        (1, "Sort these words alphabetically", "pear, apple, fig"),
        (2, "Name three uses of vinegar in cleaning.", ""),
    ]


# -- parser ----------------------------------------------------------------------------------

TYPICAL = """ Translate the sentence into formal English.
6. Input:
gonna grab food, u want anything?
###
7. Instruction: Give three tips for staying focused while studying.
7. Input:
<noinput>
###
8. Instruction: Summarize the customer complaint in one sentence.
8. Input:
I ordered a blue kettle.
It arrived red, two weeks late,
and the lid does not close.
###
9. Instruction: Explain why the moon has phas"""


def parsed(text: str, first_index: int = 6, **kwargs) -> list[tuple]:
    return [
        (i.index, i.instruction, i.input, i.reason) for i in parse_instructions(text, first_index, **kwargs)
    ]


def test_parse_typical_completion():
    items = parse_instructions(TYPICAL, 6)
    assert items == [
        ParsedInstruction(
            6, "Translate the sentence into formal English.", "gonna grab food, u want anything?"
        ),
        ParsedInstruction(7, "Give three tips for staying focused while studying.", ""),
        ParsedInstruction(
            8,
            "Summarize the customer complaint in one sentence.",
            "I ordered a blue kettle.\nIt arrived red, two weeks late,\nand the lid does not close.",
        ),
        ParsedInstruction(9, "Explain why the moon has phas", "", syn.TRUNCATED),
    ]
    assert [heuristic_filter(i) for i in items] == [None, None, None, syn.TRUNCATED]


def test_last_item_complete_when_the_model_stopped():
    text = " Name two noble gases.\n6. Input:\nNone"
    assert parse_instructions(text, 6) == [ParsedInstruction(6, "Name two noble gases.", "", syn.TRUNCATED)]
    for ended in ("eos", "stop"):  # the model's own EOS, or a stop string (the sampler's names)
        assert parse_instructions(text, 6, finish_reason=ended) == [
            ParsedInstruction(6, "Name two noble gases.", "")
        ]
    # A terminating separator makes it complete whatever the finish reason.
    assert parse_instructions(text + "\n###", 6, finish_reason="length")[0].reason is None


@pytest.mark.parametrize(
    "no_input", ["<noinput>", "None", "none.", "N/A", "", "  ", "<no input>", "No input", "noinput"]
)
def test_no_input_spellings(no_input):
    item = parse_instructions(f" Name two noble gases.\n6. Input:\n{no_input}\n###", 6)[0]
    assert item.input == "" and item.reason is None


def test_missing_input_section_and_output_section():
    text = (
        " Name two noble gases.\n###\n"
        "7. Instruction: Convert the temperature to Celsius.\n7. Input:\n212 F\n7. Output:\n100 C\n###\n"
        "8. Instruction: Add the numbers.\n8. Output:\n5\n###"
    )
    assert parsed(text) == [
        (6, "Name two noble gases.", "", None),
        (7, "Convert the temperature to Celsius.", "212 F", None),
        (8, "Add the numbers.", "", None),
    ]


def test_junk_between_items_and_header_variants():
    text = (
        "\n###\n6. Instruction: Rank the planets by size.\n6. Input:\nMars, Earth, Jupiter\n###\n"
        "Here are some more tasks you might like:\n\n"
        "7) instruction: List four kinds of clouds.\n7) input: <noinput>\n###\n"
        "   8.Instruction:Rewrite the sentence without jargon.\n8.Input: We will leverage synergies.\n"
        "### \n"
        "That's all for now!"
    )
    assert parsed(text) == [
        (6, "Rank the planets by size.", "Mars, Earth, Jupiter", None),
        (7, "List four kinds of clouds.", "", None),
        (8, "Rewrite the sentence without jargon.", "We will leverage synergies.", None),
    ]


def test_items_without_separators_end_at_the_next_header():
    text = (
        " Name a mammal that lays eggs.\n6. Input:\n\n7. Instruction: Define entropy in one line.\n"
        "7. Input:\n<noinput>\n"
    )
    items = parse_instructions(text, 6)
    assert [(i.instruction, i.reason) for i in items] == [
        ("Name a mammal that lays eggs.", None),
        ("Define entropy in one line.", syn.TRUNCATED),
    ]


def test_markdown_heading_inside_an_input_is_not_a_separator():
    text = " Summarize the notes below.\n6. Input:\n### Budget\nWe are 5% over.\n###"
    item = parse_instructions(text, 6)[0]
    assert item.input == "### Budget\nWe are 5% over." and item.reason is None
    assert heuristic_filter(item) is None


def test_degenerate_completions():
    assert parse_instructions("", 6) == [ParsedInstruction(6, "", "", syn.TRUNCATED)]
    assert parse_instructions("", 6, finish_reason="stop") == [
        ParsedInstruction(6, "", "", syn.EMPTY_INSTRUCTION)
    ]
    assert parse_instructions("\n###\n", 6)[0].reason == syn.EMPTY_INSTRUCTION
    junk = parse_instructions("I'm sorry, I can't continue the list.", 6, finish_reason="stop")
    assert junk == [ParsedInstruction(6, "I'm sorry, I can't continue the list.", "")]


# -- heuristic filter --------------------------------------------------------------------------


def item(instruction: str, input: str = "") -> ParsedInstruction:
    return ParsedInstruction(1, instruction, input)


@pytest.mark.parametrize(
    "instruction, input, reason",
    [
        ("Give three tips for staying focused while studying.", "", None),
        ("Explain the plot of Hamlet in simple words.", "", syn.BLACKLISTED),  # the list is blunt, as in §1
        ("Convert the numbers to squares.", "Input: 3, Output: 9", None),  # field names in an input are fine
        ("Name three long rivers.", "", None),  # four words: long enough
        ("   ", "", syn.EMPTY_INSTRUCTION),
        ("Name rivers.", "", syn.TOO_SHORT),
        ("Name three rivers", "", syn.TOO_SHORT),
        ("Summarize", "", syn.TOO_SHORT),
        ("word " * 151, "", syn.TOO_LONG),
        ("word " * 150, "", None),
        ("- Write a story about a dragon.", "", syn.STARTS_WITH_PUNCTUATION),
        ('"Write a story about a dragon."', "", syn.STARTS_WITH_PUNCTUATION),
        ("¿Write a story about a dragon?", "", syn.NON_ASCII_START),
        ("Écris une histoire sur un dragon.", "", syn.NON_ASCII_START),
        ("Describe the image of a sunset over the sea.", "", syn.BLACKLISTED),
        ("Draw a cat using only letters.", "", syn.BLACKLISTED),
        ("Please go to the store and buy milk.", "", syn.BLACKLISTED),
        ("Please go  to the store and buy milk.", "", syn.BLACKLISTED),
        ("Summarize the attached audio in a sentence.", "", syn.BLACKLISTED),
        ("Read the FILES and list their names.", "", syn.BLACKLISTED),
        ("Summarize the paragraph in one sentence.", "See the diagram above.", syn.BLACKLISTED),
        ("Explain what a mapping in mathematics is.", "", None),  # whole words only
        ("Describe the imagery in the poem.", "", None),
        ("Give a synonym for happy. Input: glad", "", syn.TEMPLATE_LEFTOVER),
        ("Give a synonym for happy.\n7. Instruction: Give another", "", syn.TEMPLATE_LEFTOVER),
        ("List two prime numbers below ten <noinput>", "", syn.TEMPLATE_LEFTOVER),
        ("List two prime numbers below ten ###", "", syn.TEMPLATE_LEFTOVER),
        (
            "Translate the sentence into French.",
            "Hello.\n7. Instruction: Another task",
            syn.TEMPLATE_LEFTOVER,
        ),
        ("Answer the question about the text.", "<no input needed>", syn.TEMPLATE_LEFTOVER),
        ("Summarize the article at https://example.com/news.", "", syn.URL),
        ("Summarize the article on this page.", "www.example.com/story", syn.URL),
    ],
)
def test_heuristic_filter(instruction, input, reason):
    assert heuristic_filter(item(instruction, input)) == reason


def test_parse_reason_wins():
    assert (
        heuristic_filter(ParsedInstruction(3, "Explain how tides work.", "", syn.TRUNCATED)) == syn.TRUNCATED
    )


def test_reason_constants_are_snake_case_and_distinct():
    names = [
        "TRUNCATED", "EMPTY_INSTRUCTION", "TEMPLATE_LEFTOVER", "URL", "TOO_SHORT", "TOO_LONG",
        "STARTS_WITH_PUNCTUATION", "NON_ASCII_START", "BLACKLISTED", "ROUGE_DUPLICATE",
    ]  # fmt: skip
    values = [getattr(syn, n) for n in names]
    assert len(set(values)) == len(values)
    assert all(v == n.lower() for n, v in zip(names, values))


# -- templates -------------------------------------------------------------------------------


def test_load_template_from_user_file(tmp_path):
    path = tmp_path / "mine.txt"
    path.write_text("Cost: $$5\n$demos\n###\n$next_index. Instruction:\n", encoding="utf-8")
    template = load_template("instruction_synthesis", path)
    prompt, _ = build_synthesis_prompt(DEMOS[:1], template)
    assert prompt.startswith("Cost: $5\n###") and prompt.endswith(
        "2. Instruction:"
    )  # one final newline dropped


@pytest.mark.parametrize(
    "text, message",
    [
        ("$demos only", r"lacks \$next_index"),
        ("$demos $next_index $typo", r"unknown \$typo"),
        ("$demos $next_index costs $5", "invalid"),
    ],
)
def test_load_template_validates(tmp_path, text, message):
    path = tmp_path / "t.txt"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=message):
        load_template("instruction_synthesis", path)


def test_load_template_unknown_name_and_own_names(tmp_path):
    with pytest.raises(PromptTemplateError, match="shipped templates: .*rate_quality"):
        load_template("no_such_template")
    path = tmp_path / "own.txt"
    path.write_text("Hello $who", encoding="utf-8")
    assert load_template("own", path).substitute(who="you") == "Hello you"


def test_parser_and_filter_never_raise_on_random_text():
    rng = random.Random(0)
    pieces = [
        "###",
        "\n",
        " ",
        "6.",
        "7)",
        "Instruction:",
        "Input:",
        "Output:",
        "<noinput>",
        "word",
        "é",
        "#",
        "1",
    ]
    for _ in range(2000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        for finish_reason in (None, "stop"):
            items = parse_instructions(text, 6, finish_reason=finish_reason)
            assert items and all(isinstance(heuristic_filter(i), (str, type(None))) for i in items)


# ---------------------------------------------------------------------------- template prefix
@pytest.mark.parametrize(
    "completion, finish, expected",
    [
        (
            "  Give me three tips for sleeping better.\n",
            "eos",
            ("Give me three tips for sleeping better.", None),
        ),
        (
            "Explain how a bicycle gear works and why",
            "length",
            ("Explain how a bicycle gear works and why", "truncated"),
        ),
        ("   ", "stop", ("", "empty_instruction")),
    ],
)
def test_parse_user_turn(completion, finish, expected):
    item = syn.parse_user_turn(completion, finish)
    assert (item.instruction, item.reason) == expected and item.input == ""


def test_user_turn_prefix_cuts_before_the_user_content(tmp_path):
    from helpers import make_hf_model

    from isheep_jax.model.tokenizer import Tokenizer

    tok = Tokenizer(make_hf_model(str(tmp_path / "hf"), "llama"))
    prefix = tok.user_turn_prefix("chatml", system="Be brief.")
    assert prefix == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
    # Whatever the user writes, the rendered turn starts with the prefix.
    assert tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], template="chatml"
    ).startswith(prefix + "Hi")
    with pytest.raises(ValueError, match="needs a chat template"):
        tok.user_turn_prefix("raw")


def test_template_prefix_synthesis_yields_parsed_instructions_on_smollm2(tmp_path, smollm2_dir):
    """Magpie on the real chat model: one shared user-turn prefix, distinct messages per row,
    every row either kept or dropped with a reason, the kept ones passing the filters."""
    from isheep_jax.core import io_utils
    from isheep_jax.loop.run_dir import RunDir
    from isheep_jax.loop.runner import Loop, LoopConfig
    from isheep_jax.sampling.generator import SamplingSettings

    n = 8
    lc = LoopConfig(
        base_model=smollm2_dir,
        synthesis_mode="template_prefix",
        synthesis_prompts=n,
        base_prompt_style="chat",
        contamination_check=False,
        synth_sampling=SamplingSettings(max_new_tokens=64, batch_size=n),
    )
    RunDir(tmp_path / "run").open("test")
    loop = Loop(lc, str(tmp_path / "run"))
    it = loop.run.iteration(0)
    loop.synthesize(0, it, loop.base_dir)
    kept = io_utils.read_jsonl(it.instructions)
    dropped = io_utils.read_jsonl(it.dropped_stage("synthesize"))
    assert len(kept) + len(dropped) == n
    assert {r["id"] for r in kept + dropped} == {f"0-{p}-0" for p in range(n)}
    assert all(r["reason"] for r in dropped)
    assert len(kept) >= n // 2, (kept, dropped)
    for r in kept:
        assert r["input"] == "" and "<|im_" not in r["instruction"]
        assert syn.heuristic_filter(ParsedInstruction(0, r["instruction"])) is None
    assert len({r["instruction"] for r in kept}) == len(kept)
    # A model prompted raw has no template to take the prefix from: refused before sampling.
    with pytest.raises(ValueError, match="synthesis_mode = 'template_prefix'.*base_prompt_style = 'raw'"):
        Loop(LoopConfig(**{**lc.__dict__, "base_prompt_style": "raw"}), str(tmp_path / "run"))
