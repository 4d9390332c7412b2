"""Comparing two eval folders on the same prompts: the paired differences and their verdicts."""

import pytest

from isheep_jax.core import io_utils
from isheep_jax.evals import compare, stats


def _eval_dir(path, ifeval_rows, per_pair):
    path.mkdir()
    io_utils.write_jsonl(path / "ifeval_results.jsonl", ifeval_rows)
    io_utils.write_json(path / "eval.json", {"heldout_loss": {"per_pair": per_pair}})
    return path


def test_compare_evals_pairs_prompts_and_pairs(tmp_path):
    base_rows = [{"key": k, "strict": [k % 2 == 0], "loose": [True]} for k in range(40)]
    new_rows = [{"key": k, "strict": [True], "loose": [True]} for k in reversed(range(40))]
    base_pairs = [{"loss_sum": 20.0, "tokens": 10} for _ in range(30)]
    new_pairs = [{"loss_sum": 10.0 + (n % 3), "tokens": 10} for n in range(30)]
    base = _eval_dir(tmp_path / "base", base_rows, base_pairs)
    new = _eval_dir(tmp_path / "new", new_rows, new_pairs)
    got = compare.compare_evals(base, new)
    assert list(got) == [m for m, _ in compare.METRICS]
    strict = got["ifeval_prompt_strict"]
    assert strict["diff"] == pytest.approx(0.5) and strict["discordant"] == [0, 20]
    assert strict["p_value"] == pytest.approx(stats.mcnemar_exact(0, 20)) and strict["verdict"] == "better"
    loose = got["ifeval_prompt_loose"]
    assert loose["diff"] == 0 and loose["verdict"] == "no detectable change"
    loss = got["heldout_loss"]
    assert loss["base"] == 2.0 and loss["new"] == pytest.approx(1.1) and loss["verdict"] == "better"
    lines = compare.format_comparisons(got)
    assert lines[0].startswith("  ifeval_prompt_strict: better, +50.0 [")
    assert "McNemar p<0.001 (b=0, c=20)" in lines[0]


def test_a_metric_measured_on_other_items_is_left_out(tmp_path):
    base = _eval_dir(tmp_path / "base", [{"key": 1, "strict": [True], "loose": [True]}], [])
    new = _eval_dir(tmp_path / "new", [{"key": 2, "strict": [True], "loose": [True]}], None)
    assert compare.compare_evals(base, new) == {}
