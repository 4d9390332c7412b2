"""Training throughput: our jit train step vs a plain PyTorch AdamW loop with transformers.

Same weights (SmolLM2-135M-Instruct from the embedded GGUF, or a tiny random Llama), same
batch of random token ids, same sequence length, f32, full-parameter AdamW, loss on every
token. Compile time is excluded (warm-up steps) and printed separately. Our steps run
first, then torch's: alternating them puts both allocators in one retained heap (see
isheep_jax/host_memory.py), and our step then measured 15.1-16.2 s against 12.4-14.8 s
alone (benchmarks/RESULTS.md). Each side's figure is the median of its steps, and every
step's seconds are printed, since a shared VM drifts. MFU counts 6N FLOPs
per token (N = parameters; attention's extra FLOPs ignored, as usual) against the peak f32
matmul rate measured here with a large jnp.dot.

    python benchmarks/bench_train.py [--model smollm2|tiny] [--batch 8] [--seq 256] [--steps 6] [--scan_layers true]
    python benchmarks/bench_train.py --preset gin_configs/models/qwen15_1_8b.gin --dtype bfloat16 ...

--preset builds a model preset's shapes with random weights (no download). On a GPU both
sides run there (torch under CUDA autocast for bf16) and the peak is a bf16 (or f32) dot of
8192^2, so the MFU is against what this GPU's matmul reaches, not its data-sheet figure.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from typing import Callable

import numpy as np


def peak_matmul_flops(n: int = 2048, reps: int = 10, dtype: str = "float32") -> float:
    """FLOP/s of `reps` chained n x n products inside one jit call (median of 5 calls): the
    call's allocation and dispatch are paid once, so the figure is the matmul unit's."""
    import jax

    a = jax.random.normal(jax.random.key(0), (n, n), dtype) / np.sqrt(n).astype(dtype)  # keeps the chain O(1)
    f = jax.jit(lambda x: jax.lax.fori_loop(0, reps, lambda _, y: y @ x, x))
    f(a).block_until_ready()
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 * reps / float(np.median(times))


def _ours(args, cfg, model_dir: str, tokens: np.ndarray) -> tuple[Callable[[], float], float]:
    """Our jit train step on `tokens`: (a function running one step and returning its
    seconds, seconds of compile + warm-up)."""
    import jax

    from isheep_jax import checkpoint, host_memory, sharding
    from isheep_jax.optim import OptimizerConfig, make_optimizer
    from isheep_jax.train_step import TrainState, compile_train_step, state_shardings

    mesh = sharding.make_mesh()
    _, params = checkpoint.load_model(model_dir, mesh, remat_policy=args.remat)
    opt = make_optimizer(OptimizerConfig(learning_rate=1e-5, weight_decay=0.0, warmup_steps=0, warmup_ratio=0.0,
                                         b2=0.999, clip_grad_norm=0.0), 1000)
    _, shard = state_shardings(cfg, opt, mesh)
    state = TrainState(jax.numpy.zeros((), jax.numpy.int32), params,
                       jax.jit(opt.init, out_shardings=shard.opt_state)(params))
    m, mb = args.micro_batches, args.batch // args.micro_batches
    batch = {"decoder_input_tokens": tokens[:, :-1], "decoder_target_tokens": tokens[:, 1:],
             "decoder_loss_weights": np.ones((args.batch, args.seq), np.int32),
             "decoder_segment_ids": np.ones((args.batch, args.seq), np.int32),
             "decoder_positions": np.broadcast_to(np.arange(args.seq, dtype=np.int32), (args.batch, args.seq))}
    batch = {k: np.ascontiguousarray(v).reshape(m, mb, args.seq) for k, v in batch.items()}
    step = compile_train_step(cfg, opt, mesh, (m, mb, args.seq))

    def one() -> float:
        nonlocal state
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        dt = time.perf_counter() - t0
        host_memory.release_if_memory_low()  # as the trainer does (see host_memory)
        return dt

    compile_s = sum(one() for _ in range(args.warmup))
    return one, compile_s


def _torch(args, model_dir: str, tmp: str, tokens: np.ndarray, tdev: str) -> Callable[[], float]:
    """A plain transformers + torch AdamW step on `tokens` (warmed up): a function running
    one step and returning its seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from isheep_jax.convert import hf

    torch.set_num_threads(os.cpu_count() or 1)
    hf_dir = os.path.join(tmp, "hf")
    hf.export_hf(model_dir, hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).to(tdev).train()
    if args.remat != "none":
        model.gradient_checkpointing_enable()  # the closest torch has to our remat policies
    topt = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.0, fused=tdev == "cuda")
    x = torch.from_numpy(tokens.astype(np.int64)).to(tdev)

    def one() -> float:
        t0 = time.perf_counter()
        with torch.autocast(tdev, dtype=torch.bfloat16, enabled=args.dtype == "bfloat16"):
            out = model(input_ids=x[:, :-1], labels=x[:, :-1])  # transformers shifts labels itself
        out.loss.backward()
        topt.step()
        topt.zero_grad(set_to_none=True)
        float(out.loss.detach())  # waits for the device, like float(metrics["loss"]) on our side
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        one()
    return one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--preset", default="", help="a gin model preset (random weights); overrides --model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=2)  # on CPU the first run after compiling is slow too
    ap.add_argument("--micro_batches", type=int, default=1)
    ap.add_argument("--remat", default="none")
    ap.add_argument("--scan_layers", choices=["true", "false"], default=None,
                    help="ours: scan the layers (default on a GPU) or unroll them (default on CPU, where "
                         "XLA schedules the unrolled step faster; see RESULTS.md)")
    ap.add_argument("--attention_impl", choices=["xla", "cudnn"], default="xla", help="ours (see ModelConfig)")
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--skip_ours", action="store_true",
                    help="torch only (on a GPU run each side in its own process: JAX keeps the memory it took)")
    ap.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                    help="compute dtype (params and Adam state stay f32); torch runs under autocast for bf16")
    args = ap.parse_args()
    from isheep_jax import host_memory
    # Before JAX starts (see host_memory); torch, in the same process on a CPU run, shares it.
    args.host_malloc = "retain" if host_memory.configure_from_env() else "system"
    if args.skip_ours:  # JAX only builds the weights: leave the accelerator's memory to torch
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    try:  # the random checkpoint and its HF export are GBs for a large preset
        _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: str) -> None:
    import gin
    import jax
    import torch

    from isheep_jax import checkpoint, sharding
    from isheep_jax.demo_model import smollm2_checkpoint
    from isheep_jax.config import ModelConfig
    from isheep_jax.params import init_params

    gpu = jax.default_backend() == "gpu"
    tdev = "cuda" if gpu else "cpu"
    name = os.path.basename(args.preset).removesuffix(".gin") if args.preset else args.model
    if args.preset:
        gin.parse_config_file(args.preset)
        cfg = ModelConfig()
        gin.clear_config()
    elif args.model == "tiny":
        cfg = ModelConfig(vocab_size=4096, hidden_size=256, intermediate_size=768, num_layers=4, num_heads=4,
                          num_kv_heads=2, head_dim=64, tie_embeddings=True)
    if args.preset or args.model == "tiny":
        model_dir = os.path.join(tmp, name)
        checkpoint.save_model(model_dir, init_params(cfg, sharding.make_mesh()), cfg)
    else:
        model_dir = smollm2_checkpoint()
    scan = gpu if args.scan_layers is None else args.scan_layers == "true"
    cfg = checkpoint.load_config(model_dir).replace(remat_policy=args.remat, dtype=args.dtype,
                                                    attention_impl=args.attention_impl, scan_layers=scan)
    n_params = cfg.num_params()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1)).astype(np.int32)
    otimes, ttimes, compile_s = [], [], 0.0
    if not args.skip_ours:
        ours_step, compile_s = _ours(args, cfg, model_dir, tokens)
        otimes = [ours_step() for _ in range(args.steps)]
        del ours_step  # our state's buffers
    from isheep_jax import host_memory
    host_memory.release_free_memory()  # our freed buffers back to the OS before torch allocates
    if not args.skip_torch:
        torch_step = _torch(args, model_dir, tmp, tokens, tdev)
        ttimes = [torch_step() for _ in range(args.steps)]
    ours = args.batch * args.seq / float(np.median(otimes)) if otimes else None
    theirs = args.batch * args.seq / float(np.median(ttimes)) if ttimes else None

    n = 8192 if gpu else 2048
    peak = peak_matmul_flops(n, dtype=args.dtype if gpu else "float32")
    def mfu(tok_s: float | None) -> str:
        return f"{100 * 6 * n_params * tok_s / peak:.0f} %" if tok_s else "-"

    where = jax.devices()[0].device_kind if gpu else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    print(f"\nmachine: {where}; jax {jax.__version__}, torch {torch.__version__}; model {name} "
          f"({n_params / 1e6:.1f}M params), batch {args.batch} x {args.seq}, micro-batches {args.micro_batches}, remat {args.remat}, "
          f"layers {'scanned' if scan else 'unrolled'}, "
          f"compute {args.dtype}, f32 params, attention {args.attention_impl}, host malloc {args.host_malloc}")
    print(f"peak matmul (jnp.dot {n}^2, {args.dtype if gpu else 'float32'}): {peak / 1e12:.3f} TFLOP/s; "
          f"our compile + first step: {compile_s:.1f} s")
    print("step seconds: ours " + " ".join(f"{t:.2f}" for t in otimes) + "; torch " + " ".join(f"{t:.2f}" for t in ttimes))
    print("| model | batch x seq | ours tok/s | torch tok/s | ratio | our MFU | torch MFU |")
    print("|---|---|---|---|---|---|---|")
    ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
    print(f"| {name} | {args.batch} x {args.seq} | {ours or 0:.1f} | {theirs or 0:.1f} | {ratio} | {mfu(ours)} "
          f"| {mfu(theirs)} |")


if __name__ == "__main__":
    main()
