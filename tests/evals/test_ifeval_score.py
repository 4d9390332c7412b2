"""`isheep ifeval-score`: a responses file scored into the reference scorer's files and report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import SHARED_DATA

from isheep_jax import cli
from isheep_jax.evals.ifeval import (
    SCORES_FORMAT,
    IFEvalPrompt,
    Instruction,
    PromptOutcome,
    outcome_rows,
    score_response,
)

PUBLIC = SHARED_DATA / "ifeval_input_data.jsonl"

WORDS_UNDER_10 = {"relation": "less than", "num_words": 10}
WORDS_AT_LEAST_5 = {"relation": "at least", "num_words": 5}
PROMPTS = [
    (1, "Write a note to a neighbour without any commas.", ["punctuation:no_comma"], [{}]),
    (
        2,
        "List three fruits as markdown bullets, in lowercase only.",
        ["detectable_format:number_bullet_lists", "change_case:english_lowercase"],
        [{"num_bullets": 3}, {}],
    ),
    (3, "Describe the sea in fewer than 10 words.", ["length_constraints:number_words"], [WORDS_UNDER_10]),
    (
        4,
        "Greet me in at least 5 words and use no commas.",
        ["length_constraints:number_words", "punctuation:no_comma"],
        [WORDS_AT_LEAST_5, {}],
    ),
]
RESPONSES = [
    # A comma in the chatty first line only: strict fails, loose (first line dropped) passes.
    "Sure, here it is:\nDear neighbour please water my plants.",
    # 3 bullets either way; "THREE" breaks lowercase unless the first line is dropped.
    "Here are THREE fruits:\n* apple\n* banana\n* cherry",
    # 8 words (the dash is no word); non-ASCII, to pin the reference's ASCII escapes.
    "The sea is vast, blue and deep \u2014 caf\u00e9.",
    # 2 words and a comma: fails both, in every loose variant (dropping its only line leaves nothing).
    "Hello, friend.",
]
# Hand-computed per instruction, in PROMPTS order.
STRICT = [[False], [True, False], [True], [False, False]]
LOOSE = [[True], [True, True], [True], [False, False]]


def _write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _input_data(tmp_path: Path, prompts=PROMPTS) -> Path:
    return _write_jsonl(
        tmp_path / "input_data.jsonl",
        [{"key": k, "prompt": p, "instruction_id_list": ids, "kwargs": kw} for k, p, ids, kw in prompts],
    )


def _responses(tmp_path: Path, pairs, name: str = "model_responses.jsonl") -> Path:
    return _write_jsonl(tmp_path / name, [{"prompt": p, "response": r} for p, r in pairs])


def _score(capsys, *args: str) -> tuple[int, str, str]:
    rc = cli.main(["ifeval-score", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _accuracy(total, strict, loose, strict_accuracy, loose_accuracy) -> dict:
    return {
        "total": total,
        "strict": strict,
        "loose": loose,
        "strict_accuracy": strict_accuracy,
        "loose_accuracy": loose_accuracy,
    }


def _reference_line(prompt: str, ids, response: str, follow) -> str:
    # The reference writes json.dumps(...) of its result's fields in alphabetical order.
    return (
        json.dumps(
            {
                "follow_all_instructions": all(follow),
                "follow_instruction_list": follow,
                "instruction_id_list": ids,
                "prompt": prompt,
                "response": response,
            }
        )
        + "\n"
    )


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_outcome_rows_are_json_ready_per_prompt_results():
    words = Instruction("length_constraints:number_words", WORDS_UNDER_10)
    prompts = [
        IFEvalPrompt(7, "p", (Instruction("punctuation:no_comma"), words)),
        IFEvalPrompt("k2", "q", (Instruction("startend:quotation"),)),
    ]
    outcomes = [score_response(prompts[0], "Sure, fine.\nOne two three"), score_response(prompts[1], "plain")]
    rows = outcome_rows(outcomes)
    # Comma in line 1: strict fails, loose passes; 5 words < 10 either way; no quotes at all.
    assert rows == [
        {"key": 7, "strict": [False, True], "loose": [True, True]},
        {"key": "k2", "strict": [False], "loose": [False]},
    ]
    assert json.loads(json.dumps(rows)) == rows
    assert outcome_rows([]) == []
    # Truthy non-bools (a checker's match object, say) still come out as JSON booleans.
    odd = PromptOutcome(prompts[1], "x", (1,), ("yes",))  # type: ignore[arg-type]
    assert outcome_rows([odd]) == [{"key": "k2", "strict": [True], "loose": [True]}]


def test_score_prints_the_reference_report_and_writes_its_files(tmp_path, capsys):
    input_data = _input_data(tmp_path)
    # Out of order, with an extra field and a response to a prompt that is not asked: matched
    # by prompt text, the extra one ignored (as the reference does).
    pairs = [(p[1], r) for p, r in zip(PROMPTS, RESPONSES)][::-1] + [("Not asked.", "Ignored.")]
    responses = _write_jsonl(
        tmp_path / "model_responses.jsonl",
        [{"key": i, "prompt": p, "response": r} for i, (p, r) in enumerate(pairs)],
    )
    rc, out, err = _score(capsys, "--input_data", str(input_data), "--responses", str(responses))
    assert (rc, err) == (0, "")
    folder = tmp_path / "model_responses_ifeval"  # the default: named after the responses file
    assert out == "\n".join(
        [
            "=" * 64,
            f"{folder}/eval_results_strict.jsonl Accuracy Scores:",
            "prompt-level: 0.25",
            "instruction-level: 0.3333333333333333",
            "",
            "change_case 0.0",
            "detectable_format 1.0",
            "length_constraints 0.5",
            "punctuation 0.0",
            "",
            "change_case:english_lowercase 0.0",
            "detectable_format:number_bullet_lists 1.0",
            "length_constraints:number_words 0.5",
            "punctuation:no_comma 0.0",
            "=" * 64,
            f"{folder}/eval_results_loose.jsonl Accuracy Scores:",
            "prompt-level: 0.75",
            "instruction-level: 0.6666666666666666",
            "",
            "change_case 1.0",
            "detectable_format 1.0",
            "length_constraints 0.5",
            "punctuation 0.5",
            "",
            "change_case:english_lowercase 1.0",
            "detectable_format:number_bullet_lists 1.0",
            "length_constraints:number_words 0.5",
            "punctuation:no_comma 0.5",
            "=" * 64,
            f"scored 4 prompt(s), 6 instruction(s) of {input_data} against {responses}",
            "prompt-level: strict 0.25 (1/4), loose 0.75 (3/4)",
            "instruction-level: strict 0.3333333333333333 (2/6), loose 0.6666666666666666 (4/6)",
            "note: 1 response(s) to prompts not scored here were ignored",
            f"results in {folder}",
            "",
        ]
    )
    assert sorted(p.name for p in folder.iterdir()) == [
        "eval_results_loose.jsonl",
        "eval_results_strict.jsonl",
        "scores.json",
    ]
    for name, follow in (("strict", STRICT), ("loose", LOOSE)):
        text = (folder / f"eval_results_{name}.jsonl").read_text()
        assert text == "".join(
            _reference_line(p, ids, r, f) for (_, p, ids, _), r, f in zip(PROMPTS, RESPONSES, follow)
        )
    # The reference's bytes: its key order and separators, non-ASCII escaped.
    third = (folder / "eval_results_strict.jsonl").read_text().splitlines()[2]
    assert third == (
        '{"follow_all_instructions": true, "follow_instruction_list": [true], '
        '"instruction_id_list": ["length_constraints:number_words"], '
        '"prompt": "Describe the sea in fewer than 10 words.", '
        '"response": "The sea is vast, blue and deep \\u2014 caf\\u00e9."}'
    )
    scores_text = (folder / "scores.json").read_text()
    assert scores_text.endswith("}\n")
    assert json.loads(scores_text) == {
        "format": SCORES_FORMAT,
        "input_data": str(input_data),
        "responses": str(responses),
        "unknown_instructions": [],
        "unmatched_responses": 1,
        "prompt_level": _accuracy(4, 1, 3, 0.25, 0.75),
        "instruction_level": _accuracy(6, 2, 4, 2 / 6, 4 / 6),
        "per_instruction": {
            "change_case:english_lowercase": _accuracy(1, 0, 1, 0.0, 1.0),
            "detectable_format:number_bullet_lists": _accuracy(1, 1, 1, 1.0, 1.0),
            "length_constraints:number_words": _accuracy(2, 1, 1, 0.5, 0.5),
            "punctuation:no_comma": _accuracy(2, 0, 1, 0.0, 0.5),
        },
        "per_group": {
            "change_case": _accuracy(1, 0, 1, 0.0, 1.0),
            "detectable_format": _accuracy(1, 1, 1, 1.0, 1.0),
            "length_constraints": _accuracy(2, 1, 1, 0.5, 0.5),
            "punctuation": _accuracy(2, 0, 1, 0.0, 0.5),
        },
    }


def test_rerun_replaces_our_own_score_folder(tmp_path, capsys):
    input_data = _input_data(tmp_path)
    out_dir = tmp_path / "scores"
    pairs = [(p[1], r) for p, r in zip(PROMPTS, RESPONSES)]
    responses = _responses(tmp_path, pairs)
    args = ["--input_data", str(input_data), "--output_dir", str(out_dir)]
    # The reference's flag name works too.
    assert _score(capsys, *args, "--input_response_data", str(responses))[0] == 0
    assert json.loads((out_dir / "scores.json").read_text())["prompt_level"]["strict"] == 1
    # Prompt 4 now answered well: 5 words, no comma.
    pairs[3] = (pairs[3][0], "Hello there my good friend.")
    _responses(tmp_path, pairs)
    rc, out, err = _score(capsys, *args, "--responses", str(responses))
    assert (rc, err) == (0, "")
    assert "prompt-level: strict 0.5 (2/4), loose 1.0 (4/4)" in out
    assert json.loads((out_dir / "scores.json").read_text())["prompt_level"] == _accuracy(4, 2, 4, 0.5, 1.0)
    last = (out_dir / "eval_results_strict.jsonl").read_text().splitlines()[3]
    assert json.loads(last)["follow_instruction_list"] == [True, True]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        "eval_results_loose.jsonl",
        "eval_results_strict.jsonl",
        "scores.json",
    ]


def test_missing_responses_are_an_error_naming_how_many_and_the_first(tmp_path, capsys):
    input_data = _input_data(tmp_path)
    empty = _responses(tmp_path, [], "empty.jsonl")
    rc, out, err = _score(capsys, "--input_data", str(input_data), "--responses", str(empty))
    assert (rc, out) == (2, "")
    assert err == (
        f"isheep ifeval-score: error: {empty}: no response for 4 of 4 prompt(s) (matched by exact "
        "prompt text): key 1 (input line 1): 'Write a note to a neighbour without any commas.'; "
        "key 2 (input line 2): 'List three fruits as markdown bullets, in lowercase only.'; "
        "key 3 (input line 3): 'Describe the sea in fewer than 10 words.'; and 1 more\n"
    )
    assert not (tmp_path / "empty_ifeval").exists()  # nothing written on an error

    # A prompt that lost nothing but its trailing space on the way: the message says so.
    pairs = [(p[1], r) for p, r in zip(PROMPTS, RESPONSES)]
    pairs[2] = (pairs[2][0] + " ", pairs[2][1])
    partial = _responses(tmp_path, pairs, "partial.jsonl")
    rc, _, err = _score(capsys, "--input_data", str(input_data), "--responses", str(partial))
    assert rc == 2
    assert f"{partial}: no response for 1 of 4 prompt(s)" in err
    assert "key 3 (input line 3)" in err and "key 1 " not in err
    assert "(1 of them differ from a response's prompt only in leading/trailing whitespace)" in err
    assert not (tmp_path / "partial_ifeval").exists()


@pytest.mark.parametrize(
    "bad, expected",
    [
        ('{"prompt": "Describe the sea', "invalid JSON"),
        ('["a", "b"]', "expected a JSON object with prompt and response, got list"),
        ('{"prompt": "Describe the sea in fewer than 10 words."}', "missing field(s) ['response']"),
        (
            '{"prompt": "Describe the sea in fewer than 10 words.", "response": null}',
            "response must be a string",
        ),
        ('{"prompt": 3, "response": "x"}', "prompt must be a string"),
        (
            json.dumps({"prompt": PROMPTS[0][1], "response": "again"}),
            f"duplicate prompt (first on line 1): {PROMPTS[0][1]!r}",
        ),
    ],
)
def test_malformed_responses_name_the_file_and_line(tmp_path, capsys, bad, expected):
    input_data = _input_data(tmp_path)
    good = [json.dumps({"prompt": p[1], "response": r}) for p, r in zip(PROMPTS, RESPONSES)]
    responses = _write_jsonl(tmp_path / "responses.jsonl", [good[0], "", bad, *good[1:]])
    rc, out, err = _score(capsys, "--input_data", str(input_data), "--responses", str(responses))
    assert (rc, out) == (2, "")
    assert err.startswith(f"isheep ifeval-score: error: {responses}:3: ")  # the blank line 2 counts
    assert expected in err
    assert not (tmp_path / "responses_ifeval").exists()


def test_missing_files_are_named(tmp_path, capsys):
    input_data = _input_data(tmp_path)
    responses = _responses(tmp_path, [])
    for args, missing in (
        (["--input_data", str(tmp_path / "nope.jsonl"), "--responses", str(responses)], "nope.jsonl"),
        (["--input_data", str(input_data), "--responses", str(tmp_path / "gone.jsonl")], "gone.jsonl"),
    ):
        rc, out, err = _score(capsys, *args)
        assert (rc, out) == (2, "")
        assert err == f"isheep ifeval-score: error: {tmp_path / missing}: no such file\n"
    assert not (tmp_path / "gone_ifeval").exists()


def test_foreign_output_folder_is_refused_and_left_intact(tmp_path, capsys):
    input_data = _input_data(tmp_path)
    responses = _responses(tmp_path, [(p[1], r) for p, r in zip(PROMPTS, RESPONSES)])
    # The reference scorer's own results (no scores.json of ours) are not ours to replace.
    foreign = tmp_path / "reference_results"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "eval_results_strict.jsonl").write_bytes(b'{"from": "the reference"}\n')
    (foreign / "notes.txt").write_bytes(b"mine\r\n\x00\xff")
    (foreign / "sub" / "keep.bin").write_bytes(b"\x01\x02")
    before = _tree(foreign)
    rc, out, err = _score(
        capsys, "--input_data", str(input_data), "--responses", str(responses), "--output_dir", str(foreign)
    )
    assert (rc, out) == (2, "")
    assert f"{foreign}: not empty (eval_results_strict.jsonl, notes.txt, sub)" in err
    assert "refusing to write into it" in err
    assert _tree(foreign) == before
    assert sorted(p.name for p in foreign.iterdir()) == ["eval_results_strict.jsonl", "notes.txt", "sub"]

    # A scores.json that is not ours does not make the folder ours either.
    (foreign / "notes.txt").unlink()
    (foreign / "sub" / "keep.bin").unlink()
    (foreign / "sub").rmdir()
    (foreign / "scores.json").write_text('{"format": "someone else"}\n')
    before = _tree(foreign)
    assert (
        _score(
            capsys,
            "--input_data",
            str(input_data),
            "--responses",
            str(responses),
            "--output_dir",
            str(foreign),
        )[0]
        == 2
    )
    assert _tree(foreign) == before

    # Nor may the output folder be the one holding the inputs.
    rc, _, err = _score(
        capsys, "--input_data", str(input_data), "--responses", str(responses), "--output_dir", str(tmp_path)
    )
    assert rc == 2 and "holds the input" in err


def test_unknown_instruction_ids_are_reported_and_skipped(tmp_path, capsys):
    prompts = [
        (1, PROMPTS[0][1], ["punctuation:no_comma", "made_up:thing"], [{}, {"x": 1}]),
        (2, "Only an unknown instruction here.", ["other:unknown"], [{}]),
    ]
    input_data = _input_data(tmp_path, prompts)
    responses = _responses(tmp_path, [(PROMPTS[0][1], "No commas here."), (prompts[1][1], "Whatever.")])
    rc, out, err = _score(capsys, "--input_data", str(input_data), "--responses", str(responses))
    assert rc == 0
    assert err == (
        f"isheep ifeval-score: warning: {input_data}:1: key 1: unknown instruction id 'made_up:thing' "
        "(instruction skipped)\n"
        f"isheep ifeval-score: warning: {input_data}:2: key 2: unknown instruction id 'other:unknown' "
        "(instruction skipped)\n"
    )
    assert "scored 1 prompt(s), 1 instruction(s)" in out
    assert "prompt-level: strict 1.0 (1/1), loose 1.0 (1/1)" in out
    assert (
        "note: 2 instruction(s) with an unknown id were skipped: not comparable with the reference scorer"
        in out
    )
    # Prompt 2 had no known instruction left, so its response matched no scored prompt.
    assert "note: 1 response(s) to prompts not scored here were ignored" in out
    folder = tmp_path / "model_responses_ifeval"
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["unknown_instructions"] == [
        f"{input_data}:1: key 1: unknown instruction id 'made_up:thing'",
        f"{input_data}:2: key 2: unknown instruction id 'other:unknown'",
    ]
    # The per-prompt rows list the scored instructions only, in line with the follow list.
    assert (folder / "eval_results_strict.jsonl").read_text() == _reference_line(
        PROMPTS[0][1], ["punctuation:no_comma"], "No commas here.", [True]
    )

    only_unknown = _write_jsonl(
        tmp_path / "unknown_only.jsonl",
        [{"key": 5, "prompt": "x", "instruction_id_list": ["other:unknown"], "kwargs": [{}]}],
    )
    rc, _, err = _score(
        capsys,
        "--input_data",
        str(only_unknown),
        "--responses",
        str(responses),
        "--output_dir",
        str(tmp_path / "o"),
    )
    assert rc == 2
    assert (
        f"{only_unknown}: no prompt with a known instruction id to score (1 unknown instruction(s) skipped)"
        in err
    )
    assert not (tmp_path / "o").exists()


def test_help_lists_ifeval_score(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["--help"])
    assert e.value.code == 0
    assert "ifeval-score" in capsys.readouterr().out


def test_public_ifeval_prompts_score_by_prompt_text(tmp_path, capsys):
    if not PUBLIC.exists():
        pytest.skip(f"public IFEval data not present at {PUBLIC}")
    records = [json.loads(line) for line in PUBLIC.read_text().splitlines() if line.strip()]
    first, second = records[0], records[1]
    # The two prompts answered by hand below (the file is pinned by its sha256 in shared/data).
    assert first["instruction_id_list"] == [
        "punctuation:no_comma",
        "detectable_format:number_highlighted_sections",
        "length_constraints:number_words",
    ]
    assert first["kwargs"][1:] == [{"num_highlights": 3}, {"relation": "at least", "num_words": 300}]
    assert second["instruction_id_list"] == ["punctuation:no_comma"]
    answers = {r["prompt"]: "" for r in records}  # blank: follows nothing, strict or loose
    # 3 highlights, no comma, but 3 words of the 300 asked for.
    answers[first["prompt"]] = "*one* *two* *three*"
    answers[second["prompt"]] = "Day one we walk in Kyoto and day two we rest."
    responses = _responses(tmp_path, list(answers.items())[::-1])  # any order: matched by text
    rc, out, err = _score(capsys, "--input_data", str(PUBLIC), "--responses", str(responses))
    assert (rc, err) == (0, "")
    total = sum(len(r["instruction_id_list"]) for r in records)
    assert f"scored 541 prompt(s), {total} instruction(s)" in out
    assert f"prompt-level: strict {1 / 541} (1/541), loose {1 / 541} (1/541)" in out
    assert f"instruction-level: strict {3 / total} (3/{total}), loose {3 / total} (3/{total})" in out
    folder = tmp_path / "model_responses_ifeval"
    for name in ("strict", "loose"):
        lines = (folder / f"eval_results_{name}.jsonl").read_text().splitlines()
        assert len(lines) == 541
        assert [json.loads(line)["prompt"] for line in lines] == [r["prompt"] for r in records]  # input order
        assert json.loads(lines[0])["follow_instruction_list"] == [True, True, False]
        assert json.loads(lines[1])["follow_all_instructions"] is True
    scores = json.loads((folder / "scores.json").read_text())
    assert scores["unknown_instructions"] == [] and scores["unmatched_responses"] == 0
    assert scores["per_instruction"]["punctuation:no_comma"]["strict"] == 2
