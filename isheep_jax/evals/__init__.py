"""Evaluations: IFEval-compatible verifiable instructions, pairwise win-rate, held-out data."""
