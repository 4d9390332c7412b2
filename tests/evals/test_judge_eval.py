"""Judge measurements on the calibration pairs: AUC, pairwise accuracy, histograms, position bias."""

import pytest

from isheep_jax.evals import judge_eval
from isheep_jax.evals.calibration import CalibrationPair


def _pairs():
    return [
        CalibrationPair("a:empty", "Ask a", "", "good a", "", "empty"),
        CalibrationPair("a:truncated", "Ask a", "", "good a", "go", "truncated"),
        CalibrationPair("b:empty", "Ask b", "", "good b", "", "empty"),
    ]


def test_distinct_answers_rate_each_answer_once():
    assert judge_eval.distinct_answers(_pairs()) == [
        ("Ask a", "", "good a"),
        ("Ask a", "", ""),
        ("Ask a", "", "go"),
        ("Ask b", "", "good b"),
        ("Ask b", "", ""),
    ]


def test_criterion_metrics_by_hand():
    scores = {
        ("Ask a", "", "good a"): 8.0,
        ("Ask a", "", ""): 3.0,
        ("Ask a", "", "go"): 8.0,
        ("Ask b", "", "good b"): 6.4,
        ("Ask b", "", ""): 7.0,
    }
    modes = {k: 7 for k in scores}
    m = judge_eval.criterion_metrics(_pairs(), scores, modes)
    # Good {8, 6.4} against bad {3, 8, 7}: 8 beats 3 and 7, ties 8 (1 + 1 + 0.5); 6.4 beats 3 only.
    assert m["auc"] == pytest.approx(round(3.5 / 6, 4))
    # Within pairs: 8 > 3 (1), 8 = 8 (0.5), 6.4 < 7 (0).
    assert m["pairwise_accuracy"] == 0.5
    assert m["by_degradation"] == {"empty": 0.5, "truncated": 0.5}
    assert m["histogram"] == {"3": 1, "6": 1, "7": 1, "8": 2}
    assert m["pairs"] == 3 and m["mode_auc"] == 0.5  # the most likely score never changes


def test_text_mode_answers_without_a_score_are_left_out():
    scores = {
        ("Ask a", "", "good a"): 9,
        ("Ask a", "", ""): None,
        ("Ask a", "", "go"): 2,
        ("Ask b", "", "good b"): None,
        ("Ask b", "", ""): 5,
    }
    m = judge_eval.criterion_metrics(_pairs(), scores)
    assert m["pairs"] == 1 and m["pairwise_accuracy"] == 1.0
    assert m["auc"] == 1.0  # good {9} against bad {2, 5}
    assert "mode_auc" not in m


def test_position_bias_counts_the_first_answer_preferred():
    bias = judge_eval.position_bias(["A", "A", "B", "tie", None, "A"])
    assert bias == {"first_preferred": 0.75, "A": 3, "B": 1, "tie": 1, "unreadable": 1}
    assert judge_eval.position_bias(["tie", None])["first_preferred"] is None


def test_summary_line():
    calib = {
        "modes": {
            "logits": {
                "quality": {"auc": 0.61},
                "following": {"auc": None},
                "mean": {"auc": 0.7},
            }
        }
    }
    assert judge_eval.summary_line(calib) == "judge AUC (logits): quality 0.61, following -, mean 0.70"
