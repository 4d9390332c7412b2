"""The demo pass (synthesize -> respond -> assess -> filter) end to end on a tiny model."""

import dataclasses
import json

from conftest import make_hf_model
from isheep_jax import checkpoint
from isheep_jax.convert import hf
from isheep_jax.generate import Generator, SamplingSettings
from isheep_jax.preview import PreviewSettings, run_preview
from isheep_jax.seed_pool import load_seed_pool
from isheep_jax.tokenizer import Tokenizer


def _rows(path):
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()]


def test_preview_artifacts_are_consistent(tmp_path):
    hf_dir = make_hf_model(str(tmp_path / "hf"), "qwen2", max_position_embeddings=4096)
    hf.import_hf(hf_dir, str(tmp_path / "ck"))
    cfg, params = checkpoint.load_model(str(tmp_path / "ck"))
    gen = Generator(cfg, params, Tokenizer(hf_dir))
    small = SamplingSettings(max_new_tokens=16, temperature=1.0, top_p=0.95, batch_size=4)
    settings = PreviewSettings(num_prompts=2, synth=small, respond=small,
                               rate=dataclasses.replace(small, max_new_tokens=4))
    summary = run_preview(gen, load_seed_pool(), str(tmp_path / "run"), settings)
    run = tmp_path / "run"
    candidates, pairs = _rows(run / "instructions.jsonl"), _rows(run / "responses.jsonl")
    kept, dropped = _rows(run / "kept.jsonl"), _rows(run / "dropped.jsonl")
    assert all(d["reason"] and d["stage"] in ("synthesize", "respond", "assess") for d in dropped)
    n_synth = sum(d["stage"] == "synthesize" for d in dropped)
    assert summary["instructions_parsed"] == len(candidates) + n_synth
    assert len(candidates) == len(pairs) + sum(d["stage"] == "respond" for d in dropped)
    assert len(pairs) == len(kept) + sum(d["stage"] == "assess" for d in dropped)
    assert summary["pairs_kept"] == len(kept)
    assert sum(summary["dropped_by_reason"].values()) == len(dropped)
    assert json.loads((run / "summary.json").read_text()) == summary
