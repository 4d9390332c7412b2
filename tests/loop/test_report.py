"""The report's opening lines: verdicts against the base model and how well the judges judge."""

from isheep_jax.loop import report


def _comparison(metric, diff, low, high, p, verdict):
    return {
        "metric": metric,
        "base": 0.2,
        "new": 0.2 + diff,
        "diff": diff,
        "ci_low": low,
        "ci_high": high,
        "confidence": 0.95,
        "p_value": p,
        "test": "mcnemar",
        "n": 170,
        "discordant": [3, 9],
        "higher_is_better": True,
        "verdict": verdict,
    }


def test_verdict_lines_show_each_iterations_verdict_with_its_interval():
    summaries = [
        {
            "iteration": 0,
            "eval_vs_base": {"ifeval_prompt_strict": _comparison("x", 0.05, 0.01, 0.09, 0.02, "better")},
        },
        {"iteration": 1, "eval_vs_base": None},
        {
            "iteration": 2,
            "eval_vs_base": {
                "ifeval_prompt_strict": _comparison("x", -0.01, -0.05, None, None, "no detectable change")
            },
        },
    ]
    md = report.verdict_lines(summaries)
    assert md[2] == "| iteration | ifeval_prompt_strict |"
    assert md[4] == "| 0 | **better** +5.0 [+1.0, +9.0], p=0.02 |"
    assert md[5] == "| 2 | **no detectable change** -1.0 [-5.0, -], p=- |"  # NaN bounds are stored as None
    assert report.verdict_lines([{"iteration": 0}]) == []


def test_judge_lines_name_each_judge_and_mode():
    fig = {"auc": 0.61, "pairwise_accuracy": 0.7, "histogram": {"5": 2, "6": 9}}
    judge = {
        "base": {"logits": {"quality": fig, "following": {**fig, "auc": None}, "mean": fig}},
        "model": {"logits": {"quality": fig, "following": fig, "mean": fig}},
        "winrate_position_bias": {"first_preferred": 0.75, "A": 3, "B": 1, "tie": 0, "unreadable": 0},
    }
    base = report.judge_lines(judge, ("base",))
    assert base[0] == (
        "  judge AUC on the calibration pairs, base model (logits): quality 0.61 (pairwise 0.70), "
        "following - (pairwise 0.70), mean 0.61 (pairwise 0.70)"
    )
    assert base[1] == "    quality scores of the calibration answers: 5:2 6:9" and len(base) == 3
    model = report.judge_lines(judge, ("model",))
    assert "this iteration's model" in model[0]
    assert (
        model[-1] == "  win-rate judge prefers the first answer in 75 % of its A/B verdicts (A 3, B 1, tie 0)"
    )
    assert report.judge_lines(None) == []
