"""LoRA vs full fine-tuning on the embedded SmolLM2-135M-Instruct: step time, peak memory,
held-out loss, side by side.

Both modes run `trainer.train` (the loop's own train stage) on the same pairs, one fresh
process each, so every peak RSS (`resource.getrusage` maxrss, read right after training) is
that mode's alone. Training data: the shipped seed tasks (isheep_jax/loop/data/
seed_tasks.jsonl, one pair per task: instruction, its first instance's input and output);
held-out loss: the evaluation suite's pairs (isheep_jax/evals/data/heldout_pairs.jsonl,
`evals.runner.heldout_loss`), for the base model too. The step time is the median over the
steps after the first (which compiles). Settings as the demo trains (runs/demo_cpu.gin):
f32, scanned layers, full remat; each mode with its usual learning rate.

    python benchmarks/bench_lora.py [--steps 6] [--batch 8] [--rank 16] [--alpha 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def _pairs_file(path: str) -> str:
    from importlib import resources

    seeds = resources.files("isheep_jax.loop") / "data" / "seed_tasks.jsonl"
    with open(path, "w") as out:
        for line in seeds.read_text().splitlines():
            task = json.loads(line)
            inst = task["instances"][0]
            pair = {"instruction": task["instruction"], "input": inst["input"], "response": inst["output"]}
            out.write(json.dumps(pair) + "\n")
    return path


def worker(args) -> dict:
    """One mode in this process: train (unless 'base'), then the held-out loss."""
    import resource
    import statistics

    from isheep_jax.evals.runner import EvalConfig, ModelSpec, heldout_loss
    from isheep_jax.model import checkpoint
    from isheep_jax.model.embedded import smollm2_checkpoint
    from isheep_jax.training import lora, sft_data
    from isheep_jax.training.metrics import read_metrics
    from isheep_jax.training.optim import OptimizerConfig
    from isheep_jax.training.trainer import TrainConfig, train

    base = smollm2_checkpoint()
    out: dict = {"mode": args.worker}
    model_dir = base
    if args.worker != "base":
        rank = args.rank if args.worker == "lora" else 0
        tc = TrainConfig(
            batch_size=args.batch,
            max_prompt_len=args.prompt_len,
            max_response_len=args.response_len,
            pack=True,
            num_epochs=100.0,
            max_steps=args.steps,
            compute_dtype="float32",
            scan_layers=True,
            remat_policy="full",
            lora_rank=rank,
            lora_alpha=args.alpha,
        )
        lr = args.lora_lr if rank else args.full_lr
        oc = OptimizerConfig(learning_rate=lr, schedule="constant", warmup_steps=1, weight_decay=0.0)
        sft_data.register_sft_task("bench_lora_pairs", [args.pairs], checkpoint.tokenizer_dir(base), "chat")
        data = sft_data.load_examples("bench_lora_pairs", args.prompt_len, args.response_len, pack=True)
        res = train(base, data, os.path.join(args.work, args.worker), tc, oc, progress=False)
        rows = [r for r in read_metrics(res.metrics_path) if "loss" in r]
        step_s = [r["tokens"] / r["tokens_per_s"] for r in rows[1:]]  # the first step compiles
        out.update(
            step_s=statistics.median(step_s),
            first_step_s=rows[0]["tokens"] / rows[0]["tokens_per_s"],
            tokens_per_step=statistics.mean(r["tokens"] for r in rows),
            train_loss=res.final_loss,
            peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            lr=lr,
            trainable=lora.num_trainable(checkpoint.load_config(base), tc.lora_spec())
            if rank
            else checkpoint.load_config(base).num_params(),
        )
        model_dir = res.model_dir
    ho = heldout_loss(ModelSpec(model_dir, "chat"), EvalConfig())
    out.update(heldout_loss=ho["loss"], heldout_pairs=ho["pairs"])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--prompt_len", type=int, default=96)
    p.add_argument("--response_len", type=int, default=160)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--full_lr", type=float, default=2e-5)
    p.add_argument("--lora_lr", type=float, default=2e-4)
    p.add_argument("--worker", choices=["base", "full", "lora"], help=argparse.SUPPRESS)
    p.add_argument("--pairs", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        with open(args.result, "w") as f:
            json.dump(worker(args), f)
        return

    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        pairs = _pairs_file(os.path.join(tmp, "pairs.jsonl"))
        results = {}
        for mode in ("base", "full", "lora"):
            result = os.path.join(tmp, f"{mode}.json")
            cmd = [sys.executable, __file__, *sys.argv[1:], "--worker", mode, "--pairs", pairs]
            cmd += ["--work", tmp, "--result", result]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            with open(result) as f:
                results[mode] = json.load(f)
    full, lo, base = results["full"], results["lora"], results["base"]
    print(
        f"SmolLM2-135M-Instruct, f32, {args.steps} steps of {args.batch} packed rows x "
        f"{args.prompt_len + args.response_len} tokens (~{full['tokens_per_step']:.0f} real tokens/step), "
        f"{os.cpu_count()} CPUs; LoRA rank {args.rank}, alpha {args.alpha:g}, all 7 projections"
    )
    print(f"{'':<28}{'full FT':>14}{'LoRA':>14}")
    rows = [
        ("trainable params (M)", full["trainable"] / 1e6, lo["trainable"] / 1e6, "{:.2f}"),
        ("learning rate", full["lr"], lo["lr"], "{:.0e}"),
        ("train step (s, median)", full["step_s"], lo["step_s"], "{:.2f}"),
        ("first step incl. compile (s)", full["first_step_s"], lo["first_step_s"], "{:.1f}"),
        ("peak RSS (GiB)", full["peak_rss_gib"], lo["peak_rss_gib"], "{:.2f}"),
        ("final train loss", full["train_loss"], lo["train_loss"], "{:.4f}"),
        ("held-out loss", full["heldout_loss"], lo["heldout_loss"], "{:.4f}"),
    ]
    for name, a, b, fmt in rows:
        print(f"{name:<28}{fmt.format(a):>14}{fmt.format(b):>14}")
    print(f"held-out loss of the base model: {base['heldout_loss']:.4f} ({base['heldout_pairs']} pairs)")


if __name__ == "__main__":
    main()
