"""`isheep train`: fine-tuning a checkpoint on a user's JSONL (pair, Alpaca and chat rows)."""

import json
import re

import jax
import numpy as np
import pytest
from helpers import make_hf_model

from isheep_jax import cli
from isheep_jax.core import hooks
from isheep_jax.model import checkpoint
from isheep_jax.model.convert import hf
from isheep_jax.model.tokenizer import Tokenizer
from isheep_jax.prompts.templates import user_text
from isheep_jax.sampling.generator import Generator, SamplingSettings
from isheep_jax.training.metrics import read_metrics

# The three row formats `isheep train` reads, with what the model should learn to answer.
ROWS = [
    {"instruction": "name a colour of the sky", "input": "", "output": "blue"},
    {"instruction": "sort these numbers", "input": "3, 1, 2", "output": "1, 2, 3"},
    {"messages": [{"role": "user", "content": "say hello"}, {"role": "assistant", "content": "hello there"}]},
    {
        "messages": [
            {"role": "system", "content": "answer in one word"},
            {"role": "user", "content": "what is the capital of france?"},
            {"role": "assistant", "content": "paris"},
        ]
    },
]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("finetune-model")
    hf_dir = make_hf_model(
        str(root / "hf"),
        "llama",
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    hf.import_hf(hf_dir, str(root / "ours"))
    return str(root / "ours")


def _data(tmp_path, rows=ROWS) -> str:
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _train(model, data, out, *bindings) -> int:
    return cli.main(
        ["train", "--init", model, "--data", data, "--out", str(out)]
        + [
            "--gin.TrainConfig.batch_size=4",
            "--gin.TrainConfig.max_prompt_len=64",
            "--gin.TrainConfig.max_response_len=16",
            "--gin.OptimizerConfig.learning_rate=3e-3",
            "--gin.OptimizerConfig.warmup_steps=5",
            "--gin.OptimizerConfig.schedule='constant'",
            *bindings,
        ]
    )


def test_isheep_train_overfits_a_handful_of_pairs(tiny_model, tmp_path, capsys):
    out = tmp_path / "work"
    assert _train(tiny_model, _data(tmp_path), out, "--gin.TrainConfig.num_epochs=60") == 0
    assert "trained 60 step(s)" in capsys.readouterr().out
    rows = read_metrics(out / "metrics.jsonl")
    assert rows[0]["loss"] > 3.0 and rows[-1]["loss"] < 0.05, (rows[0]["loss"], rows[-1]["loss"])
    info = json.loads((out / "data.json").read_text())
    assert info["pairs"] == 4 and info["pairs_too_long"] == 0 and info["prompt_style"] == "chat"
    assert not (out / "checkpoints").exists()  # the export is complete: trainer state deleted
    # The model answers each prompt, rendered as it was trained (system message included).
    cfg, params = checkpoint.load_model(out / "model")
    tok = Tokenizer(checkpoint.tokenizer_dir(out / "model"))
    prompts = [
        tok.render_prompt(user_text("name a colour of the sky"), "chat"),
        tok.render_prompt(user_text("sort these numbers", "3, 1, 2"), "chat"),
        tok.render_prompt("say hello", "chat"),
        tok.render_prompt("what is the capital of france?", "chat", system="answer in one word"),
    ]
    got = Generator(cfg, params, tok).generate(
        prompts,
        SamplingSettings(max_new_tokens=16, temperature=0.0),
        add_special_tokens=False,
        progress=False,
    )
    assert [o.text for o in got] == ["blue", "1, 2, 3", "hello there", "paris"]


class _KillAt(hooks.Hooks):
    """Raises before step `at` (1-based), as a killed process would stop there."""

    def __init__(self, at: int):
        self.at, self.steps = at, 0

    def before_train_step(self):
        self.steps += 1
        if self.steps == self.at:
            raise KeyboardInterrupt


def test_isheep_train_resumes_a_killed_run_to_the_same_model(tiny_model, tmp_path):
    data = _data(tmp_path)
    run = ("--gin.TrainConfig.num_epochs=20", "--gin.TrainConfig.save_every_steps=4")
    assert _train(tiny_model, data, tmp_path / "straight", *run) == 0
    with hooks.installed(_KillAt(7)), pytest.raises(KeyboardInterrupt):
        _train(tiny_model, data, tmp_path / "killed", *run)
    assert not checkpoint.is_complete(tmp_path / "killed" / "model")
    assert _train(tiny_model, data, tmp_path / "killed", *run) == 0  # the same command resumes
    assert [r["step"] for r in read_metrics(tmp_path / "killed" / "metrics.jsonl")] == list(range(1, 21))
    _, a = checkpoint.load_model(tmp_path / "straight" / "model")
    _, b = checkpoint.load_model(tmp_path / "killed" / "model")
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


@pytest.mark.parametrize(
    "rows, message",
    [
        (
            [{"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}] * 2}],
            r"data.jsonl:1: 'messages' must be one user turn then one assistant turn .*multi-turn",
        ),
        ([{"messages": "hi"}], r"data.jsonl:1: 'messages' must be a list"),
        ([{"instruction": "x", "output": ""}], r"data.jsonl:1: missing or empty string field 'response'"),
    ],
)
def test_isheep_train_names_the_bad_row(tiny_model, tmp_path, capsys, rows, message):
    assert _train(tiny_model, _data(tmp_path, rows), tmp_path / "work", "--gin.TrainConfig.max_steps=1") == 2
    assert re.search(message, capsys.readouterr().err)
    assert not (tmp_path / "work").exists()


def test_isheep_train_refuses_a_folder_with_the_users_files(tiny_model, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert _train(tiny_model, _data(tmp_path), out, "--gin.TrainConfig.max_steps=1") == 2
    assert "notes.txt, which `isheep train` did not write" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["notes.txt"] and (out / "notes.txt").read_text() == "keep me"
    # System messages cannot be rendered as raw prompts: refused before training.
    raw = ["train", "--init", tiny_model, "--data", _data(tmp_path), "--out", str(tmp_path / "raw")]
    assert cli.main([*raw, "--prompt_style", "raw"]) == 2
    assert "system messages, which raw prompts cannot carry" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists()
