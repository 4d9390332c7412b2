"""The I-SHEEP sampling workload, replayed: continuous vs static batching vs transformers `generate`.

SmolLM2-135M-Instruct (the embedded model), f32, its own EOS, T=1 top-p 0.95: the stages of
one iteration on the shipped seed pool.

- synthesize: few-shot instruction-synthesis prompts (plain text), `--new_tokens` each;
- respond: chat-templated seed instructions, `--new_tokens` each;
- rate: both rating prompts of every (instruction, response) pair of the respond stage,
  read from one prefill (logits mode; the pair's two prompts as one prompt tree, and each
  prompt on its own row) vs decoded and parsed (text mode, 32 tokens).

For each sampling stage and sampler it prints useful tokens/s (tokens before EOS, per
second outside compilation), slot utilisation (slot-steps that decoded a live row; for
continuous batching also while prompts still waited, i.e. without the final drain),
compile seconds and wall seconds, and how many rows our two samplers returned identical
(all of them wherever the logits agree to the last bit). The rate stage prints pairs/s
outside compilation for both modes.

    python benchmarks/bench_workload.py             # the full workload (1000 new tokens)
    python benchmarks/bench_workload.py --quick     # a few minutes
    python benchmarks/bench_workload.py --skip_torch --slots 64 --prompts 256
    python benchmarks/bench_workload.py --stages respond --samplers continuous --skip_torch \
        --skip_rating --drain_min_slots 1   # the drain compacted down to one slot

The last line is `continuous/static useful tok/s: X.XX` (synthesize and respond together;
printed when both samplers ran).
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import time


def _useful(completions) -> int:
    """Tokens before EOS (the EOS itself, and a static batch's steps past it, are not useful)."""
    return sum(len(c.token_ids) for c in completions)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="16 prompts a stage, 256 new tokens, 8 slots")
    ap.add_argument("--prompts", type=int, default=64, help="prompts per sampling stage")
    ap.add_argument("--new_tokens", type=int, default=1000)
    ap.add_argument("--slots", type=int, default=32, help="batch size: slots, or rows of a static batch")
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    for flag, names, what in (
        (
            "--stages",
            ("synthesize", "respond"),
            "the sampling stages to run (the rate stage rates the respond stage's answers, or seeds' own)",
        ),
        ("--samplers", ("continuous", "static"), "our samplers to run (the last line needs both)"),
    ):
        ap.add_argument(flag, nargs="+", choices=names, default=list(names), help=what)
    ap.add_argument(
        "--drain_min_slots", type=int, default=8, help="continuous batching: `Generator.drain_min_slots`"
    )
    ap.add_argument("--skip_rating", action="store_true", help="sampling stages only")
    args = ap.parse_args()
    if args.quick:
        args.prompts, args.new_tokens, args.slots = 16, 256, 8

    import jax

    from isheep_jax.loop.seed_pool import load_seed_pool
    from isheep_jax.loop.synthesis import build_synthesis_prompt
    from isheep_jax.model import checkpoint
    from isheep_jax.model.embedded import resolve_model, smollm2_gguf_path
    from isheep_jax.model.tokenizer import Tokenizer
    from isheep_jax.prompts.templates import load_template
    from isheep_jax.sampling.generator import Generator, SamplingSettings
    from isheep_jax.training.sft_data import user_text

    model_dir = resolve_model("embedded:smollm2")
    cfg, params = checkpoint.load_model(model_dir)
    tok = Tokenizer(checkpoint.tokenizer_dir(model_dir))
    gens = {
        b: Generator(cfg, params, tok, batching=b, drain_min_slots=args.drain_min_slots)
        for b in args.samplers
    }
    del params
    seeds = load_seed_pool()
    rng = random.Random(args.seed)
    template = load_template("instruction_synthesis")
    synth = [build_synthesis_prompt(rng.sample(seeds, 8), template)[0] for _ in range(args.prompts)]
    questions = [user_text(t.instruction, t.input) for t in seeds]
    respond = [tok.render_prompt(q, "chat") for q in questions[: args.prompts]]
    settings = SamplingSettings(
        max_new_tokens=args.new_tokens, temperature=1.0, top_p=0.95, batch_size=args.slots, seed=1
    )
    print(
        f"# SmolLM2-135M-Instruct f32, {args.prompts} prompts a stage, {args.new_tokens} new tokens, "
        f"{args.slots} slots (drain down to {args.drain_min_slots}), T=1 top-p 0.95, own EOS; "
        f"{platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, jax {jax.__version__} ({jax.default_backend()})",
        flush=True,
    )
    rows, useful_rate = [], {"continuous": [0, 0.0], "static": [0, 0.0]}
    outputs = {}
    for stage, prompts, chat in (("synthesize", synth, False), ("respond", respond, True)):
        if stage not in args.stages:
            continue
        for name, gen in gens.items():
            outs = gen.generate(prompts, settings, add_special_tokens=not chat, progress=f"{stage} {name}")
            s = gen.last_stats
            useful = _useful(outs)
            run = s.seconds - s.compile_seconds
            queued = s.utilisation_while_queued if name == "continuous" else float("nan")
            rows.append((stage, name, useful / run, s.utilisation, queued, s.compile_seconds, s.seconds))
            useful_rate[name][0] += useful
            useful_rate[name][1] += run
            outputs[stage, name] = outs
            print(
                f"{stage} {name}: {rows[-1][2]:.1f} useful tok/s, utilisation {s.utilisation:.1%}", flush=True
            )
        if len(gens) == 2:
            same = sum(
                a.token_ids == b.token_ids
                for a, b in zip(outputs[stage, "continuous"], outputs[stage, "static"])
            )
            # Rows padded to other prompt lengths round differently; a sampled row can then part
            # ways at a near-tie of the nucleus draw, and stays apart from there on.
            print(f"{stage}: rows identical in continuous and static: {same}/{len(prompts)}", flush=True)

    if not args.skip_torch:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(os.cpu_count() or 1)
        path = smollm2_gguf_path()
        hf_model = AutoModelForCausalLM.from_pretrained(
            os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32
        ).eval()
        hf_tok = AutoTokenizer.from_pretrained(checkpoint.tokenizer_dir(model_dir), padding_side="left")
        eos = sorted(set(next(iter(gens.values())).eos_ids.tolist()) - {-1})
        for stage, prompts in (("synthesize", synth), ("respond", respond)):
            if stage not in args.stages:
                continue
            useful, t0 = 0, time.perf_counter()
            for i in range(0, len(prompts), args.slots):
                enc = hf_tok(
                    prompts[i : i + args.slots], return_tensors="pt", padding=True, add_special_tokens=False
                )
                with torch.no_grad():
                    out = hf_model.generate(
                        **enc,
                        max_new_tokens=args.new_tokens,
                        do_sample=True,
                        top_p=0.95,
                        temperature=1.0,
                        eos_token_id=eos,
                        pad_token_id=hf_tok.pad_token_id,
                    )
                for row in out[:, enc["input_ids"].shape[1] :].tolist():
                    ends = [j for j, t in enumerate(row) if t in eos]
                    useful += ends[0] if ends else len(row)
            wall = time.perf_counter() - t0
            rows.append((stage, "transformers", useful / wall, float("nan"), float("nan"), 0.0, wall))
            print(f"{stage} transformers: {useful / wall:.1f} useful tok/s", flush=True)

    rate_rows = [] if args.skip_rating else _rate(args, tok, gens, seeds, outputs)
    _print_tables(rows, rate_rows, useful_rate)


def _rate(args, tok, gens, seeds, outputs) -> list[tuple]:
    """Both rating prompts of each respond-stage pair, read by prefill and decoded: (mode,
    pairs/s outside compilation, compile s, wall s) per mode."""
    from isheep_jax.core import compile_clock
    from isheep_jax.evals import rating
    from isheep_jax.sampling.generator import SamplingSettings

    answered = outputs.get(("respond", "continuous")) or outputs.get(("respond", "static"))
    answers = [c.text for c in answered] if answered else [t.output for t in seeds[: args.prompts]]
    pairs = [(t.instruction, t.input, a) for t, a in zip(seeds, answers, strict=False)]
    prompts = [
        tok.render_prompt(rating.build_rating_prompt(kind, q, x, r), "chat") + "Rating: "
        for q, x, r in pairs
        for kind in rating.KINDS
    ]
    judge = next(iter(gens.values()))
    rate_rows = []
    for mode, trees in (("logits", True), ("logits", False), ("text", True)):
        judge.prompt_trees = trees
        t0, c0 = time.perf_counter(), compile_clock.seconds()
        rating.rate_rows(
            judge,
            prompts,
            mode,
            SamplingSettings(max_new_tokens=32, temperature=0.0, batch_size=args.slots),
            list(range(len(prompts))),
            True,
            f"rate {mode}",
        )
        wall, comp = time.perf_counter() - t0, compile_clock.seconds() - c0
        label = "decoded (text, 32 tokens)" if mode == "text" else "prefill-only (logits)"
        label += ", one row per prompt" if mode == "logits" and not trees else ""
        rate_rows.append((label, len(pairs) / (wall - comp), comp, wall))
        print(f"rate {label}: {rate_rows[-1][1]:.2f} pairs/s", flush=True)
    judge.prompt_trees = True
    return rate_rows


def _print_tables(rows, rate_rows, useful_rate) -> None:
    """The Markdown tables and the ratio lines."""
    print(
        "\n| stage | sampler | useful tok/s | slot utilisation | while prompts waited | compile s | wall s |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    for stage, name, rate, util, queued, comp, wall in rows:
        u, q = ("" if x != x else f"{x:.1%}" for x in (util, queued))  # NaN: not measured
        print(f"| {stage} | {name} | {rate:.1f} | {u} | {q} | {comp:.1f} | {wall:.1f} |")
    if rate_rows:
        print("\n| rating | pairs/s outside compilation | compile s | wall s |")
        print("|---|---:|---:|---:|")
        for label, rate, comp, wall in rate_rows:
            print(f"| {label} | {rate:.2f} | {comp:.1f} | {wall:.1f} |")
        print(f"prompt trees/one row per prompt pairs/s: {rate_rows[0][1] / rate_rows[1][1]:.2f}")
        print(f"prefill-only/decoded pairs/s: {rate_rows[0][1] / rate_rows[2][1]:.2f}")
    if all(useful_rate[name][1] for name in ("continuous", "static")):
        cont = useful_rate["continuous"][0] / useful_rate["continuous"][1]
        stat = useful_rate["static"][0] / useful_rate["static"][1]
        print(f"continuous/static useful tok/s: {cont / stat:.2f}")


if __name__ == "__main__":
    main()
