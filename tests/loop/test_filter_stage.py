"""The loop's filter stage: contamination first, then the selection; every drop keeps its reason."""

import pytest
from helpers import make_hf_model

from isheep_jax.core import io_utils
from isheep_jax.evals import ifeval
from isheep_jax.evals.runner import shipped_heldout_path
from isheep_jax.loop.run_dir import RunDir
from isheep_jax.loop.runner import Loop, LoopConfig
from isheep_jax.model.convert import hf


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("filter")
    hf.import_hf(make_hf_model(str(root / "hf"), "llama"), str(root / "base"))
    return str(root / "base")


def _pair(n, instruction, q, f):
    probs = [0.1] * 10  # logits-mode rows: the stored expected score is what selection reads
    return {
        "id": f"0-0-{n}",
        "instruction": instruction,
        "input": "",
        "response": "An answer.",
        "quality_score": q,
        "quality_reason": None,
        "quality_probs": probs,
        "following_score": f,
        "following_reason": None,
        "following_probs": probs,
    }


def _filtered(lc, run_dir, rows):
    """Runs the filter stage of iteration 0 on `rows` as its assessments; returns its paths."""
    RunDir(run_dir).open("test")
    loop = Loop(lc, str(run_dir))
    it = loop.run.iteration(0)
    it.root.mkdir(parents=True)
    io_utils.write_jsonl(it.assessments, rows)
    for stage in ("synthesize", "respond"):
        io_utils.write_jsonl(it.dropped_stage(stage), [])
    loop.filter(0, it)
    return it


def test_a_planted_evaluation_prompt_is_dropped_as_contaminated(base, tmp_path):
    ifeval_prompt = ifeval.load_prompts(ifeval.shipped_prompts_path(), strict=False).prompts[3].prompt
    heldout = io_utils.read_jsonl(shipped_heldout_path())[7]
    rows = [
        _pair(0, "Name a fruit that is yellow when ripe.", 7.0, 7.0),
        _pair(1, ifeval_prompt, 9.9, 9.9),  # the best scores: it would be kept first
        _pair(2, heldout["instruction"] + " Please.", 6.0, 6.0),
        _pair(3, "List two rivers in Africa.", 5.0, 5.5),
        _pair(4, "Say hello in French.", 6.5, 6.5),
    ]
    if heldout["input"]:
        rows[2]["input"] = heldout["input"]
    it = _filtered(
        LoopConfig(base_model=base, score_threshold=0, keep_top_fraction=0.5), tmp_path / "run", rows
    )
    dropped = {d["id"]: d for d in io_utils.read_jsonl(it.dropped)}
    assert dropped["0-0-1"]["reason"] == "contaminated" and dropped["0-0-1"]["stage"] == "filter"
    assert dropped["0-0-1"]["contaminated_by"].startswith("ifeval:")
    assert dropped["0-0-2"]["reason"] == "contaminated"
    assert dropped["0-0-2"]["contaminated_by"].startswith(("heldout:", "winrate:"))
    # The 3 clean pairs: ceil(0.5 * 3) = 2 kept by mean score, the third dropped with its reason.
    assert [r["id"] for r in io_utils.read_jsonl(it.kept)] == ["0-0-0", "0-0-4"]
    assert dropped["0-0-3"]["reason"] == "below_top_fraction"
    # Without the guard the planted prompt is kept (it has the best scores).
    it2 = _filtered(
        LoopConfig(base_model=base, score_threshold=0, contamination_check=False), tmp_path / "run2", rows
    )
    assert "0-0-1" in {r["id"] for r in io_utils.read_jsonl(it2.kept)}


def test_loop_config_checks_the_selection():
    with pytest.raises(ValueError, match="top_fraction"):
        LoopConfig(base_model="x", keep_top_fraction=0)
    with pytest.raises(ValueError, match="assess_mode"):
        LoopConfig(base_model="x", assess_mode="vibes")
    with pytest.raises(ValueError, match="rank_by"):
        LoopConfig(base_model="x", rank_by="max")
