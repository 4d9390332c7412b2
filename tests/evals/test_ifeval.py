"""IFEval loader, scoring and strict/loose aggregation; the shipped and public prompt files."""

import json
import math
from pathlib import Path

import pytest
from helpers import SHARED_DATA

from isheep_jax.core.io_utils import DataError
from isheep_jax.evals.ifeval import (
    IFEvalPrompt,
    Instruction,
    aggregate,
    evaluate,
    load_prompts,
    score_response,
    shipped_prompts_path,
)
from isheep_jax.evals.ifeval_checkers import CHECKERS, check, check_loose

PUBLIC = SHARED_DATA / "ifeval_input_data.jsonl"


def _write(tmp_path, rows) -> Path:
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _row(key, ids, kwargs, prompt="Do it."):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def test_aggregation_on_hand_computed_example():
    no_comma = Instruction("punctuation:no_comma")
    quote = Instruction("startend:quotation")
    words = Instruction("length_constraints:number_words", {"relation": "less than", "num_words": 4})
    prompts = [
        IFEvalPrompt(1, "p1", (no_comma, quote)),
        IFEvalPrompt(2, "p2", (words,)),
        IFEvalPrompt(3, "p3", (no_comma, words)),
    ]
    responses = [
        '"Fine answer."',  # comma ok, quoted: strict 2/2
        "Here:\nOne two three\nBye",  # 5 words strict; loose drops both ends -> 3
        "A, b",  # comma fails everywhere; 2 words ok
    ]
    result = evaluate(prompts, responses)
    assert (result.prompts.total, result.instructions.total) == (3, 5)
    # strict per instruction: [T, T], [F], [F, T] -> 3/5; prompts: only p1 -> 1/3
    assert (result.instructions.strict, result.prompts.strict) == (3, 1)
    # loose: [T, T], [T], [F, T] -> 4/5; prompts: p1, p2 -> 2/3
    assert (result.instructions.loose, result.prompts.loose) == (4, 2)
    assert result.prompts.strict_accuracy == pytest.approx(1 / 3)
    assert result.prompts.loose_accuracy == pytest.approx(2 / 3)
    assert result.instructions.strict_accuracy == pytest.approx(0.6)
    assert result.instructions.loose_accuracy == pytest.approx(0.8)
    per = result.per_instruction
    assert list(per) == sorted(per)
    assert (per["punctuation:no_comma"].total, per["punctuation:no_comma"].strict) == (2, 1)
    assert (per["length_constraints:number_words"].strict, per["length_constraints:number_words"].loose) == (
        1,
        2,
    )
    assert per["startend:quotation"].strict_accuracy == 1.0
    assert result.per_group["length_constraints"].total == 2
    summary = result.to_dict()
    assert summary["instruction_level"]["strict"] == 3 and "per_group" in summary
    json.dumps(summary)


def test_empty_aggregate_is_nan_not_an_error():
    result = aggregate([])
    assert result.prompts.total == 0 and math.isnan(result.prompts.strict_accuracy)


def test_evaluate_rejects_misaligned_responses():
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        evaluate([IFEvalPrompt(1, "p", ()), IFEvalPrompt(2, "q", ())], ["x"])


def test_strict_is_never_above_loose():
    prompt = IFEvalPrompt(1, "p", (Instruction("startend:quotation"),))
    outcome = score_response(prompt, '"quoted"')
    assert outcome.strict == (True,) and outcome.loose == (True,)


def test_loader_collects_unknown_ids_with_lines(tmp_path):
    path = _write(
        tmp_path,
        [
            _row(1, ["punctuation:no_comma", "made_up:thing"], [{}, {"x": 1}]),
            "",
            _row(2, ["other:unknown"], [{}]),
            _row(3, ["detectable_format:title"], [{}]),
        ],
    )
    with pytest.raises(DataError) as err:
        load_prompts(path)
    message = str(err.value)
    assert "2 unknown instruction id(s)" in message
    assert f"{path}:1:" in message and "made_up:thing" in message
    assert f"{path}:3:" in message and "other:unknown" in message

    loaded = load_prompts(path, strict=False)
    assert [(u.line, u.key, u.instruction_id) for u in loaded.unknown] == [
        (1, 1, "made_up:thing"),
        (3, 2, "other:unknown"),
    ]
    # Prompt 1 keeps its known instruction; prompt 2 had none left and is skipped.
    assert [p.key for p in loaded.prompts] == [1, 3]
    assert loaded.prompts[0].instruction_ids == ("punctuation:no_comma",)
    assert loaded.prompts[0].line == 1


def test_loader_names_file_and_line_of_malformed_input(tmp_path):
    good = json.dumps(_row(1, ["punctuation:no_comma"], [{}]))
    cases = [
        ('{"key": 2, "prompt": ', "invalid JSON"),
        (json.dumps({"key": 2, "prompt": "x"}), "missing field"),
        (json.dumps(_row(2, ["punctuation:no_comma"], [])), "one object per instruction id"),
        (json.dumps(_row(1, ["punctuation:no_comma"], [{}])), "duplicate key 1"),
        (json.dumps(_row(2, ["punctuation:no_comma"], [{"colour": 1}])), "unknown kwargs"),
        ("[1, 2]", "expected a JSON object"),
    ]
    for bad, expected in cases:
        path = _write(tmp_path, [good, bad])
        with pytest.raises(DataError, match=expected) as err:
            load_prompts(path, strict=False)
        assert f"{path}:2" in str(err.value)


def test_shipped_prompts_load_and_cover_many_ids():
    loaded = load_prompts(shipped_prompts_path())
    assert not loaded.unknown
    assert len(loaded.prompts) >= 150
    ids = {i for p in loaded.prompts for i in p.instruction_ids}
    assert len(ids) >= 20


LANGUAGE_NAMES = {
    "ar": "Arabic",
    "bg": "Bulgarian",
    "bn": "Bengali",
    "de": "German",
    "es": "Spanish",
    "fa": "Persian",
    "fi": "Finnish",
    "fr": "French",
    "gu": "Gujarati",
    "hi": "Hindi",
    "it": "Italian",
    "ja": "Japanese",
    "kn": "Kannada",
    "ko": "Korean",
    "mr": "Marathi",
    "ne": "Nepali",
    "pa": "Punjabi",
    "pt": "Portuguese",
    "ru": "Russian",
    "sw": "Swahili",
    "ta": "Tamil",
    "te": "Telugu",
    "th": "Thai",
    "ur": "Urdu",
    "vi": "Vietnamese",
}


def test_shipped_prompts_state_their_numbers_and_words():
    """Kwargs must agree with the prompt text: every number and keyword appears in it."""
    for p in load_prompts(shipped_prompts_path()).prompts:
        for inst in p.instructions:
            for name, value in inst.kwargs.items():
                if name == "prompt_to_repeat":
                    assert p.prompt.startswith(value), p.key
                    continue
                if "relation" in name:
                    continue  # worded freely ("fewer than", "or longer")
                if name == "language":
                    value = LANGUAGE_NAMES[value]
                for v in value if isinstance(value, list) else [value]:
                    assert str(v) in p.prompt, (p.key, name, v)


def test_public_ifeval_file_is_fully_supported():
    if not PUBLIC.exists():
        pytest.skip(f"public IFEval data not present at {PUBLIC}")
    loaded = load_prompts(PUBLIC, strict=False)
    assert len(loaded.prompts) == 541
    assert loaded.unknown == ()
    assert {i for p in loaded.prompts for i in p.instruction_ids} <= set(CHECKERS)
    dummy = "Sure!\nThis is *a* dummy, response.\n***\nP.S. bye"
    for p in loaded.prompts:
        for inst in p.instructions:
            assert isinstance(check(inst.id, dummy, inst.kwargs, p.prompt), bool)
            assert isinstance(check_loose(inst.id, dummy, inst.kwargs, p.prompt), bool)
    result = evaluate(loaded.prompts, [dummy] * len(loaded.prompts))
    assert result.prompts.total == 541
    assert result.instructions.strict <= result.instructions.loose <= result.instructions.total
