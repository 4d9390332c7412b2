"""Contamination guard: planted copies are caught, clean texts pass, shipped sets are apart."""

import json
import time

import pytest

from isheep_jax.core.io_utils import DataError
from isheep_jax.evals import calibration
from isheep_jax.evals.ifeval import load_prompts, shipped_prompts_path
from isheep_jax.loop.contamination import ContaminationGuard, check_seed_pool, eval_texts, join_pair
from isheep_jax.loop.rouge import RougeDeduper, rouge_l
from isheep_jax.loop.seed_pool import SeedTask, load_seed_pool


@pytest.fixture(scope="module")
def shipped_texts():
    return eval_texts()


@pytest.fixture(scope="module")
def guard(shipped_texts):
    return ContaminationGuard(shipped_texts)


@pytest.fixture(scope="module")
def prompts():
    return {str(p.key): p.prompt for p in load_prompts(shipped_prompts_path(), strict=False).prompts}


@pytest.fixture(scope="module")
def heldout(shipped_texts):
    return dict(shipped_texts["heldout"])


def test_shipped_eval_texts(shipped_texts, guard, prompts):
    assert {name: len(items) for name, items in shipped_texts.items()} == {
        "ifeval": 170,
        "heldout": 50,
        "winrate": 50,
        "calibration": 40,
    }
    assert len(guard) == 310
    assert shipped_texts["ifeval"][0] == ("1", prompts["1"])
    # Held-out and (by default) win-rate items: instruction, newline, input.
    first = ("heldout-001", "Convert the temperature from Celsius to Fahrenheit.\n25 degrees Celsius")
    assert shipped_texts["heldout"][0] == shipped_texts["winrate"][0] == first
    assert (
        "heldout-035",
        join_pair("Write a git command that creates a branch called feature-login and switches to it."),
    ) in shipped_texts["heldout"]
    items = calibration.load_items()
    assert shipped_texts["calibration"][27] == (
        "calib-028",
        f"{items[27]['instruction']}\n{items[27]['input']}",
    )


def test_a_planted_ifeval_span_is_caught_by_the_13_gram(guard, prompts):
    span = " ".join(prompts["1"].split()[:13])  # "Write a short note to a neighbour asking them ..."
    text = (
        "Here is my homework for the week, which covers fractions, maps of old harbours and the rules of "
        f"cricket. {span.upper()}! After that we painted the fence and fed the chickens before dinner."
    )
    assert rouge_l(text, prompts["1"]) < 0.5  # too long a text for ROUGE-L to notice
    assert guard.check(text) == "ifeval:1 (13-gram)"
    # Twelve words of it are not enough.
    shorter = text.replace(span.upper(), " ".join(span.split()[:12]))
    assert guard.check(shorter) is None
    assert (
        ContaminationGuard({"ifeval": [("1", prompts["1"])]}, ngram=12).check(shorter) == "ifeval:1 (12-gram)"
    )


def test_a_paraphrased_ifeval_prompt_is_caught_by_rouge(guard, prompts):
    words = prompts["2"].split()
    # Change every 6th word: no 13 words in a row survive, most of the sequence does.
    para = " ".join("really" if i % 6 == 5 else w for i, w in enumerate(words))
    score = rouge_l(para, prompts["2"])
    assert 0.7 < score < 1.0
    assert guard.check(para) == f"ifeval:2 (rouge-l {score:.2f})"


def test_a_planted_heldout_instruction_is_caught_by_rouge(guard, heldout):
    original = heldout["heldout-007"]  # too short for a 13-gram
    # One word changed: no 13 words in a row are left of the 16.
    planted = "Give a Python expression which is True exactly when the variable year holds a leap year?"
    score = rouge_l(planted, original)
    assert score == pytest.approx(2 * 15 / (16 + 16))
    assert guard.check(planted) == f"heldout:heldout-007 (rouge-l {score:.2f})"
    # Case and punctuation hide a copy from neither test.
    assert guard.check(original.upper().replace(" ", " -- ")) == "heldout:heldout-007 (13-gram)"
    short = heldout["heldout-024"]  # "What is the chemical symbol for this element?\ngold"
    assert guard.check(short.upper().replace(" ", ", ") + "!!") == "heldout:heldout-024 (rouge-l 1.00)"


def test_a_planted_heldout_pair_is_caught_by_the_13_gram():
    text = "Count the red marbles in the jar, then write the number down and share it with the class today."
    guard = ContaminationGuard({"heldout": [("h1", text)]})
    planted = (
        "Before lunch: " + " ".join(text.split()[3:16]) + " and nothing else, thanks, see you soon, bye bye."
    )
    assert rouge_l(planted, text) <= 0.7
    assert guard.check(planted) == "heldout:h1 (13-gram)"


def test_clean_texts_pass(guard):
    for text in [
        "Describe the migration route of arctic terns between the poles.",
        "Rewrite this limerick about a sleepy walrus as a haiku.",
        "",
        "   ",
    ]:
        assert guard.check(text) is None


def test_threshold_is_strict_and_arguments_are_checked():
    g = ContaminationGuard({"s": [("a", "one two three four")]}, rouge_threshold=0.75)
    assert rouge_l("one two three", "one two three four") == pytest.approx(6 / 7)
    assert g.check("one two three") == "s:a (rouge-l 0.86)"
    assert g.check("one two") is None  # F1 = 2/3
    assert (
        ContaminationGuard({"s": [("a", "one two")]}, rouge_threshold=2 / 3).check("one two three four")
        is None
    )
    for bad in ({"ngram": 0}, {"rouge_threshold": 1.5}, {"rouge_threshold": -0.1}):
        with pytest.raises(ValueError):
            ContaminationGuard({}, **bad)
    assert len(ContaminationGuard({})) == 0 and ContaminationGuard({}).check("anything at all") is None


def test_the_first_set_wins_a_shared_text():
    g = ContaminationGuard({"a": [("1", "alpha beta gamma")], "b": [("2", "alpha beta gamma")]})
    assert g.check("alpha beta gamma") == "a:1 (rouge-l 1.00)"


def test_eval_texts_reads_the_given_files(tmp_path):
    ifeval_file = tmp_path / "ifeval.jsonl"
    ifeval_file.write_text(
        json.dumps(
            {
                "key": 9,
                "prompt": "Say hello.",
                "instruction_id_list": ["punctuation:no_comma"],
                "kwargs": [{}],
            }
        )
        + "\n"
        + json.dumps({"key": 10, "prompt": "Unknown only.", "instruction_id_list": ["x:y"], "kwargs": [{}]})
        + "\n"
    )
    heldout_file = tmp_path / "heldout.jsonl"
    heldout_file.write_text(
        json.dumps({"id": "h-1", "instruction": "Add.", "input": "2 + 2", "output": "4"})
        + "\n"
        + json.dumps({"instruction": "No id here.", "response": "ok"})
        + "\n"
    )
    winrate_file = tmp_path / "winrate.jsonl"
    winrate_file.write_text(json.dumps({"id": 5, "instruction": "Compare two cats."}) + "\n")
    calib_file = tmp_path / "calib.jsonl"
    calib_file.write_text(
        json.dumps({"id": "c1", "instruction": "Q?", "input": "in", "reference": "An answer."}) + "\n"
    )
    texts = eval_texts(str(ifeval_file), str(heldout_file), str(winrate_file), str(calib_file))
    assert texts == {
        "ifeval": [("9", "Say hello.")],  # key 10 has no known instruction: skipped, as in the evaluation
        "heldout": [("h-1", "Add.\n2 + 2"), ("2", "No id here.")],
        "winrate": [("5", "Compare two cats.")],
        "calibration": [("c1", "Q?\nin")],
    }
    # Without a win-rate file the win-rate items are the held-out pairs.
    assert eval_texts(str(ifeval_file), str(heldout_file), "", str(calib_file))["winrate"] == texts["heldout"]


def test_eval_texts_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"id": "x", "input": "no instruction"}) + "\n")
    with pytest.raises(DataError, match=rf"{bad}:1"):
        eval_texts(heldout_file=str(bad))
    with pytest.raises(DataError, match=rf"{bad}:1: field 'instruction'"):
        eval_texts(calibration_file=str(bad))


def test_check_seed_pool_flags_planted_seeds(guard, prompts, heldout):
    instruction, _ = heldout["heldout-010"].split("\n")
    assert rouge_l(instruction, heldout["heldout-010"]) == pytest.approx(2 * 9 / (9 + 11))
    seeds = [
        SeedTask(instruction="Name a colour of the rainbow.", output="Red", id="clean"),
        SeedTask(instruction=prompts["3"], output="...", id="copied-prompt"),
        # The held-out instruction with a long input of its own: caught on the instruction alone.
        SeedTask(
            instruction=instruction,
            input="The old stone bridge in the centre of the city that tourists photograph at sunset",
            output="...",
            id="copied-instruction",
        ),
    ]
    assert check_seed_pool(guard, seeds) == [
        ("copied-prompt", "ifeval:3 (13-gram)"),
        ("copied-instruction", "heldout:heldout-010 (rouge-l 0.90)"),
    ]


# -- the shipped sets are mutually clean -------------------------------------------------------


def test_shipped_seed_pool_is_clean(guard):
    assert check_seed_pool(guard, load_seed_pool()) == []


def seed_views(seeds):
    return [s.instruction for s in seeds], [join_pair(s.instruction, s.input) for s in seeds]


@pytest.mark.parametrize("name", ["heldout", "calibration"])
def test_heldout_and_calibration_stay_below_half_rouge_against_seeds_and_ifeval(name):
    seeds = load_seed_pool()
    seed_instructions, seed_pairs = seed_views(seeds)
    by_instruction, by_pair = RougeDeduper(seed_instructions), RougeDeduper(seed_pairs)
    ifeval = RougeDeduper(p.prompt for p in load_prompts(shipped_prompts_path(), strict=False).prompts)
    rows = calibration.load_items() if name == "calibration" else _heldout_rows()
    assert len(rows) == (40 if name == "calibration" else 50)
    for row in rows:
        pair = join_pair(row["instruction"], row["input"])
        worst = max(
            by_instruction.max_score(row["instruction"]),
            by_pair.max_score(pair),
            ifeval.max_score(row["instruction"]),
            ifeval.max_score(pair),
        )
        assert worst <= 0.5, (row["id"], worst)


def test_calibration_is_apart_from_heldout():
    heldout = _heldout_rows()
    pool = RougeDeduper(
        [r["instruction"] for r in heldout] + [join_pair(r["instruction"], r["input"]) for r in heldout]
    )
    for item in calibration.load_items():
        assert pool.max_score(item["instruction"]) <= 0.5, item["id"]
        assert pool.max_score(join_pair(item["instruction"], item["input"])) <= 0.5, item["id"]


def test_shipped_heldout_file_keeps_its_shape():
    rows = _heldout_rows()
    assert [r["id"] for r in rows] == [f"heldout-{n:03d}" for n in range(1, 51)]
    assert all(list(r) == ["id", "instruction", "input", "output"] for r in rows)
    assert all(r["instruction"].strip() and r["output"].strip() for r in rows)


def _heldout_rows():
    from isheep_jax.evals.runner import shipped_heldout_path

    return [json.loads(line) for line in shipped_heldout_path().read_text(encoding="utf-8").splitlines()]


def test_checking_thousands_of_texts_is_fast(guard):
    seeds = load_seed_pool()
    texts = [join_pair(s.instruction, s.input) + f" variant {i}" for i in range(25) for s in seeds]
    start = time.perf_counter()
    flagged = [t for t in texts if guard.check(t)]
    elapsed = time.perf_counter() - start
    assert len(texts) == 3200 and flagged == []
    assert elapsed < 10.0, elapsed  # ~0.1 ms a text on a laptop core
