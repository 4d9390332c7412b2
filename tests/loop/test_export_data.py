"""`isheep export-data`: a run's kept, dropped and scored rows as a `datasets` Parquet folder.

The run directory is a real one: the loop's own stages on a tiny random model, with the
sampling replaced by canned outputs (a random model writes nothing parseable) and training
skipped, so every filter, drop reason, summary and manifest is the loop's."""

import json
import os
import re
import shutil

import jax
import pytest
import yaml
from helpers import make_hf_model

from isheep_jax import cli
from isheep_jax.core import io_utils
from isheep_jax.evals import ifeval, rating
from isheep_jax.loop import export_data, runner
from isheep_jax.loop.run_dir import RunDir, RunError
from isheep_jax.model.convert import hf
from isheep_jax.parallel import sharding

datasets = pytest.importorskip("datasets")

TOPICS = [
    "Explain why the sky appears blue on a clear afternoon.",
    "Describe how bread dough rises when yeast ferments sugar.",
    "Summarize the main causes of the French Revolution briefly.",
    "Give three practical tips for saving money on groceries.",
    "Compare cats and dogs as pets for small apartments.",
    "Write a haiku celebrating the first snowfall of winter.",
]


def _leaked_prompt() -> str:
    """An IFEval prompt that passes the synthesis filters: the contamination check drops it."""
    from isheep_jax.loop import synthesis

    for p in ifeval.load_prompts(ifeval.shipped_prompts_path(), strict=False).prompts:
        text = " ".join(p.prompt.split())
        item = synthesis.ParsedInstruction(1, text)
        if synthesis.heuristic_filter(item) is None and len(text.split()) < 60:
            return text
    raise AssertionError("no usable IFEval prompt")


def _fake_completions(gen, settings, seed, chat, desc):
    """`runner._completions`' stream, with canned rows."""
    i = seed // 10  # runner._seed(i, stage) with LoopConfig.seed = 0

    def stream(prompts, row_ids, groups, on_row):
        for k, (p, prompt) in enumerate(zip(row_ids, prompts)):
            on_row(k, _canned(desc, i, p, prompt))

    return stream


def _canned(desc, i, p, prompt):
    if desc == "synthesize":
        items = [TOPICS[(3 * i + p) % len(TOPICS)], "Say hi", "Draw a picture of a lighthouse in fog."]
        items.append("Rewrite this sentence in a more formal tone.")  # the same every prompt: ROUGE
        if i == 0 and p == 0:
            items.append(_LEAK)
        text = "".join(
            f" {t}\n{n}. Input:\n<noinput>\n###\n{n + 1}. Instruction:" for n, t in enumerate(items, 6)
        )
        return {"text": text + " Tell me about", "finish_reason": "length", "num_tokens": 9}
    cut = "haiku" in prompt  # a truncated answer: the response filter drops it
    return {
        "text": f"A direct answer, number {p}, in plain words with one concrete example.",
        "finish_reason": "length" if cut else "stop",
        "num_tokens": 12,
    }


def _fake_rate_rows(gen, prompts, mode, settings, row_ids, chat, desc):
    out = []
    for n in row_ids:
        probs = [0.0] * 10
        probs[3 + (n * 5) % 7] = 1.0  # scores 4..10, varied by row
        out.append({"score_probs": probs})
    return out


def _skip_training(self, i, it, model_dir):
    io_utils.write_json(it.train_skipped, {"reason": "test: training is not exercised here"})


_LEAK = ""


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """Two finished iterations (the loop's stages, canned samples) and an unfinished third."""
    global _LEAK
    _LEAK = _leaked_prompt()
    root = tmp_path_factory.mktemp("export")
    hf.import_hf(make_hf_model(str(root / "hf"), "llama", max_position_embeddings=4096), str(root / "base"))
    lc = runner.LoopConfig(
        base_model=str(root / "base"),
        iterations=2,
        synthesis_prompts=3,
        chunk_size=2,
        score_threshold=0,
        keep_top_fraction=0.5,
        stop_when_empty=False,
    )
    run = root / "run"
    RunDir(run).open("LoopConfig.base_model = 'tiny/base'\nLoopConfig.iterations = 2\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(runner, "_completions", _fake_completions)
        mp.setattr(rating, "rate_rows", _fake_rate_rows)
        mp.setattr(runner.Loop, "train", _skip_training)
        loop = runner.Loop(lc, str(run), mesh=sharding.make_mesh(devices=jax.devices()[:1]))
        loop.run_all()
        loop.synthesize(2, loop.run.iteration(2), loop.model_for(2))  # killed after synthesis
    return run


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "data"
    return out, export_data.export_data(run_dir, out)


def _rows(path):
    return io_utils.read_jsonl(path)


@pytest.fixture
def load(tmp_path_factory):
    """datasets.load_dataset with a cache of this test's own, never the user's."""
    cache = tmp_path_factory.mktemp("hf_cache")
    return lambda *a, cache_dir=None, **k: datasets.load_dataset(*a, cache_dir=cache_dir or str(cache), **k)


def test_the_fixture_run_drops_at_every_stage(run_dir):
    dropped = _rows(run_dir / "iter_0" / "dropped.jsonl") + _rows(run_dir / "iter_1" / "dropped.jsonl")
    reasons = {(d["stage"], d["reason"]) for d in dropped}
    assert {
        ("synthesize", "too_short"),
        ("synthesize", "blacklisted"),
        ("synthesize", "rouge_duplicate"),
        ("synthesize", "truncated"),
        ("respond", "truncated"),
        ("assess", "below_top_fraction"),
        ("filter", "contaminated"),
    } <= reasons, reasons
    assert _rows(run_dir / "iter_0" / "kept.jsonl") and _rows(run_dir / "iter_1" / "kept.jsonl")


def test_round_trip_through_load_dataset(run_dir, exported, load):
    out, result = exported
    assert result.iterations == (0, 1) and len(result.skipped) == 1
    for kind, source in (("kept", "kept"), ("dropped", "dropped"), ("scored", "assessments")):
        ds = load(str(out), kind)
        assert set(ds) == {"iteration_0", "iteration_1"}
        for i in (0, 1):
            rows = _rows(run_dir / f"iter_{i}" / f"{source}.jsonl")
            got = ds[f"iteration_{i}"]
            assert len(got) == len(rows) > 0
            key = ("id", "instruction", "input", "response") + (
                ("stage", "reason") if kind != "scored" else ()
            )
            assert {tuple(r.get(k) for k in key) for r in got} == {tuple(r.get(k) for k in key) for r in rows}
            assert set(got["iteration"]) == {i}
            if kind != "dropped":
                by_id = {r["id"]: r for r in rows}
                for r in got:
                    assert r["quality_score"] == by_id[r["id"]]["quality_score"]
                    assert r["following_probs"] == by_id[r["id"]]["following_probs"]
        # The same files, read as a plain Parquet folder: one train split of every iteration.
        flat = load("parquet", data_dir=str(out / kind))["train"]
        assert len(flat) == sum(len(ds[s]) for s in ds)
    scored = load(str(out), "scored")["iteration_0"]
    kept_ids = {r["id"] for r in _rows(run_dir / "iter_0" / "kept.jsonl")}
    assert {r["id"] for r in scored if r["kept"]} == kept_ids
    assert all((r["reason"] is None) == r["kept"] for r in scored)
    contaminated = [r for r in scored if r["reason"] == "contaminated"]
    assert contaminated and contaminated[0]["contaminated_by"].startswith("ifeval:")
    dropped = load(str(out), "dropped")["iteration_0"]
    assert dropped.features["quality_probs"].feature.dtype == "float64"
    synth = [r for r in dropped if r["stage"] == "synthesize"]
    assert synth and all(r["response"] is None and r["quality_score"] is None for r in synth)
    assert {r["model"] for r in dropped} == {str(run_dir.parent / "base")}


def test_card_yaml_parses_and_its_counts_match(run_dir, exported):
    out, _ = exported
    text = (out / "README.md").read_text()
    front = yaml.safe_load(re.match(r"---\n(.*?)\n---\n", text, re.S).group(1))
    assert front["license"] == "other" and "TODO: set the license" in text
    assert "License: not set" in text
    assert {"synthetic", "self-alignment", "i-sheep"} <= set(front["tags"])
    assert [c["config_name"] for c in front["configs"]] == ["kept", "dropped", "scored"]
    for info in front["dataset_info"]:
        for split in info["splits"]:
            i = int(split["name"].split("_")[1])
            source = {"kept": "kept", "dropped": "dropped", "scored": "assessments"}[info["config_name"]]
            assert split["num_examples"] == len(_rows(run_dir / f"iter_{i}" / f"{source}.jsonl"))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["config_sha256"] in text and "`tiny/base`" in text
    assert "iteration 2 is left out" in text
    for i in (0, 1):  # scored, kept, dropped, trained (the fixture skips training)
        n = [len(_rows(run_dir / f"iter_{i}" / f"{f}.jsonl")) for f in ("assessments", "kept", "dropped")]
        assert f"| {n[0]} | {n[1]} | {n[2]} | skipped |" in text
    # Every field the loop writes has its column (a new field would be listed as not exported).
    assert "not in the columns above" not in text
    dropped = _rows(run_dir / "iter_0" / "dropped.jsonl")
    n = sum(d["reason"] == "rouge_duplicate" for d in dropped)
    m = sum(d["reason"] == "rouge_duplicate" for d in _rows(run_dir / "iter_1" / "dropped.jsonl"))
    assert f"| synthesize | rouge_duplicate | {n} | {m} | {n + m} |" in text
    marker = json.loads((out / export_data.MARKER).read_text())
    assert "README.md" in marker["files"]
    assert any(
        re.fullmatch(r"kept/iteration_0-00000-of-00001-[0-9a-f]{16}\.parquet", f) for f in marker["files"]
    )


def _scored(n, instruction, score, input_text="", **extra):
    return {
        "id": f"0-0-{n}",
        "iteration": 0,
        "model": "m",
        "instruction": instruction,
        "input": input_text,
        "response": f"answer {n}",
        "quality_score": score,
        "following_score": score,
        **extra,
    }


def test_preference_pairs_group_by_prompt():
    rows = [
        _scored(0, "Name a fruit.", 5.0),
        _scored(1, "Name a fruit.", 9.0),
        _scored(2, "Name a fruit.", 7.0),
        _scored(3, "Name a fruit.", 3.0, input_text="red"),  # another prompt: alone
        _scored(4, "Name a tree.", 6.0),
        _scored(5, "Name a tree.", 6.0),  # all tied: no pair
        _scored(6, "Name a river.", 2.0),
        _scored(7, "Name a river.", 9.5, reason="contaminated"),  # never a preference
        _scored(8, "Name a river.", None),  # unscored
        _scored(9, "Name a river.", 4.0),
    ]
    pairs = export_data.preference_pairs(rows)
    assert [(p["prompt"], p["chosen_id"], p["rejected_id"]) for p in pairs] == [
        ("Name a fruit.", "0-0-1", "0-0-0"),
        ("Name a river.", "0-0-9", "0-0-6"),
    ]
    assert pairs[0]["score_chosen"] == 9.0 and pairs[0]["score_rejected"] == 5.0
    assert pairs[0]["chosen"] == "answer 1" and pairs[0]["rejected"] == "answer 0"
    # The order of the rows changes only the order of the pairs.
    assert export_data.preference_pairs(list(reversed(rows))) == pairs[::-1]


def test_preferences_from_a_run_with_several_responses(run_dir, tmp_path, load):
    """The loop answers each instruction once: add a second answer to one of iteration 0's."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    path = run / "iter_0" / "assessments.jsonl"
    rows = _rows(path)
    first = next(r for r in rows if "sky" in r["instruction"])
    worse = {**first, "id": "extra", "response": "No.", "quality_score": 1.0, "following_score": 1.0}
    io_utils.write_jsonl(path, rows + [worse])
    out = tmp_path / "data"
    result = export_data.export_data(run, out, preferences=True)
    assert result.rows["preferences"] == 1
    ds = load(str(out), "preferences")
    assert set(ds) == {"iteration_0"}
    (pair,) = ds["iteration_0"]
    assert pair["chosen_id"] == first["id"] and pair["rejected_id"] == "extra" and pair["rejected"] == "No."
    assert pair["prompt"] == first["instruction"] and pair["score_rejected"] == 1.0
    text = (out / "README.md").read_text()
    assert "`preferences` has no split `iteration_1`" in text
    # Without the extra answer there is none, and the card says why.
    none = export_data.export_data(run_dir, tmp_path / "none", preferences=True)
    assert none.rows["preferences"] == 0
    assert "found no instruction with two scored responses" in (tmp_path / "none" / "README.md").read_text()
    assert not (tmp_path / "none" / "preferences").exists()


def test_a_reexport_of_other_rows_is_not_read_from_the_datasets_cache(run_dir, tmp_path, load):
    """datasets keys its cache of a local folder by the folder's name and the card only."""
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    kept = _rows(run / "iter_0" / "kept.jsonl")
    io_utils.write_jsonl(
        run / "iter_0" / "kept.jsonl", [{**r, "response": r["response"].upper()} for r in kept]
    )
    cache = str(tmp_path / "cache")
    for source, name in ((run_dir, "a"), (run, "b")):
        export_data.export_data(source, tmp_path / name / "data")
        got = load(str(tmp_path / name / "data"), "kept", cache_dir=cache)["iteration_0"]["response"]
        assert sorted(got) == sorted(r["response"] for r in _rows(source / "iter_0" / "kept.jsonl"))


def test_a_foreign_folder_is_refused_and_left_untouched(run_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    with pytest.raises(export_data.ExportError, match=r"mine: not empty \(notes.txt\)"):
        export_data.export_data(run_dir, out)
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "my notes"
    assert sorted(os.listdir(tmp_path)) == ["mine"]  # no temporary sibling left behind
    # An earlier export is replaced, unless a file was added to it.
    ours = tmp_path / "ours"
    export_data.export_data(run_dir, ours)
    before = sorted(os.listdir(ours))
    export_data.export_data(run_dir, ours)
    assert sorted(os.listdir(ours)) == before and sorted(os.listdir(tmp_path)) == ["mine", "ours"]
    (ours / "kept" / "extra.parquet").write_text("user data")  # the user's file inside our export
    with pytest.raises(export_data.ExportError, match=r"also holds files it did not write \(kept/extra"):
        export_data.export_data(run_dir, ours)
    assert (ours / "kept" / "extra.parquet").read_text() == "user data"
    # An empty folder is fine; a killed export's temporary sibling is cleaned up.
    (tmp_path / "empty").mkdir()
    (tmp_path / ".empty.isheep-export-tmp-0123abcd").mkdir()
    export_data.export_data(run_dir, tmp_path / "empty")
    assert (tmp_path / "empty" / "README.md").exists()
    assert not (tmp_path / ".empty.isheep-export-tmp-0123abcd").exists()


def test_a_kill_before_the_rename_leaves_no_out(run_dir, tmp_path, monkeypatch):
    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(export_data, "_card", killed)
    with pytest.raises(KeyboardInterrupt):
        export_data.export_data(run_dir, tmp_path / "data")
    assert os.listdir(tmp_path) == []


def test_not_a_run_directory(tmp_path):
    with pytest.raises(RunError, match="not a run directory"):
        export_data.export_data(tmp_path, tmp_path / "out")
    RunDir(tmp_path / "fresh").open("x")
    with pytest.raises(RunError, match="no iteration has finished its filter stage"):
        export_data.export_data(tmp_path / "fresh", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_cli(run_dir, tmp_path, capsys, load):
    out = tmp_path / "data"
    assert cli.main(["export-data", str(run_dir), str(out), "--preferences"]) == 0
    printed = capsys.readouterr().out
    assert "iterations 0, 1" in printed and str(out) in printed and "no preference pair" in printed
    assert load(str(out), "kept")["iteration_1"].num_rows > 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x").write_text("x")
    assert cli.main(["export-data", str(run_dir), str(tmp_path / "foreign")]) == 2
    assert "foreign: not empty (x)" in capsys.readouterr().err
    assert cli.main(["export-data", str(tmp_path / "nope"), str(tmp_path / "o")]) == 2
    assert "not a run directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["export-data", "--help"])
    assert "preferences" in capsys.readouterr().out
