"""The judge's AUC on the shipped calibration pairs: SmolLM2-135M-Instruct rating in logits and text mode.

Rates every distinct calibration answer for quality and following (chat-prompted, the
answer opened by `--prefill`, as the loop's assessment stage does) and prints, per mode,
the AUC and pairwise accuracy per criterion, the score histograms and the seconds spent
(rating throughput: pairs/s, prefill-only vs decoding).

    python benchmarks/bench_judge.py [--modes logits text] [--limit 0] [--prefill 'Rating: ']
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

from isheep_jax.core import io_utils
from isheep_jax.evals import calibration, judge_eval
from isheep_jax.model.embedded import resolve_model
from isheep_jax.sampling.generator import GeneratorCache, SamplingSettings


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--modes", nargs="+", default=["logits", "text"])
    ap.add_argument("--limit", type=int, default=0, help="first N calibration items only (0 = all)")
    ap.add_argument("--prefill", default="Rating: ")
    ap.add_argument("--max_new_tokens", type=int, default=32, help="text mode's reply budget")
    ap.add_argument("--batch_size", type=int, default=32)
    args = ap.parse_args()

    model_dir = resolve_model("embedded:smollm2")
    cache = GeneratorCache()
    tok = cache.get(model_dir).tokenizer
    pairs = calibration.load_pairs(None, args.limit)
    settings = SamplingSettings(
        max_new_tokens=args.max_new_tokens, temperature=0.0, batch_size=args.batch_size
    )
    print(
        f"# {platform.processor() or platform.machine()}; {len(pairs)} calibration pairs, model {model_dir}"
    )
    out = {}
    for mode in args.modes:
        t0 = time.perf_counter()
        r = judge_eval.rate_calibration(
            lambda: cache.get(model_dir),
            tok,
            "chat",
            io_utils.as_path(tempfile.mkdtemp(prefix=f"bench_judge_{mode}_")),
            pairs,
            mode,
            args.prefill,
            settings,
            10_000,
        )
        r["seconds"] = round(time.perf_counter() - t0, 1)
        r["ratings_per_s"] = round(2 * r["answers"] / r["seconds"], 2)
        out[mode] = r
        print(json.dumps(r, indent=1))
    print(
        "| mode | quality AUC | following AUC | mean AUC | quality pairwise | following pairwise "
        + "| ratings/s |"
    )
    print("|---|---|---|---|---|---|---|")
    for mode, r in out.items():
        print(
            f"| {mode} | {r['quality']['auc']} | {r['following']['auc']} | {r['mean']['auc']} | "
            f"{r['quality']['pairwise_accuracy']} | {r['following']['pairwise_accuracy']} "
            f"| {r['ratings_per_s']} |"
        )


if __name__ == "__main__":
    main()
