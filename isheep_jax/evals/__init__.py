"""Evaluations: IFEval-compatible verifiable instructions, pairwise win-rate, held-out loss,
and the runner that evaluates one checkpoint on them (`evaluate`)."""

from isheep_jax.evals.runner import (
    EvalConfig,
    EvalDirError,
    ModelSpec,
    evaluate,
    format_headline,
    format_win_rate,
    headline,
    percent,
)

__all__ = [
    "EvalConfig",
    "EvalDirError",
    "ModelSpec",
    "evaluate",
    "format_headline",
    "format_win_rate",
    "headline",
    "percent",
]
