"""Training throughput: our jit train step vs a plain PyTorch AdamW loop with transformers.

Same weights (SmolLM2-135M-Instruct from the embedded GGUF, or a tiny random Llama), same
batch of random token ids, same sequence length, f32, full-parameter AdamW, loss on every
token. Compile time is excluded (warm-up steps) and printed separately. MFU counts 6N FLOPs
per token (N = parameters; attention's extra FLOPs ignored, as usual) against the peak f32
matmul rate measured here with a large jnp.dot.

    python benchmarks/bench_train.py [--model smollm2|tiny] [--batch 8] [--seq 256] [--steps 4]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np


def peak_matmul_flops(n: int = 2048, reps: int = 10) -> float:
    import jax
    import jax.numpy as jnp

    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--micro_batches", type=int, default=1)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype (params and Adam state stay f32); torch runs under CPU autocast for bf16")
    args = ap.parse_args()

    import jax
    import torch
    from transformers import AutoModelForCausalLM

    from isheep_jax import checkpoint, sharding
    from isheep_jax.demo_model import smollm2_checkpoint
    from isheep_jax.config import ModelConfig
    from isheep_jax.convert import hf
    from isheep_jax.optim import OptimizerConfig, make_optimizer
    from isheep_jax.params import init_params
    from isheep_jax.train_step import TrainState, compile_train_step, state_shardings

    tmp = tempfile.mkdtemp(prefix="bench_train_")
    if args.model == "smollm2":
        model_dir = smollm2_checkpoint()
    else:
        cfg = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                          num_kv_heads=2, head_dim=64, tie_embeddings=True)
        model_dir = os.path.join(tmp, "tiny")
        checkpoint.save_model(model_dir, init_params(cfg, sharding.make_mesh()), cfg)
    cfg = checkpoint.load_config(model_dir).replace(remat_policy=args.remat, dtype=args.dtype)
    n_params = cfg.num_params()
    mesh = sharding.make_mesh()
    _, params = checkpoint.load_model(model_dir, mesh, remat_policy=args.remat)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, weight_decay=0.0, warmup_steps=0, warmup_ratio=0.0,
                                         b2=0.999, clip_grad_norm=0.0), 1000)
    _, shard = state_shardings(cfg, opt, mesh)
    state = TrainState(jax.numpy.zeros((), jax.numpy.int32), params,
                       jax.jit(opt.init, out_shardings=shard.opt_state)(params))
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1)).astype(np.int32)
    m, mb = args.micro_batches, args.batch // args.micro_batches
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": np.ones((args.batch, args.seq), np.int32),
             "decoder_segment_ids": np.ones((args.batch, args.seq), np.int32),
             "decoder_positions": np.broadcast_to(np.arange(args.seq, dtype=np.int32), (args.batch, args.seq))}
    batch = {k: np.ascontiguousarray(v).reshape(m, mb, args.seq) for k, v in batch.items()}
    step = compile_train_step(cfg, opt, mesh, (m, mb, args.seq))
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        state, metrics = step(state, batch)
        float(metrics["loss"])
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        times.append(time.perf_counter() - t0)
    ours = args.batch * args.seq / float(np.median(times))
    del state, params

    theirs = None
    if not args.skip_torch:
        torch.set_num_threads(os.cpu_count() or 1)
        hf_dir = os.path.join(tmp, "hf")
        hf.export_hf(model_dir, hf_dir)
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).train()
        topt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0)
        x = torch.from_numpy(tokens.astype(np.int64))
        ttimes = []
        for i in range(args.warmup + args.steps):
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
                out = model(input_ids=x[:, :-1], labels=x[:, :-1])  # transformers shifts labels itself
            out.loss.backward()
            topt.step()
            topt.zero_grad(set_to_none=True)
            if i >= args.warmup:
                ttimes.append(time.perf_counter() - t0)
        theirs = args.batch * args.seq / float(np.median(ttimes))

    peak = peak_matmul_flops()
    mfu = 6 * n_params * ours / peak
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__}, "
          f"torch {torch.__version__}; model {args.model} ({n_params / 1e6:.1f}M params), batch {args.batch} x "
          f"{args.seq}, micro-batches {m}, remat {args.remat}, compute {args.dtype}, f32 params")
    print(f"peak f32 matmul (jnp.dot 2048^2): {peak / 1e9:.0f} GFLOP/s; our compile + first step: {compile_s:.1f} s")
    print("| model | batch x seq | ours tok/s | torch tok/s | ratio | our MFU |")
    print("|---|---|---|---|---|---|")
    ratio = f"{ours / theirs:.2f}" if theirs else "-"
    print(f"| {args.model} | {args.batch} x {args.seq} | {ours:.1f} | {theirs or 0:.1f} | {ratio} | {100 * mfu:.0f} % |")


if __name__ == "__main__":
    main()
