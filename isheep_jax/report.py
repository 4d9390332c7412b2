"""Per-iteration summaries (printed and stored) and the Markdown run report with plots."""

from __future__ import annotations

import collections
import os
from typing import Any

from isheep_jax import io_utils
from isheep_jax.metrics import read_metrics
from isheep_jax.run_dir import IterationPaths, RunDir, RunError


def _rows(path) -> list[dict]:
    return io_utils.read_jsonl(path) if path.exists() else []


def _chunk_tokens(it: IterationPaths, stage: str) -> int:
    d = it.chunks(stage)
    if not d.exists():
        return 0
    return sum(r.get("num_tokens", 0) for p in sorted(d.iterdir()) for r in _rows(p))


def iteration_summary(it: IterationPaths, i: int, model_dir: str, stage_seconds: dict[str, float]) -> dict[str, Any]:
    """Counts, drop reasons, score histograms and training results of one iteration."""
    instructions, responses = _rows(it.instructions), _rows(it.responses)
    assessments, kept, dropped = _rows(it.assessments), _rows(it.kept), _rows(it.dropped)
    by_stage = collections.Counter(d["stage"] for d in dropped)
    hist = {kind: dict(sorted(collections.Counter(
        str(r[f"{kind}_score"]) for r in assessments if r.get(f"{kind}_score") is not None).items(),
        key=lambda kv: int(kv[0]))) for kind in ("quality", "following")}
    train_rows = [r for r in read_metrics(it.train_dir / "metrics.jsonl") if "loss" in r]
    return {
        "iteration": i,
        "model": model_dir,
        "candidates_parsed": len(instructions) + by_stage["synthesize"],
        "instructions": len(instructions),
        "responses": len(responses),
        "pairs_rated": len(assessments),
        "pairs_kept": len(kept),
        "kept_fraction": round(len(kept) / max(len(instructions) + by_stage["synthesize"], 1), 4),
        "dropped_by_reason": dict(sorted(collections.Counter(f"{d['stage']}:{d['reason']}" for d in dropped).items())),
        "score_histogram": hist,
        "trained": bool(train_rows),
        "train_steps": len(train_rows),
        "train_loss_first": train_rows[0]["loss"] if train_rows else None,
        "train_loss_last": train_rows[-1]["loss"] if train_rows else None,
        "trained_model": str(it.model_dir) if train_rows else None,
        "generated_tokens": {s: _chunk_tokens(it, s) for s in ("synthesize", "respond", "assess")},
        "stage_seconds": stage_seconds,
    }


def format_summary(s: dict[str, Any]) -> str:
    """The per-iteration table printed at the end of each iteration."""
    lines = [f"== iteration {s['iteration']} ==",
             f"  candidates parsed      {s['candidates_parsed']:>7}",
             f"  instructions kept      {s['instructions']:>7}",
             f"  responses kept         {s['responses']:>7}",
             f"  pairs kept             {s['pairs_kept']:>7}  ({100 * s['kept_fraction']:.1f} % of candidates)"]
    for reason, n in s["dropped_by_reason"].items():
        lines.append(f"  dropped {reason:<30} {n:>5}")
    for kind, h in s["score_histogram"].items():
        lines.append(f"  {kind} scores: " + (" ".join(f"{k}:{v}" for k, v in h.items()) or "-"))
    if s["trained"]:
        lines.append(f"  train: {s['train_steps']} steps, loss {s['train_loss_first']:.4f} -> {s['train_loss_last']:.4f}")
    else:
        lines.append("  train: skipped (no kept pairs)")
    secs = s.get("stage_seconds", {})
    toks = s.get("generated_tokens", {})
    lines.append("  seconds: " + ", ".join(
        f"{k} {v:.0f}" + (f" ({toks[k] / v:.0f} tok/s)" if toks.get(k) and v else "") for k, v in secs.items()))
    return "\n".join(lines)


def write_report(run_dir: str, examples_per_iteration: int = 3) -> str:
    """RUN/report/report.md with PNG plots; returns the Markdown path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    summaries = [io_utils.read_json(run.iteration(i).summary) for i in run.iterations_present()
                 if run.iteration(i).summary.exists()]
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    md = [f"# I-SHEEP run report: {run.root.name}", "",
          f"Config sha256 `{io_utils.read_json(run.manifest_path)['config_sha256'][:16]}`; "
          f"{len(summaries)} finished iteration(s).", ""]
    if summaries:
        md += ["| iteration | candidates | instructions | responses | kept | kept % | train loss (first → last) |",
               "|---|---|---|---|---|---|---|"]
        for s in summaries:
            loss = (f"{s['train_loss_first']:.3f} → {s['train_loss_last']:.3f}" if s["trained"] else "not trained")
            md.append(f"| {s['iteration']} | {s['candidates_parsed']} | {s['instructions']} | {s['responses']} | "
                      f"{s['pairs_kept']} | {100 * s['kept_fraction']:.1f} | {loss} |")
        md.append("")

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot([s["iteration"] for s in summaries], [100 * s["kept_fraction"] for s in summaries], marker="o")
        ax.set_xlabel("iteration"), ax.set_ylabel("kept % of candidates"), ax.set_title("Kept fraction")
        fig.tight_layout(), fig.savefig(str(out / "kept_fraction.png")), plt.close(fig)

        fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
        for ax, kind in zip(axes, ("quality", "following")):
            for s in summaries:
                h = s["score_histogram"][kind]
                ax.plot([int(k) for k in h], list(h.values()), marker="o", label=f"iter {s['iteration']}")
            ax.set_title(f"{kind} scores"), ax.set_xlabel("score")
        axes[0].set_ylabel("pairs"), axes[-1].legend()
        fig.tight_layout(), fig.savefig(str(out / "scores.png")), plt.close(fig)

        fig, ax = plt.subplots(figsize=(5, 3))
        for s in summaries:
            rows = read_metrics(run.iteration(s["iteration"]).train_dir / "metrics.jsonl")
            if rows:
                ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"iter {s['iteration']}")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("Train loss"), ax.legend()
        fig.tight_layout(), fig.savefig(str(out / "train_loss.png")), plt.close(fig)
        md += ["![kept fraction](kept_fraction.png) ![scores](scores.png) ![train loss](train_loss.png)", ""]

        for s in summaries:
            md += [f"## Iteration {s['iteration']}", "", "Dropped by reason:", ""]
            md += [f"- `{r}`: {n}" for r, n in s["dropped_by_reason"].items()] or ["- none"]
            md += ["", "Example kept pairs:", ""]
            for row in _rows(run.iteration(s["iteration"]).kept)[:examples_per_iteration]:
                md += [f"> **Instruction:** {row['instruction']}" + (f"  \n> **Input:** {row['input']}" if row['input'] else ""),
                       f"> **Response:** {row['response'][:500]}",
                       f"> *scores: quality {row['quality_score']}, following {row['following_score']}*", ""]
    path = out / "report.md"
    io_utils.write_text_atomic(path, "\n".join(md) + "\n")
    return os.fspath(path)
