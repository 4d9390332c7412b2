"""Wall time per stage of demo iterations (gin_configs/runs/demo_cpu.gin on SmolLM2-135M).

Runs `isheep run` in a fresh run directory (or reads an existing finished one) and prints a
table of seconds and generated tokens per stage for each iteration. Stage times include
compilation (a fresh process compiles the sampler for each new shape; the persistent XLA
cache is disabled here so the numbers are those of a first run).

    python benchmarks/bench_loop.py [--run_dir DIR] [--iterations 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run_dir", default=None, help="existing finished run to read instead of running one")
    ap.add_argument("--iterations", type=int, default=1)
    args = ap.parse_args()

    run_dir = args.run_dir
    total = None
    if run_dir is None:
        run_dir = os.path.join(tempfile.mkdtemp(prefix="bench_loop_"), "run")
        t0 = time.perf_counter()
        subprocess.run(
            [
                sys.executable,
                "-m",
                "isheep_jax.cli",
                "run",
                "--gin_file",
                "runs/demo_cpu.gin",
                "--run_dir",
                run_dir,
                f"--gin.LoopConfig.iterations={args.iterations}",
            ],
            check=True,
            env={**os.environ, "ISHEEP_XLA_CACHE": ""},
        )
        total = time.perf_counter() - t0

    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; run {run_dir}")
    print("| iteration | stage | seconds | generated tokens | tok/s | items |")
    print("|---|---|---:|---:|---:|---|")
    i = 0
    while os.path.exists(os.path.join(run_dir, f"iter_{i}", "summary.json")):
        with open(os.path.join(run_dir, f"iter_{i}", "summary.json")) as f:
            s = json.load(f)
        items = {
            "synthesize": f"{s['candidates_parsed']} candidates",
            "respond": f"{s['instructions']} responses",
            "assess": f"{2 * s['responses']} ratings",
            "filter": f"{s['pairs_kept']} kept",
            "train": f"{s['train_steps']} steps",
            "eval": ("base model + " if i == 0 and s.get("eval_base") else "") + "trained model",
        }
        for stage in ("synthesize", "respond", "assess", "filter", "train", "eval"):
            if stage not in s["stage_seconds"]:
                continue
            secs = s["stage_seconds"][stage]
            toks = s["generated_tokens"].get(stage, 0)
            rate = f"{toks / secs:.0f}" if toks and secs else "-"
            print(f"| {i} | {stage} | {secs:.0f} | {toks or '-'} | {rate} | {items.get(stage, '')} |")
        i += 1
    if total is not None:
        print(f"\nwhole command (process start, model load, all iterations): {total:.0f} s")


if __name__ == "__main__":
    main()
