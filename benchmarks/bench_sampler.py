"""Sampler throughput: our jit sampler vs transformers `generate`, SmolLM2-135M-Instruct, f32, CPU.

Same model weights (the embedded GGUF, dequantised), same chat-templated prompts, same
batch, 128 new tokens forced on both sides (EOS disabled), temperature 1, top-p 0.95.
Our compile time is excluded (one warm-up call per shape) and printed separately. Each side
is timed `--repeats` times per batch and the median reported.

    python benchmarks/bench_sampler.py [--batches 1 8 32 64] [--new_tokens 128] [--kv_cache_dtype bfloat16]
    python benchmarks/bench_sampler.py --preset gin_configs/models/smollm2_135m.gin \
        --tokenizer DIR --dtype bfloat16

--preset: a model preset's shapes with random weights (no GGUF needed; EOS is disabled, so
random weights cost what real ones do), with the tokenizer files of DIR. On a GPU both
sides run there.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    ap.add_argument("--new_tokens", type=int, default=128)
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument(
        "--repeats",
        type=int,
        default=3,
        help="timed calls per side and batch; the median is reported (a shared VM drifts by +-20 %%)",
    )
    ap.add_argument("--kv_cache_dtype", default="", help="ours only ('' = compute dtype, f32)")
    ap.add_argument(
        "--no_share_prefix", action="store_true", help="ours: prefill the prompts' common prefix per row"
    )
    ap.add_argument("--preset", default="", help="a gin model preset (random weights); needs --tokenizer")
    ap.add_argument("--tokenizer", default="", help="a tokenizer directory for --preset")
    ap.add_argument(
        "--dtype", choices=["float32", "bfloat16"], default="float32", help="compute dtype, both sides"
    )
    args = ap.parse_args()
    from isheep_jax.backends.cpu import host_memory

    # Before JAX starts (see host_memory); torch, in the same process on a CPU run, shares it.
    args.host_malloc = "retain" if host_memory.install_hooks() else "system"

    import gin
    import jax
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from isheep_jax.loop.seed_pool import load_seed_pool
    from isheep_jax.model import checkpoint
    from isheep_jax.model.config import ModelConfig
    from isheep_jax.model.convert import hf
    from isheep_jax.model.embedded import smollm2_checkpoint, smollm2_gguf_path
    from isheep_jax.model.params import init_params
    from isheep_jax.model.tokenizer import Tokenizer
    from isheep_jax.parallel import sharding
    from isheep_jax.sampling.generator import Generator, SamplingSettings

    gpu = jax.default_backend() == "gpu"
    tdev = "cuda" if gpu else "cpu"
    tmp = tempfile.mkdtemp(prefix="bench_sampler_")
    if args.preset:
        gin.parse_config_file(args.preset)
        rcfg = ModelConfig()
        gin.clear_config()
        model_dir = os.path.join(tmp, "model")
        checkpoint.save_model(
            model_dir, init_params(rcfg, sharding.make_mesh()), rcfg, tokenizer_dir=args.tokenizer
        )
    else:
        model_dir = smollm2_checkpoint()
    cfg, params = checkpoint.load_model(model_dir)
    cfg = cfg.replace(dtype=args.dtype)
    tok = Tokenizer(checkpoint.tokenizer_dir(model_dir))
    gen = Generator(
        cfg, params, tok, kv_cache_dtype=args.kv_cache_dtype, share_prefix=not args.no_share_prefix
    )
    del params
    gen.eos_ids = np.asarray([-1], np.int32)  # force exactly new_tokens tokens
    seeds = load_seed_pool()
    questions = [t.instruction for t in seeds]
    n = args.new_tokens

    if not args.skip_torch:
        torch.set_num_threads(os.cpu_count() or 1)
        tdtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
        if args.preset:
            hf.export_hf(model_dir, os.path.join(tmp, "hf"))
            hf_model = AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "hf"), dtype=tdtype)
        else:
            path = smollm2_gguf_path()
            hf_model = AutoModelForCausalLM.from_pretrained(
                os.path.dirname(path), gguf_file=os.path.basename(path), dtype=tdtype
            )
        hf_model = hf_model.to(tdev).eval()
        hf_tok = AutoTokenizer.from_pretrained(checkpoint.tokenizer_dir(model_dir), padding_side="left")

    rows = []
    for b in args.batches:
        prompts = [tok.render_prompt(q, "chat") for q in questions[:b]]
        s = SamplingSettings(max_new_tokens=n, temperature=1.0, top_p=0.95, batch_size=b, seed=1)
        t0 = time.perf_counter()
        gen.generate(prompts, s, add_special_tokens=False, progress=False)  # compile + run
        first = time.perf_counter() - t0
        rates = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            out = gen.generate(prompts, s, add_special_tokens=False, progress=False)
            rates.append(sum(len(c.token_ids) for c in out) / (time.perf_counter() - t0))
        ours = float(np.median(rates))
        theirs = float("nan")
        if not args.skip_torch:
            enc = hf_tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(tdev)
            with torch.no_grad():  # warm-up (CUDA context, kernels), like our compile call
                hf_model.generate(
                    **enc, max_new_tokens=4, do_sample=True, pad_token_id=hf_tok.pad_token_id
                ).cpu()
                their_rates = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    r = hf_model.generate(
                        **enc,
                        max_new_tokens=n,
                        min_new_tokens=n,
                        do_sample=True,
                        top_p=0.95,
                        temperature=1.0,
                        pad_token_id=hf_tok.pad_token_id,
                    ).cpu()  # waits for the GPU
                    their_rates.append(
                        (r.shape[1] - enc["input_ids"].shape[1]) * b / (time.perf_counter() - t0)
                    )
                theirs = float(np.median(their_rates))
        rows.append((b, ours, theirs, first))
        print(
            f"batch {b}: ours {ours:.1f} tok/s, transformers {theirs:.1f} tok/s "
            f"(median of {args.repeats}; ours "
            f"{' '.join(f'{x:.1f}' for x in rates)}"
            + (
                f", transformers {' '.join(f'{x:.1f}' for x in their_rates)})" if not args.skip_torch else ")"
            ),
            flush=True,
        )

    where = (
        jax.devices()[0].device_kind
        if gpu
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    model = (
        os.path.basename(args.preset).removesuffix(".gin") + " (random weights)"
        if args.preset
        else "SmolLM2-135M-Instruct"
    )
    print(
        f"\n{model} {args.dtype} (our KV cache {args.kv_cache_dtype or args.dtype}), {n} new tokens, "
        "T=1 top-p 0.95; "
        f"{where}, jax {jax.__version__}, torch {torch.__version__}, host malloc {args.host_malloc}"
    )
    print("| batch | isheep_jax tok/s | transformers tok/s | ratio | first call (compile + run) s |")
    print("|---:|---:|---:|---:|---:|")
    for b, ours, theirs, first in rows:
        print(f"| {b} | {ours:.1f} | {theirs:.1f} | {ours / theirs:.2f}x | {first:.1f} |")

    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
