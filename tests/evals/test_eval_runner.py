"""Evaluation driver: held-out loss against transformers, an end-to-end eval of tiny models
(IFEval-style, held-out loss, judged win-rate), determinism and resume, and the CLI."""

import json
import math
import os

import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax import cli
from isheep_jax.core import io_utils
from isheep_jax.evals import calibration, runner
from isheep_jax.evals.runner import EvalConfig, ModelSpec
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.prompts.templates import user_text
from isheep_jax.sampling.generator import SamplingSettings

HELDOUT = [
    {"id": "h1", "instruction": "sort these numbers", "input": "3, 1, 2", "output": "1, 2, 3"},
    {
        "id": "h2",
        "instruction": "write a short poem about the sea",
        "input": "",
        "output": "the sea is blue and wide",
    },
    {
        "id": "h3",
        "instruction": "what is the capital of france?",
        "input": "",
        "output": "paris is the capital.",
    },
]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny random Llama models (the evaluated one and a reference), HF and ours."""
    root = tmp_path_factory.mktemp("eval-models")
    out = {}
    for name, seed in (("model", 0), ("reference", 1)):
        hf_dir = make_hf_model(str(root / f"{name}_hf"), "llama", seed=seed, max_position_embeddings=4096)
        hf.import_hf(hf_dir, str(root / name))
        out[name], out[f"{name}_hf"] = str(root / name), hf_dir
    return out


@pytest.fixture(scope="module")
def heldout_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("heldout") / "pairs.jsonl"
    io_utils.write_jsonl(path, HELDOUT)
    return str(path)


def _config(heldout_file, **kw):
    small = SamplingSettings(max_new_tokens=12, temperature=0.0, batch_size=4)
    kw.setdefault("calibration_limit", 3)
    return EvalConfig(
        heldout_file=heldout_file,
        ifeval_limit=6,
        sampling=small,
        judge_sampling=SamplingSettings(max_new_tokens=6, temperature=0.0, batch_size=8),
        chunk_size=4,
        **kw,
    )


def test_eval_config_rejects_bad_values():
    with pytest.raises(ValueError, match="unknown \\['mmlu'\\]"):
        EvalConfig(suites=("ifeval", "mmlu"))
    with pytest.raises(ValueError, match="ifeval_limit must be >= 0"):
        EvalConfig(ifeval_limit=-1)


def test_heldout_loss_equals_transformers(models, heldout_file):
    """Response-token loss of the chat-prompted pairs, ours (packed, jitted) vs torch."""
    import torch
    from transformers import AutoModelForCausalLM

    res = runner.heldout_loss(
        ModelSpec(models["model"], "chat"), _config(heldout_file, suites=("heldout_loss",))
    )
    tok = Tokenizer(models["model_hf"])
    torch_model = AutoModelForCausalLM.from_pretrained(models["model_hf"]).eval()
    nll, count, per_example = 0.0, 0, []
    for row in HELDOUT:
        prompt = tok.encode(tok.render_prompt(user_text(row["instruction"], row["input"]), "chat"), False)
        target = tok.encode(row["output"], False) + [tok.eos_id]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logp = torch.log_softmax(torch.asarray(torch_model(ids).logits[0], dtype=torch.float64), -1)
        token_nll = [-float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(target)]
        nll, count = nll + sum(token_nll), count + len(target)
        per_example.append(sum(token_nll) / len(target))
    assert res["pairs"] == 3 and res["pairs_too_long"] == 0 and res["target_tokens"] == count
    np.testing.assert_allclose(res["loss"], nll / count, rtol=1e-4)
    np.testing.assert_allclose(res["mean_example_loss"], np.mean(per_example), rtol=1e-4)


def test_end_to_end_eval_is_deterministic_and_resumes(models, heldout_file, tmp_path):
    ec = _config(heldout_file)
    spec, ref = ModelSpec(models["model"], "chat"), ModelSpec(models["reference"], "chat")
    res = runner.evaluate(spec, tmp_path / "a", ec, reference=(ref, tmp_path / "ref"))
    ife = res["ifeval"]
    assert ife["prompt_level"]["total"] == 6 and ife["instruction_level"]["total"] >= 6
    assert 0 <= ife["prompt_level"]["strict_accuracy"] <= ife["prompt_level"]["loose_accuracy"] <= 1
    assert len(io_utils.read_jsonl(tmp_path / "a" / "ifeval_responses.jsonl")) == 6
    assert math.isfinite(res["heldout_loss"]["loss"]) and res["heldout_loss"]["pairs"] == 3
    wr = res["winrate"]
    assert wr["wins"] + wr["ties"] + wr["losses"] + wr["invalid"] == len(HELDOUT)
    assert (
        wr["reference"] == models["reference"] and wr["judge"] == models["reference"]
    )  # judge defaults to it
    judged = io_utils.read_jsonl(tmp_path / "a" / "winrate_judgments.jsonl")
    assert [j["id"] for j in judged] == ["h1", "h2", "h3"] and all(len(j["replies"]) == 2 for j in judged)
    # Verdicts from the judge's distribution over A / B / tie: never unreadable, and the
    # most likely label of each order is the verdict.
    assert wr["verdict_mode"] == "logits" and wr["invalid"] == 0
    for j in judged:
        for verdict, probs in zip((j["model_first"], j["model_second"]), j["label_probs"]):
            assert verdict == ("A", "B", "tie")[int(np.argmax(probs))] and len(probs) == 3
    bias = wr["position_bias"]
    assert bias["A"] + bias["B"] + bias["tie"] == 2 * len(HELDOUT) and bias["unreadable"] == 0
    # Per-prompt IFEval results and per-pair losses, for paired comparisons.
    rows = io_utils.read_jsonl(tmp_path / "a" / "ifeval_results.jsonl")
    assert len(rows) == 6 and all(len(r["strict"]) == len(r["loose"]) >= 1 for r in rows)
    per_pair = res["heldout_loss"]["per_pair"]
    assert len(per_pair) == 3 and sum(p["tokens"] for p in per_pair) == res["heldout_loss"]["target_tokens"]
    # The model as a rating judge on the first 3 calibration items.
    calib = res["judge_calibration"]
    assert calib["pairs"] == len(calibration.load_pairs(None, 3))
    for kind in ("quality", "following", "mean"):
        r = calib["modes"]["logits"][kind]
        assert r["pairs"] == calib["pairs"] and 0 <= r["auc"] <= 1 and 0 <= r["pairwise_accuracy"] <= 1
    assert len(io_utils.read_jsonl(tmp_path / "ref" / "winrate_answers.jsonl")) == len(HELDOUT)
    # Same seed, another directory (reference answers reused): the same numbers.
    again = runner.evaluate(spec, tmp_path / "b", ec, reference=(ref, tmp_path / "ref"))
    assert again == res
    # Killed mid-way: the results file and a chunk are missing; the rerun recomputes just those.
    (tmp_path / "b" / "eval.json").unlink()
    (tmp_path / "b" / "chunks" / "ifeval" / "00001.jsonl").unlink()
    assert runner.evaluate(spec, tmp_path / "b", ec, reference=(ref, tmp_path / "ref")) == res


def test_text_verdicts_and_text_ratings_are_parsed(models, heldout_file, tmp_path):
    """The paper-style modes: the judge's verdicts and the calibration ratings are sampled and
    parsed; unreadable ones are counted, and the numbers add up."""
    ec = _config(
        heldout_file,
        suites=("winrate", "judge_calibration"),
        verdict_mode="text",
        rating_modes=("logits", "text"),
        calibration_limit=2,
    )
    spec, ref = ModelSpec(models["model"], "chat"), ModelSpec(models["reference"], "chat")
    res = runner.evaluate(spec, tmp_path / "t", ec, reference=(ref, tmp_path / "ref"))
    wr = res["winrate"]
    assert wr["verdict_mode"] == "text" and wr["wins"] + wr["ties"] + wr["losses"] + wr["invalid"] == 3
    judged = io_utils.read_jsonl(tmp_path / "t" / "winrate_judgments.jsonl")
    assert all("label_probs" not in j and all(r.startswith("[[") for r in j["replies"]) for j in judged)
    text = res["judge_calibration"]["modes"]["text"]
    answers = text["answers"]
    for kind in ("quality", "following"):
        # Every answer is either in the histogram or counted as unparseable.
        assert text[kind]["unparseable"] + sum(text[kind]["histogram"].values()) == answers
    assert res["judge_calibration"]["modes"]["logits"]["answers"] == answers


def test_winrate_against_itself_is_skipped_and_answers_kept(models, heldout_file, tmp_path):
    ec = _config(heldout_file, suites=("winrate",), winrate_limit=2)
    spec = ModelSpec(models["model"], "chat")
    res = runner.evaluate(spec, tmp_path / "e", ec, reference=(spec, tmp_path / "e"))
    assert "skipped" in res["winrate"] and "ifeval" not in res and "heldout_loss" not in res
    assert [r["id"] for r in io_utils.read_jsonl(tmp_path / "e" / "winrate_answers.jsonl")] == ["h1", "h2"]
    # Answers on disk for other instructions are an error, not silently compared.
    with pytest.raises(io_utils.DataError, match="answers for other instructions"):
        runner.winrate_answers(None, spec, io_utils.as_path(tmp_path / "e"), _config(heldout_file))


def test_bad_winrate_file_names_the_line(tmp_path):
    path = tmp_path / "w.jsonl"
    path.write_text('{"instruction": "fine"}\n{"input": "no instruction"}\n')
    with pytest.raises(
        io_utils.DataError, match="w.jsonl:2: expected an object with a non-empty 'instruction'"
    ):
        runner.winrate_items(EvalConfig(winrate_file=str(path)))


def test_headline_and_cli(models, heldout_file, tmp_path, capsys):
    from isheep_jax import cli

    out = tmp_path / "cli"
    assert (
        cli.main(
            [
                "eval",
                "--checkpoint",
                models["model"],
                "--out",
                str(out),
                "--suite",
                "heldout_loss",
                f"--gin.EvalConfig.heldout_file='{heldout_file}'",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    res = json.loads((out / "eval.json").read_text())
    h = runner.headline(res)
    assert h["heldout_loss"] == res["heldout_loss"]["loss"] and h["ifeval_prompt_strict"] is None
    assert f"held-out loss {h['heldout_loss']:.4f}" in printed
    assert cli.main(["eval", "--checkpoint", models["model"], "--out", str(out), "--suite", "bleu"]) == 2
    assert "unknown ['bleu']" in capsys.readouterr().err
    assert os.path.exists(out / "eval.json")  # the earlier results are untouched


def test_an_eval_folder_never_serves_another_checkpoints_results(models, heldout_file, tmp_path, capsys):
    ec = _config(heldout_file, suites=("heldout_loss",))
    a, b = ModelSpec(models["model"], "chat"), ModelSpec(models["reference"], "chat")
    runner.evaluate(a, tmp_path / "out", ec)
    kept = (tmp_path / "out" / "eval.json").read_text()
    with pytest.raises(
        runner.EvalDirError, match=r"holds the evaluation of another checkpoint.*model: '.*model'"
    ):
        runner.evaluate(b, tmp_path / "out", ec)
    with pytest.raises(runner.EvalDirError, match="config_sha256"):
        runner.evaluate(
            a, tmp_path / "out", _config(heldout_file, suites=("heldout_loss",), max_prompt_len=64)
        )
    assert (tmp_path / "out" / "eval.json").read_text() == kept
    assert runner.evaluate(a, tmp_path / "out", ec) == json.loads(kept)  # its own results are still served
    # The CLI says so in one line, and a folder of someone else's files is refused too.
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    for out in ("out", "mine"):
        argv = [
            "eval",
            "--checkpoint",
            models["reference"],
            "--out",
            str(tmp_path / out),
            "--suite",
            "heldout_loss",
        ]
        assert cli.main(argv) == 2
        assert "isheep eval: error:" in capsys.readouterr().err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"
