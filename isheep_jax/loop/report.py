"""Per-iteration summaries (printed and stored) and the Markdown run report with plots."""

from __future__ import annotations

import collections
import io
import os
from typing import Any

from isheep_jax.core import io_utils
from isheep_jax.evals.compare import METRICS as COMPARED
from isheep_jax.evals.compare import compare_evals, format_comparisons
from isheep_jax.evals.judge_eval import COMBINED
from isheep_jax.evals.rating import KINDS
from isheep_jax.evals.runner import format_headline, format_win_rate, headline, percent
from isheep_jax.loop.run_dir import STAGES, IterationPaths, RunDir, RunError
from isheep_jax.sampling.chunked import chunk_files
from isheep_jax.training.metrics import read_metrics


def _save_figure(fig, path) -> None:
    """Writes a matplotlib figure as PNG through epath (local or gs://) and closes it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    io_utils.as_path(path).write_bytes(buf.getvalue())


def _chunk_tokens(it: IterationPaths, stage: str) -> int:
    return sum(r.get("num_tokens", 0) for p in chunk_files(it.chunks(stage)) for r in io_utils.read_jsonl(p))


def iteration_summary(
    it: IterationPaths, i: int, model_dir: str, stage_seconds: dict[str, float]
) -> dict[str, Any]:
    """Counts, drop reasons, score histograms and training results of one iteration.

    Read from the iteration's artifacts; missing files count as empty.

    Args:
      it: the iteration's paths.
      i: the iteration.
      model_dir: M_i, the model the iteration sampled with.
      stage_seconds: stage -> seconds spent on it.

    Returns:
      A JSON-ready dict: `iteration`, `model`, the counts per stage (`candidates_parsed`,
      `instructions`, `responses`, `pairs_rated`, `pairs_kept`, `kept_fraction` of the
      candidates), `dropped_by_reason` ("<stage>:<reason>" -> count), `score_histogram`
      (kind -> score -> count), the training results (`trained`, `train_steps`,
      `train_loss_first`, `train_loss_last`, `trained_model`), `generated_tokens` per
      sampling stage, `stage_seconds`, and the `eval` / `eval_base` headlines (None where
      not evaluated).
    """
    instructions, responses, assessments, kept, dropped = (
        io_utils.read_jsonl(p, missing_ok=True)
        for p in (it.instructions, it.responses, it.assessments, it.kept, it.dropped)
    )
    by_stage = collections.Counter(d["stage"] for d in dropped)
    # Expected scores (logits mode) are counted at their nearest integer.
    hist = {
        kind: dict(
            sorted(
                collections.Counter(
                    str(round(r[f"{kind}_score"])) for r in assessments if r.get(f"{kind}_score") is not None
                ).items(),
                key=lambda kv: int(kv[0]),
            )
        )
        for kind in ("quality", "following")
    }
    train_rows = [r for r in read_metrics(it.train_dir / "metrics.jsonl") if "loss" in r]
    run = RunDir(it.root.parent)
    return {
        "iteration": i,
        "model": model_dir,
        "candidates_parsed": len(instructions) + by_stage["synthesize"],
        "instructions": len(instructions),
        "responses": len(responses),
        "pairs_rated": len(assessments),
        "pairs_kept": len(kept),
        "kept_fraction": round(len(kept) / max(len(instructions) + by_stage["synthesize"], 1), 4),
        "dropped_by_reason": dict(
            sorted(collections.Counter(f"{d['stage']}:{d['reason']}" for d in dropped).items())
        ),
        "score_histogram": hist,
        "trained": bool(train_rows),
        "train_steps": len(train_rows),
        "train_loss_first": train_rows[0]["loss"] if train_rows else None,
        "train_loss_last": train_rows[-1]["loss"] if train_rows else None,
        "trained_model": str(it.model_dir) if train_rows else None,
        "generated_tokens": {s: _chunk_tokens(it, s) for s in ("synthesize", "respond", "assess")},
        "stage_seconds": stage_seconds,
        "eval": _eval_headline(it.eval_dir),
        "eval_base": _eval_headline(run.base_eval_dir),
        "eval_vs_base": _compare(run.base_eval_dir, it.eval_dir),
        "eval_vs_previous": _compare(_previous_eval(run, i), it.eval_dir) if i else None,
        "judge": _judge(run.base_eval_dir, it.eval_dir),
    }


def _previous_eval(run: RunDir, i: int):
    """The eval folder of the last iteration before `i` that was evaluated, else the base model's."""
    for j in range(i - 1, -1, -1):
        d = run.iteration(j).eval_dir
        if (d / "eval.json").exists():
            return d
    return run.base_eval_dir


def _compare(base_dir, new_dir) -> dict[str, Any] | None:
    if not (base_dir / "eval.json").exists() or not (new_dir / "eval.json").exists():
        return None
    return compare_evals(base_dir, new_dir)


def _judge(base_dir, new_dir) -> dict[str, Any] | None:
    """How well the judges judge: the rating AUC etc. of the base model and of this
    iteration's model on the calibration pairs, and the win-rate judge's position bias."""
    out: dict[str, Any] = {}
    for name, d in (("base", base_dir), ("model", new_dir)):
        path = d / "eval.json"
        results = io_utils.read_json(path) if path.exists() else {}
        calib = results.get("judge_calibration")
        if calib:
            out[name] = {
                mode: {
                    k: {m: r[k][m] for m in ("auc", "pairwise_accuracy", "histogram")}
                    for k in (*KINDS, COMBINED)
                }
                for mode, r in calib["modes"].items()
            }
        if name == "model" and (results.get("winrate") or {}).get("position_bias"):
            out["winrate_position_bias"] = results["winrate"]["position_bias"]
    return out or None


def _eval_headline(eval_dir) -> dict[str, Any] | None:

    path = eval_dir / "eval.json"
    return headline(io_utils.read_json(path)) if path.exists() else None


def format_summary(s: dict[str, Any]) -> str:
    """The per-iteration table printed at the end of each iteration.

    Args:
      s: an `iteration_summary` dict.

    Returns:
      The table as one string, one line per row.
    """
    lines = [
        f"== iteration {s['iteration']} ==",
        f"  candidates parsed      {s['candidates_parsed']:>7}",
        f"  instructions kept      {s['instructions']:>7}",
        f"  responses kept         {s['responses']:>7}",
        f"  pairs kept             {s['pairs_kept']:>7}  ({100 * s['kept_fraction']:.1f} % of candidates)",
    ]
    for reason, n in s["dropped_by_reason"].items():
        lines.append(f"  dropped {reason:<30} {n:>5}")
    for kind, h in s["score_histogram"].items():
        lines.append(f"  {kind} scores: " + (" ".join(f"{k}:{v}" for k, v in h.items()) or "-"))
    if s["trained"]:
        lines.append(
            f"  train: {s['train_steps']} steps, "
            f"loss {s['train_loss_first']:.4f} -> {s['train_loss_last']:.4f}"
        )
    else:
        lines.append("  train: skipped (no kept pairs)")
    if s.get("eval"):
        if s.get("eval_base"):
            lines.append(format_headline("eval base model", s["eval_base"]))
        lines.append(format_headline(f"eval after iteration {s['iteration']}", s["eval"]))
    for name, key in (("base model", "eval_vs_base"), ("previous model", "eval_vs_previous")):
        if s.get(key):
            lines.append(f"  against the {name} (paired, 95 % bootstrap interval):")
            lines += ["  " + line for line in format_comparisons(s[key])]
    lines += judge_lines(s.get("judge"))
    secs = s.get("stage_seconds", {})
    toks = s.get("generated_tokens", {})
    lines.append(
        "  seconds: "
        + ", ".join(
            f"{k} {secs[k]:.0f}" + (f" ({toks[k] / secs[k]:.0f} tok/s)" if toks.get(k) and secs[k] else "")
            for k in STAGES
            if k in secs
        )
    )
    return "\n".join(lines)


def judge_lines(judge: dict[str, Any] | None, which: tuple[str, ...] = ("base", "model")) -> list[str]:
    """Lines on how well the judges judge (the summary's `judge` entry).

    Args:
      judge: `iteration_summary`'s `judge`, or None.
      which: the judges to show: "base" (the base model), "model" (this iteration's model,
        with the win-rate judge's position bias).

    Returns:
      Per judge and mode, the calibration AUC per criterion; the win-rate judge's position
      bias; nothing when no calibration ran.
    """
    if not judge:
        return []
    lines = []

    def fig(x) -> str:
        return "-" if x is None else f"{x:.2f}"

    for name, label in (("base", "base model"), ("model", "this iteration's model")):
        if name not in which:
            continue
        for mode, r in (judge.get(name) or {}).items():
            figs = ", ".join(
                f"{k} {fig(r[k]['auc'])} (pairwise {fig(r[k]['pairwise_accuracy'])})"
                for k in (*KINDS, COMBINED)
            )
            lines.append(f"  judge AUC on the calibration pairs, {label} ({mode}): {figs}")
            for k in KINDS:
                hist = " ".join(f"{s}:{n}" for s, n in r[k]["histogram"].items()) or "-"
                lines.append(f"    {k} scores of the calibration answers: {hist}")
    bias = judge.get("winrate_position_bias")
    if "model" in which and bias and bias.get("first_preferred") is not None:
        lines.append(
            f"  win-rate judge prefers the first answer in {100 * bias['first_preferred']:.0f} % of its "
            f"A/B verdicts (A {bias['A']}, B {bias['B']}, tie {bias['tie']})"
        )
    return lines


def verdict_lines(summaries: list[dict]) -> list[str]:
    """The report's opening: per iteration and metric, better / no detectable change / worse.

    Args:
      summaries: the iteration summaries.

    Returns:
      Markdown lines (empty when no iteration was compared with the base model).
    """
    rows = [s for s in summaries if s.get("eval_vs_base")]
    if not rows:
        return []
    metrics = [m for m, _ in COMPARED if any(m in s["eval_vs_base"] for s in rows)]
    md = [
        "**Verdicts against the base model** (paired on the same prompts / pairs; 95 % bootstrap interval "
        "and exact test; 'better' or 'worse' only when both exclude no change):",
        "",
        "| iteration | " + " | ".join(metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    percent = dict(COMPARED)
    for s in rows:
        cells = []
        for m in metrics:
            c = s["eval_vs_base"].get(m)
            if c is None:
                cells.append("-")
                continue
            scale, digits = (100, 1) if percent[m] else (1, 4)

            def num(x, scale=scale, digits=digits) -> str:
                return "-" if x is None else f"{x * scale:+.{digits}f}"

            p = "-" if c["p_value"] is None else f"{c['p_value']:.2g}"
            cells.append(
                f"**{c['verdict']}** {num(c['diff'])} [{num(c['ci_low'])}, {num(c['ci_high'])}], p={p}"
            )
        md.append(f"| {s['iteration']} | " + " | ".join(cells) + " |")
    return md + [""]


def _evaluation_section(run: RunDir, summaries: list[dict], out, plt) -> list[str]:
    """Table and plot of the base model's and each trained model's evaluation (if any ran)."""

    evals = [("base model", 0, _eval_headline(run.base_eval_dir))] + [
        (
            f"after iteration {s['iteration']}",
            s["iteration"] + 1,
            _eval_headline(run.iteration(s["iteration"]).eval_dir),
        )
        for s in summaries
    ]
    evals = [e for e in evals if e[2]]
    if not evals:
        return []

    md = [
        "## Evaluation",
        "",
        "IFEval-style accuracy (%) at prompt and instruction level, strict and loose; response-token loss on "
        "held-out pairs; win rate (%) against the base model's answers, judged by the base model with both "
        "answer orders, ties counted half, with a 95 % bootstrap interval.",
        "",
        "| model | IFEval prompt strict | prompt loose | instruction strict | instruction loose "
        "| held-out loss "
        "| win rate vs base |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, _, h in evals:
        wr = format_win_rate(h)
        loss = "-" if h["heldout_loss"] is None else f"{h['heldout_loss']:.4f}"
        md.append(
            f"| {name} | {percent(h['ifeval_prompt_strict'])} | {percent(h['ifeval_prompt_loose'])} | "
            f"{percent(h['ifeval_instruction_strict'])} | {percent(h['ifeval_instruction_loose'])} "
            f"| {loss} | {wr} |"
        )
    md.append("")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3))
    xs = [x for _, x, _ in evals]
    for key, label in (
        ("ifeval_prompt_strict", "prompt strict"),
        ("ifeval_instruction_loose", "instruction loose"),
    ):
        ys = [h[key] for _, _, h in evals]
        if any(y is not None for y in ys):
            ax1.plot(xs, [100 * y if y is not None else float("nan") for y in ys], marker="o", label=label)
    ax1.set_title("IFEval-style accuracy (%)"), ax1.set_xlabel("model (0 = base, i = after iteration i-1)")
    ax1.legend()
    ax2.plot(
        xs,
        [h["heldout_loss"] if h["heldout_loss"] is not None else float("nan") for _, _, h in evals],
        marker="o",
    )
    ax2.set_title("held-out loss"), ax2.set_xlabel("model (0 = base, i = after iteration i-1)")
    for ax in (ax1, ax2):
        ax.set_xticks(xs)
    _save_figure(fig, out / "eval.png")
    return md + ["![evaluation](eval.png)", ""]


def write_report(run_dir: str, examples_per_iteration: int = 3) -> str:
    """RUN/report/report.md with PNG plots; returns the Markdown path.

    Args:
      run_dir: RUN, the run directory.
      examples_per_iteration: kept pairs shown per iteration.

    Returns:
      The path of report.md.

    Raises:
      RunError: `run_dir` has no manifest.json.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    summaries = [
        io_utils.read_json(run.iteration(i).summary)
        for i in run.iterations_present()
        if run.iteration(i).summary.exists()
    ]
    out = run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    md = [
        f"# I-SHEEP run report: {run.root.name}",
        "",
        f"Config sha256 `{io_utils.read_json(run.manifest_path)['config_sha256'][:16]}`; "
        f"{len(summaries)} finished iteration(s).",
        "",
    ]
    md += verdict_lines(summaries)
    judged = [s for s in summaries if s.get("judge")]
    if judged:
        md += [
            "How well the judges judge (AUC: a good answer scored above a degraded one; 0.5 = chance):",
            "",
        ]
        md += [f"- {line.strip()}" for line in judge_lines(judged[0]["judge"], ("base",))]
        for s in judged:
            lines = judge_lines(s["judge"], ("model",))
            md += [f"- after iteration {s['iteration']}:"] + [f"  - {line.strip()}" for line in lines]
        md.append("")
    if summaries:
        md += [
            "| iteration | candidates | instructions | responses | kept | kept % "
            "| train loss (first → last) |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in summaries:
            loss = (
                f"{s['train_loss_first']:.3f} → {s['train_loss_last']:.3f}" if s["trained"] else "not trained"
            )
            md.append(
                f"| {s['iteration']} | {s['candidates_parsed']} | {s['instructions']} | {s['responses']} | "
                f"{s['pairs_kept']} | {100 * s['kept_fraction']:.1f} | {loss} |"
            )
        md.append("")

        fig, ax = plt.subplots(figsize=(5, 3))
        ax.plot(
            [s["iteration"] for s in summaries], [100 * s["kept_fraction"] for s in summaries], marker="o"
        )
        ax.set_xlabel("iteration"), ax.set_ylabel("kept % of candidates"), ax.set_title("Kept fraction")
        _save_figure(fig, out / "kept_fraction.png")

        fig, axes = plt.subplots(1, 2, figsize=(9, 3), sharey=True)
        width = 0.8 / len(summaries)
        for ax, kind in zip(axes, ("quality", "following")):
            for n, s in enumerate(summaries):  # grouped bars over the whole 1-10 scale
                h = s["score_histogram"][kind]
                ax.bar(
                    [k + (n - (len(summaries) - 1) / 2) * width for k in range(1, 11)],
                    [h.get(str(k), 0) for k in range(1, 11)],
                    width=width,
                    label=f"iter {s['iteration']}",
                )
            ax.set_xticks(range(1, 11)), ax.set_xlim(0.5, 10.5)
            ax.set_title(f"{kind} scores"), ax.set_xlabel("score")
        axes[0].set_ylabel("pairs"), axes[-1].legend()
        _save_figure(fig, out / "scores.png")

        fig, ax = plt.subplots(figsize=(5, 3))
        for s in summaries:
            rows = read_metrics(run.iteration(s["iteration"]).train_dir / "metrics.jsonl")
            if rows:
                ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=f"iter {s['iteration']}")
        ax.set_xlabel("step"), ax.set_ylabel("loss"), ax.set_title("Train loss"), ax.legend()
        _save_figure(fig, out / "train_loss.png")
        md += ["![kept fraction](kept_fraction.png) ![scores](scores.png) ![train loss](train_loss.png)", ""]
        md += _evaluation_section(run, summaries, out, plt)

        for s in summaries:
            md += [f"## Iteration {s['iteration']}", "", "Dropped by reason:", ""]
            md += [f"- `{r}`: {n}" for r, n in s["dropped_by_reason"].items()] or ["- none"]
            md += ["", "Example kept pairs:", ""]
            for row in io_utils.read_jsonl(run.iteration(s["iteration"]).kept, missing_ok=True)[
                :examples_per_iteration
            ]:
                md += [
                    f"> **Instruction:** {row['instruction']}"
                    + (f"  \n> **Input:** {row['input']}" if row["input"] else ""),
                    f"> **Response:** {row['response'][:500]}",
                    f"> *scores: quality {row['quality_score']}, following {row['following_score']}*"
                    + (" (expected scores)" if "quality_probs" in row else ""),
                    "",
                ]
    path = out / "report.md"
    io_utils.write_text_atomic(path, "\n".join(md) + "\n")
    return os.fspath(path)
