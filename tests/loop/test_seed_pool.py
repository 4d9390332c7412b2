"""Seed pool loading: formats, the shipped pool, and errors that name file and line."""

import json
from collections import Counter
from pathlib import Path

import pytest
from helpers import REPO, SHARED_DATA

from isheep_jax.loop.response_filter import filter_response
from isheep_jax.loop.rouge import RougeDeduper
from isheep_jax.loop.seed_pool import SeedPoolError, SeedTask, load_seed_pool, parse_seed_pool
from isheep_jax.loop.synthesis import ParsedInstruction, heuristic_filter

# The repository sits beside `shared/`, which holds public reference files for
# compatibility tests; they may be read here but never copied into the project.


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def si_line(**fields) -> str:
    record = {
        "id": "t0",
        "name": "n",
        "instruction": "Name a prime number.",
        "instances": [{"input": "", "output": "7"}],
        "is_classification": False,
    }
    record.update(fields)
    return json.dumps(record)


# -- the shipped pool --------------------------------------------------------------------


def test_shipped_pool_loads_and_is_large():
    pool = load_seed_pool()
    assert len(pool) >= 100
    assert all(isinstance(t, SeedTask) and t.instruction.strip() and t.output.strip() for t in pool)
    assert [t.id for t in pool] == [f"seed_task_{i}" for i in range(len(pool))]
    assert 10 <= sum(t.is_classification for t in pool) < len(pool) // 2
    with_input = sum(bool(t.input) for t in pool)
    assert 0.3 * len(pool) < with_input < 0.8 * len(pool)  # both kinds of demo are shown


def test_shipped_pool_is_diverse():
    pool = load_seed_pool()
    dedup = RougeDeduper()
    for task in pool:
        assert not dedup.is_duplicate(task.instruction, 0.7), task.instruction
        dedup.add(task.instruction)
    lengths = [len(t.output.split()) for t in pool]
    assert min(lengths) <= 3 and max(lengths) >= 60  # short labels up to long answers
    first_words = Counter(t.instruction.split()[0].lower() for t in pool)
    assert first_words.most_common(1)[0][1] <= 0.2 * len(pool)  # varied verbs


def test_shipped_pool_passes_our_own_filters():
    # Demos teach the model the format: they should be exactly what the filters keep.
    for task in load_seed_pool():
        assert heuristic_filter(ParsedInstruction(1, task.instruction, task.input)) is None, task.instruction
        assert filter_response(task.output, task.instruction, task.input) is None, task.instruction


def test_shipped_file_is_valid_self_instruct_jsonl():
    path = REPO / "isheep_jax" / "loop" / "data" / "seed_tasks.jsonl"
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        assert set(record) == {"id", "name", "instruction", "instances", "is_classification"}
        assert record["name"] not in names
        names.add(record["name"])
        assert [set(i) for i in record["instances"]] == [{"input", "output"}]


# -- public data compatibility --------------------------------------------------------------


def public_seed_file() -> Path:
    path = SHARED_DATA / "self_instruct_seed_tasks.jsonl"
    if not path.is_file():
        pytest.skip(f"public reference data not present at {path}")
    return path


def test_loads_the_public_self_instruct_seed_tasks():
    pool = load_seed_pool(public_seed_file())
    assert len(pool) == 175
    assert pool[0].id == "seed_task_0" and pool[-1].id == "seed_task_174"
    assert sum(t.is_classification for t in pool) == 26
    assert all(t.instruction and t.output for t in pool)


def test_shipped_pool_is_not_a_copy_of_the_public_one():
    public = RougeDeduper(t.instruction for t in load_seed_pool(public_seed_file()))
    for task in load_seed_pool():
        assert not public.is_duplicate(task.instruction, 0.7), task.instruction


# -- formats -------------------------------------------------------------------------------


def test_self_instruct_uses_first_instance(tmp_path):
    line = si_line(
        id="a1",
        instances=[{"input": "x", "output": "first"}, {"input": "y", "output": "second"}],
        is_classification=True,
    )
    pool = load_seed_pool(write(tmp_path, "s.jsonl", line + "\n\n"))
    assert pool == [SeedTask("Name a prime number.", "x", "first", True, "a1")]


def test_alpaca_json_list(tmp_path):
    data = [
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
        {"instruction": "Say hi.", "output": "Hi!", "id": "greet", "is_classification": False},
    ]
    pool = load_seed_pool(write(tmp_path, "a.json", json.dumps(data, indent=2)))
    assert pool == [
        SeedTask("Add the numbers.", "2, 3", "5", False, "seed_task_0"),
        SeedTask("Say hi.", "", "Hi!", False, "greet"),
    ]


def test_alpaca_jsonl_and_bom(tmp_path):
    rows = [
        {"instruction": "Add the numbers.", "input": "2, 3", "output": "5"},
        {"instruction": "Hi.", "output": ""},
    ]
    text = "\ufeff" + "\n".join(json.dumps(r) for r in rows) + "\n"
    assert load_seed_pool(write(tmp_path, "a.jsonl", text)) == [
        SeedTask("Add the numbers.", "2, 3", "5", id="seed_task_0"),
        SeedTask("Hi.", "", "", id="seed_task_1"),
    ]


def test_unicode_line_separators_inside_strings():
    line = json.dumps(
        {"instruction": "Join the lines.", "input": "a\u2028b\x0cc", "output": "abc"}, ensure_ascii=False
    )
    assert parse_seed_pool(line + "\r\n")[0].input == "a\u2028b\x0cc"


def test_parse_from_string_and_bytes():
    assert (
        parse_seed_pool(si_line())
        == parse_seed_pool(si_line().encode())
        == [SeedTask("Name a prime number.", "", "7", False, "t0")]
    )


# -- errors ----------------------------------------------------------------------------------


def error_for(tmp_path: Path, text: str, name: str = "bad.jsonl") -> SeedPoolError:
    path = write(tmp_path, name, text)
    with pytest.raises(SeedPoolError) as info:
        load_seed_pool(path)
    assert str(info.value).startswith(str(path))
    return info.value


@pytest.mark.parametrize("text", ["", "\n\n  \n"])
def test_empty_file(tmp_path, text):
    err = error_for(tmp_path, text)
    assert err.line is None and "empty" in str(err)


def test_empty_json_list(tmp_path):
    assert "no seed tasks" in str(error_for(tmp_path, "[ ]", "a.json"))


@pytest.mark.parametrize(
    "bad_line, problem",
    [
        ('{"instruction": "x", ', "bad JSON"),
        ('["not", "an", "object"]', "expected a JSON object, got a list"),
        (si_line(instruction="   "), "empty instruction"),
        (si_line(instruction=3), "field 'instruction' must be a string, got a number"),
        (json.dumps({"instruction": "Name a prime.", "instances": []}), "'instances' is an empty list"),
        (json.dumps({"instruction": "Name a prime.", "instances": "7"}), "field 'instances' must be a list"),
        (
            json.dumps({"instruction": "Name a prime.", "instances": ["7"]}),
            "'instances[0]' must be an object",
        ),
        (
            json.dumps({"instruction": "Name a prime.", "instances": [{"input": ""}]}),
            "missing field 'instances[0].output'",
        ),
        (
            json.dumps({"instruction": "N.", "instances": [{"output": 7}]}),
            "'instances[0].output' must be a string",
        ),
        (si_line(is_classification="yes"), "'is_classification' must be true or false, got a string"),
        (si_line(id=5), "field 'id' must be a string"),
        (si_line(id="t0"), "duplicate id 't0' (first seen on line 1)"),
        (json.dumps({"instruction": "Say hi.", "output": "Hi"}), "missing field 'instances'"),
    ],
)
def test_malformed_line_names_line_and_problem(tmp_path, bad_line, problem):
    text = si_line() + "\n\n" + bad_line + "\n"
    err = error_for(tmp_path, text)
    assert err.line == 3
    assert ":3: " in str(err)
    assert problem in str(err)


def test_alpaca_errors(tmp_path):
    good = json.dumps({"instruction": "Say hi.", "output": "Hi"})
    err = error_for(tmp_path, good + "\n" + json.dumps({"instruction": "Say bye."}) + "\n")
    assert err.line == 2 and "missing field 'output'" in str(err) and "alpaca" in str(err)
    err = error_for(tmp_path, good + "\n" + si_line() + "\n")
    assert err.line == 2 and "unexpected field 'instances'" in str(err)
    err = error_for(tmp_path, good + "\n" + json.dumps({"instruction": "x", "output": "y", "input": None}))
    assert "field 'input' must be a string, got null" in str(err)


def test_json_list_errors_point_at_the_element(tmp_path):
    text = '[\n  {"instruction": "Say hi.", "output": "Hi"},\n  {"instruction": "",\n   "output": "x"}\n]\n'
    err = error_for(tmp_path, text, "a.json")
    assert err.line == 3 and "empty instruction" in str(err)
    err = error_for(
        tmp_path, '[\n  {"instruction": "Say hi.", "output": "Hi"}\n  {"instruction": "x"}\n]', "a.json"
    )
    assert err.line == 3 and "expected ',' or ']'" in str(err)
    err = error_for(tmp_path, '[\n  {"instruction": "Say hi.",\n   "output": Hi}\n]', "a.json")
    assert err.line == 3 and "bad JSON" in str(err)
    err = error_for(tmp_path, '[{"instruction": "Say hi.", "output": "Hi"}]\n]', "a.json")
    assert err.line == 2 and "extra data" in str(err)


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bin.jsonl"
    path.write_bytes(si_line().encode() + b"\n" + b'{"instruction": "\xff"}\n')
    with pytest.raises(SeedPoolError, match=r"bin\.jsonl:2: not valid UTF-8"):
        load_seed_pool(path)
