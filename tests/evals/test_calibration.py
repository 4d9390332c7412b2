"""Judge calibration: each degradation on hand examples, the shipped set, file errors."""

import json
import re
from collections import Counter

import pytest

from isheep_jax.core.io_utils import DataError
from isheep_jax.evals.calibration import (
    DEGRADATIONS,
    FIELDS,
    CalibrationPair,
    build_pairs,
    load_items,
    load_pairs,
    other_answer,
    repetition,
    shipped_calibration_path,
    truncated,
)
from isheep_jax.evals.language_id import detect_language


def item(n: int, **fields) -> dict:
    row = {
        "id": f"t{n}",
        "instruction": f"Question number {n}?",
        "input": "",
        "reference": f"Answer {n} is long enough. It has two sentences.",
        "other_language": "",
        "format": "",
        "ignores_format": "",
    }
    row.update(fields)
    return row


def write_rows(tmp_path, rows, name="calib.jsonl"):
    path = tmp_path / name
    path.write_text(
        "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8"
    )
    return path


# -- degradations on hand examples ---------------------------------------------------------


def test_truncated_keeps_a_third_and_stops_mid_sentence():
    assert truncated("The cat sat on the mat. It was warm and sunny outside today.") == "The cat sat on"
    # round(9 / 3) = 3 words would end at "three.", a full stop: the cut moves one word on.
    assert truncated("One two three. Four five six seven eight nine.") == "One two three. Four"
    # Trailing punctuation goes; the kept text keeps its line breaks.
    assert truncated("- Peas, spinach, lettuce\n- Radishes and kale\n- Leeks") == "- Peas, spinach"
    assert truncated("Peas, spinach, lettuce, radishes, kale") == "Peas, spinach"


def test_truncated_skips_list_markers_and_falls_back_for_one_word_items():
    # 11 words: the 4th ends a sentence and the 5th is a marker, so the cut lands on the 6th.
    text = "1. Mix the flour.\n2. Add the eggs.\n3. Bake it."
    assert truncated(text) == "1. Mix the flour.\n2. Add"
    # Every word ends a sentence or is a marker: the base cut (2 of 6 words) stays.
    assert truncated("1. Mix.\n2. Bake.\n3. Cool.") == "1. Mix"


def test_truncated_needs_three_words():
    assert truncated("Paris.") is None
    assert truncated("Yes, certainly.") is None
    assert truncated("It is Paris.") == "It"


def test_repetition_loops_the_first_sentence_to_three_times_the_length():
    ref = "The sky is blue. Grass is green and trees are tall."  # 11 words, opening of 4
    out = repetition(ref)
    assert out == " ".join(["The sky is blue."] * 9)  # ceil(33 / 4) = 9 repeats
    assert len(out.split()) == 36 >= 3 * len(ref.split())
    # A single-sentence answer repeats as a whole, three times.
    assert repetition("Just one sentence here.") == "Just one sentence here. " * 2 + "Just one sentence here."


def test_repetition_of_a_run_on_answer_uses_its_first_twelve_words():
    words = [f"w{i}" for i in range(30)]  # no sentence end within 25 words
    out = repetition(" ".join(words))
    assert out == " ".join([" ".join(words[:12])] * 8)  # ceil(90 / 12) = 8


def test_repetition_keeps_a_list_marker_with_its_item():
    ref = "- Walk daily.\n- Sleep well.\n- Drink water."
    assert repetition(ref) == " ".join(["- Walk daily."] * 9)  # 6 words, opening of 2


def test_other_answer_is_the_item_half_the_set_away():
    items = [item(n) for n in range(5)]
    assert [other_answer(items, i) for i in range(5)] == [items[(i + 2) % 5]["reference"] for i in range(5)]
    assert other_answer(items[:1], 0) is None
    same = [item(0), item(1, reference=item(0)["reference"])]
    assert other_answer(same, 0) is None


def test_build_pairs_per_degradation():
    items = [
        item(0, other_language="Réponse 0 en français. Elle a deux phrases.", format="in one sentence"),
        item(1, format="in one sentence", ignores_format="First part. Second part. Third part."),
    ]
    items[0]["ignores_format"] = "One. Two. Three."
    pairs = build_pairs(items)
    assert [p.id for p in pairs] == [
        "t0:other_answer",
        "t0:truncated",
        "t0:repetition",
        "t0:empty",
        "t0:other_language",
        "t0:ignores_format",
        "t1:other_answer",
        "t1:truncated",
        "t1:repetition",
        "t1:empty",
        "t1:ignores_format",  # no other_language for t1
    ]
    by_id = {p.id: p for p in pairs}
    assert all(p.better == items[int(p.id[1])]["reference"] for p in pairs)
    assert by_id["t0:other_answer"].worse == items[1]["reference"]
    assert by_id["t1:other_answer"].worse == items[0]["reference"]
    assert by_id["t0:truncated"].worse == "Answer 0 is"  # 9 words -> 3
    assert by_id["t0:repetition"].worse == " ".join(["Answer 0 is long enough."] * 6)  # ceil(27 / 5)
    assert by_id["t0:empty"].worse == ""
    assert by_id["t0:other_language"].worse == items[0]["other_language"]
    assert by_id["t1:ignores_format"].worse == "First part. Second part. Third part."
    assert by_id["t1:truncated"] == CalibrationPair(
        id="t1:truncated",
        instruction="Question number 1?",
        input="",
        better=items[1]["reference"],
        worse="Answer 1 is",
        degradation="truncated",
    )
    assert build_pairs(items) == pairs  # pure: the same input, the same pairs


def test_build_pairs_leaves_out_what_cannot_be_degraded():
    # One short item: no other item to borrow from, too short to truncate.
    pairs = build_pairs([{"id": "x", "instruction": "Capital of France?", "reference": "Paris."}])
    assert [p.degradation for p in pairs] == ["repetition", "empty"]
    assert pairs[0].worse == "Paris. Paris. Paris."


# -- the shipped set ------------------------------------------------------------------------

WORD_NUMBERS = {"two": 2, "three": 3, "four": 4, "five": 5}
SENTENCE_END = re.compile(r"[.!?][\"'”»)]*(?=\s|$)")


def words(text: str) -> int:
    """Words as the degradations count them: runs holding a letter or digit ("+" is none)."""
    return sum(1 for w in text.split() if any(c.isalnum() for c in w))


def sentence_count(text: str) -> int:
    return len(SENTENCE_END.findall(text))


def obeys(fmt: str, text: str) -> bool | None:
    """Whether `text` follows the stated format; None for a format this test cannot check."""
    f = fmt.lower()
    lines = [line for line in text.splitlines() if line.strip()]
    if m := re.search(r"exactly (\w+) bullet points", f):
        return len(lines) == WORD_NUMBERS[m[1]] and all(line.startswith("- ") for line in lines)
    if "numbered list" in f:
        return len(lines) >= 2 and all(re.match(rf"{i}\. \S", line) for i, line in enumerate(lines, 1))
    if "one sentence" in f or "single sentence" in f:
        return (
            len(lines) == 1
            and sentence_count(text) == 1
            and SENTENCE_END.search(text.rstrip()[-3:]) is not None
        )
    if m := re.search(r"exactly (\w+) sentences", f):
        return len(lines) == 1 and sentence_count(text) == WORD_NUMBERS[m[1]]
    if "all capital letters" in f:
        return text == text.upper() and any(c.isalpha() for c in text)
    if "lowercase letters only" in f:
        return text == text.lower() and any(c.isalpha() for c in text)
    if m := re.search(r"under (\d+) words", f):
        return len(text.split()) < int(m[1])
    if f.startswith("as json with keys"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return False
        keys = re.findall(r'"(\w+)"', fmt)
        return (
            isinstance(obj, dict)
            and sorted(obj) == sorted(keys)
            and all(isinstance(v, str) for v in obj.values())
        )
    if "comma-separated list" in f:
        return len(lines) == 1 and len(text.split(",")) >= 3 and sentence_count(text) == 0
    if "one polite question" in f:
        return len(lines) == 1 and sentence_count(text) == 1 and text.rstrip().endswith("?")
    return None


@pytest.fixture(scope="module")
def shipped():
    return load_items()


def test_shipped_set_loads(shipped):
    assert len(shipped) == 40
    assert [it["id"] for it in shipped] == [f"calib-{n:03d}" for n in range(1, 41)]
    assert all(list(it) == list(FIELDS) for it in shipped)
    assert sum(1 for it in shipped if it["format"]) == 20
    pairs = load_pairs()
    assert Counter(p.degradation for p in pairs) == {
        "other_answer": 40,
        "truncated": 40,
        "repetition": 40,
        "empty": 40,
        "other_language": 40,
        "ignores_format": 20,
    }
    assert len(pairs) == 220
    assert len({p.id for p in pairs}) == 220
    assert set(DEGRADATIONS) == {p.degradation for p in pairs}


def test_shipped_file_is_utf8_jsonl_with_the_fields_in_order():
    lines = shipped_calibration_path().read_text(encoding="utf-8").splitlines()
    assert len(lines) == 40
    assert all(list(json.loads(line)) == list(FIELDS) for line in lines)


def test_every_shipped_reference_differs_from_its_degraded_answers():
    for p in load_pairs():
        assert p.worse.strip() != p.better.strip(), p.id
        if p.degradation in ("truncated", "other_answer", "repetition", "other_language", "ignores_format"):
            assert p.worse.strip(), p.id
        if p.degradation == "truncated":
            assert p.better.startswith(p.worse) and p.worse[-1].isalnum(), p.id
            assert words(p.worse) <= words(p.better) // 2, p.id
        if p.degradation == "repetition":
            assert words(p.worse) >= 3 * words(p.better), p.id


def test_shipped_format_items_obey_their_format_and_the_ignoring_answer_does_not(shipped):
    formatted = [it for it in shipped if it["format"]]
    kinds = set()
    for it in formatted:
        fmt = it["format"]
        assert fmt.lower() in it["instruction"].lower(), it["id"]  # the instruction states it
        assert obeys(fmt, it["reference"]) is True, it["id"]
        assert obeys(fmt, it["ignores_format"]) is False, it["id"]
        kinds.add(re.sub(r"\d+|\"\w+\"", "N", fmt.lower()))
    assert len(kinds) >= 8  # the formats are varied
    for it in shipped:
        if not it["format"]:
            assert it["ignores_format"] == "", it["id"]


def test_shipped_other_language_answers_are_french_spanish_or_german(shipped):
    # Lowercased: langdetect's profiles are of running text; it reads an all-caps Spanish
    # headline (calib-040) as Portuguese.
    langs = Counter(detect_language(it["other_language"].lower()) for it in shipped)
    assert set(langs) == {"fr", "es", "de"}
    assert min(langs.values()) >= 10


def test_shipped_instructions_are_distinct(shipped):
    assert len({it["instruction"] for it in shipped}) == 40


def test_load_pairs_limit_takes_the_first_items_pairs():
    full = load_pairs()
    first = load_pairs(limit=3)
    assert first == [p for p in full if p.id.split(":")[0] in ("calib-001", "calib-002", "calib-003")]
    assert first == full[: len(first)]
    assert len(first) == 5 + 6 + 5  # calib-002 states a format
    assert load_pairs(limit=0) == full and load_pairs(limit=1000) == full
    with pytest.raises(ValueError, match="limit"):
        load_pairs(limit=-1)


def test_loading_is_deterministic(tmp_path):
    rows = [item(n) for n in range(6)]
    path = write_rows(tmp_path, rows)
    assert load_pairs(path) == load_pairs(path) == build_pairs(load_items(path))
    assert load_items(str(path)) == rows


# -- a user's file ------------------------------------------------------------------------


def test_a_users_file_fills_optional_fields(tmp_path):
    path = write_rows(tmp_path, [{"id": "a", "instruction": "Say hi.", "reference": "Hello there, friend."}])
    assert load_items(path) == [
        {
            "id": "a",
            "instruction": "Say hi.",
            "input": "",
            "reference": "Hello there, friend.",
            "other_language": "",
            "format": "",
            "ignores_format": "",
        }
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ('["not", "an", "object"]', "expected a JSON object, got list"),
        ({"id": "b", "instruction": "Q?"}, "field 'reference' must be a non-empty string"),
        (
            {"id": "b", "instruction": "  ", "reference": "R."},
            "field 'instruction' must be a non-empty string",
        ),
        ({"id": 7, "instruction": "Q?", "reference": "R."}, "field 'id' must be a non-empty string"),
        ({"id": "b", "instruction": "Q?", "reference": "R.", "input": 3}, "field 'input' must be a string"),
        (
            {"id": "b", "instruction": "Q?", "reference": "R.", "ignores_format": "x"},
            "'ignores_format' is set but 'format' is empty",
        ),
        (
            {"id": "b", "instruction": "Q?", "reference": "R.", "other_language": "R."},
            "field 'other_language' equals the reference",
        ),
        ({"id": "t0", "instruction": "Q?", "reference": "R."}, "duplicate id 't0' \\(first on line 1\\)"),
        ("{oops", "invalid JSON"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write_rows(tmp_path, [item(0), "", bad])  # the bad row is on line 3
    with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:3: {message}"):
        load_items(path)


def test_empty_and_missing_files(tmp_path):
    empty = write_rows(tmp_path, [], name="empty.jsonl")
    with pytest.raises(DataError, match="no calibration items"):
        load_pairs(empty)
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_items(tmp_path / "nope.jsonl")
