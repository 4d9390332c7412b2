"""Training throughput: our jit train step vs a plain PyTorch AdamW loop with transformers.

Same weights (SmolLM2-135M-Instruct from the embedded GGUF, or a tiny random Llama), same
batch of random token ids, same sequence length, f32, full-parameter AdamW, loss on every
token. Each side runs in fresh processes of its own, `--runs` of them, in the order ours,
torch, torch, ours, ... (so a drifting VM weighs on both; in one process the two would also
share a host heap, which slowed our step by ~15 %: benchmarks/HISTORY.md). Compile time and
warm-up steps are excluded and printed separately; each side's figure is the median of all
its timed steps over its runs, and every step's seconds are printed. Our process uses the
host allocator settings the `isheep` command applies on CPU hosts (isheep_jax/backends/cpu/host_memory.py);
the torch process uses glibc's defaults, as a plain torch loop does (`--torch_malloc retain`
gives it ours). MFU counts 6N FLOPs per token (N = parameters; attention's extra FLOPs
ignored, as usual) against the peak f32 matmul rate measured in each process with a large
jnp.dot (the median over processes).

    python benchmarks/bench_train.py [--model smollm2|tiny] [--batch 8] [--seq 256] [--steps 6] [--runs 2]
    python benchmarks/bench_train.py --preset gin_configs/models/qwen15_1_8b.gin --dtype bfloat16 ...

--preset builds a model preset's shapes with random weights (no download). On a GPU both
sides run there (torch under CUDA autocast for bf16) and the peak is a bf16 (or f32) dot of
8192^2, so the MFU is against what this GPU's matmul reaches, not its data-sheet figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

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


def _ours(args, cfg, model_dir: str, tokens: np.ndarray) -> Callable[[], float]:
    """Our jit train step on `tokens`: a function running one step (the first compiles) and
    returning its seconds."""
    import jax

    from isheep_jax.backends.cpu import host_memory
    from isheep_jax.model import checkpoint
    from isheep_jax.parallel import sharding
    from isheep_jax.training.optim import OptimizerConfig, make_optimizer
    from isheep_jax.training.train_step import TrainState, compile_train_step, owned_state, state_shardings

    mesh = sharding.make_mesh()
    _, params = checkpoint.load_model(model_dir, mesh, remat_policy=args.remat)
    opt = make_optimizer(
        OptimizerConfig(
            learning_rate=1e-5,
            weight_decay=0.0,
            warmup_steps=0,
            warmup_ratio=0.0,
            b2=0.999,
            clip_grad_norm=0.0,
        ),
        1000,
    )
    _, shard = state_shardings(cfg, opt, mesh)
    state = owned_state(
        TrainState(
            jax.numpy.zeros((), jax.numpy.int32),
            params,
            jax.jit(opt.init, out_shardings=shard.opt_state)(params),
        ),
        shard,
    )
    del params  # the restored buffers: owned_state copied them
    m, mb = args.micro_batches, args.batch // args.micro_batches
    batch = {
        "decoder_input_tokens": tokens[:, :-1],
        "decoder_target_tokens": tokens[:, 1:],
        "decoder_loss_weights": np.ones((args.batch, args.seq), np.int32),
        "decoder_segment_ids": np.ones((args.batch, args.seq), np.int32),
        "decoder_positions": np.broadcast_to(np.arange(args.seq, dtype=np.int32), (args.batch, args.seq)),
    }
    batch = {k: np.ascontiguousarray(v).reshape(m, mb, args.seq) for k, v in batch.items()}
    step = compile_train_step(cfg, opt, mesh, (m, mb, args.seq))

    def one() -> float:
        nonlocal state
        in_use = host_memory.heap_in_use()
        t0 = time.perf_counter()
        state, metrics = step(state, batch)
        float(metrics["loss"])
        host_memory.wait_until_freed(in_use)  # as the trainer does (see host_memory)
        dt = time.perf_counter() - t0
        host_memory.release_if_memory_low()
        return dt

    return one


def _torch(args, model_dir: str, tmp: str, tokens: np.ndarray, tdev: str) -> Callable[[], float]:
    """A plain transformers + torch AdamW step on `tokens`: a function running one step and
    returning its seconds."""
    import torch
    from transformers import AutoModelForCausalLM

    from isheep_jax.model.convert import hf

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

    return one


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=["smollm2", "tiny"], default="smollm2")
    ap.add_argument("--preset", default="", help="a gin model preset (random weights); overrides --model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument(
        "--warmup",
        type=int,
        default=3,
        help="untimed steps: compile, the slow first run, and (CPU) the retained heap's growth",
    )
    ap.add_argument(
        "--runs",
        type=int,
        default=2,
        help="fresh processes per side, in the order ours, torch, torch, ours, ...",
    )
    ap.add_argument(
        "--torch_malloc",
        choices=["system", "retain"],
        default="system",
        help="host allocator of the torch process: glibc's defaults (a plain torch loop, as its "
        "users run it) or the retained heap that `isheep` applies to itself on CPU hosts",
    )
    ap.add_argument("--micro_batches", type=int, default=1)
    ap.add_argument("--remat", default="none")
    ap.add_argument(
        "--scan_layers",
        choices=["true", "false"],
        default=None,
        help="ours: scan the layers (default on a GPU) or unroll them (default on CPU, where "
        "XLA schedules the unrolled step faster; see HISTORY.md)",
    )
    ap.add_argument(
        "--attention_impl", choices=["xla", "cudnn"], default="xla", help="ours (see ModelConfig)"
    )
    ap.add_argument("--skip_torch", action="store_true")
    ap.add_argument("--skip_ours", action="store_true")
    ap.add_argument(
        "--dtype",
        choices=["float32", "bfloat16"],
        default="float32",
        help="compute dtype (params and Adam state stay f32); torch runs under autocast for bf16",
    )
    ap.add_argument(
        "--side", choices=["ours", "torch"], default=None, help=argparse.SUPPRESS
    )  # child process
    args = ap.parse_args()
    if args.runs < 1 or args.steps < 1 or args.warmup < 0:
        ap.error("--runs and --steps must be >= 1 and --warmup >= 0")
    if args.side:
        _child(args)
    else:
        _orchestrate(args)


RESULT = "BENCH_TRAIN_RESULT "  # the child's one line for the parent


def _orchestrate(args) -> None:
    """Runs each side `args.runs` times, each in a fresh process (ABBA order, so a drifting VM
    weighs on both), and prints every step and the table."""
    sides = [s for s in ("ours", "torch") if not getattr(args, f"skip_{s}")]
    if not sides:
        raise SystemExit("bench_train: nothing to run (--skip_ours and --skip_torch)")
    order = [s for r in range(args.runs) for s in (sides if r % 2 == 0 else sides[::-1])]
    results: dict[str, list[dict]] = {s: [] for s in sides}
    from isheep_jax.backends.cpu import host_memory  # (no JAX import: the parent never starts JAX)

    for i, side in enumerate(order):
        env = dict(os.environ)
        if side == "torch":
            env[host_memory.ENV] = args.torch_malloc
        cmd = [sys.executable, os.path.abspath(__file__), *sys.argv[1:], "--side", side]
        print(f"[{i + 1}/{len(order)}] {side} ...", flush=True)
        out = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith(RESULT)]
        if out.returncode or not lines:
            sys.stdout.write(out.stdout)
            raise SystemExit(f"bench_train: the {side} process failed (exit code {out.returncode})")
        r = json.loads(lines[-1][len(RESULT) :])
        results[side].append(r)
        print(
            f"    {side}: steps " + " ".join(f"{t:.2f}" for t in r["steps"]) + f" s; warm-up (with compile) "
            f"{r['warmup_s']:.1f} s; peak {r['peak'] / 1e9:.0f} GFLOP/s; host malloc {r['host_malloc']}",
            flush=True,
        )
    _report(args, results)


def _report(args, results: dict[str, list[dict]]) -> None:
    """Each side's figure: the median of all its timed steps over all its runs."""
    first = next(iter(results.values()))[0]
    tokens = args.batch * args.seq
    peaks = [r["peak"] for rs in results.values() for r in rs]
    peak = float(np.median(peaks))
    rate = {s: tokens / float(np.median([t for r in rs for t in r["steps"]])) for s, rs in results.items()}
    per_run = {s: [f"{tokens / float(np.median(r['steps'])):.1f}" for r in rs] for s, rs in results.items()}

    def mfu(side: str) -> str:
        return f"{100 * 6 * first['n_params'] * rate[side] / peak:.0f} %" if side in rate else "-"

    print(
        f"\nmachine: {first['machine']}; {first['versions']}; model {first['name']} "
        f"({first['n_params'] / 1e6:.1f}M params), batch {args.batch} x {args.seq}, micro-batches "
        f"{args.micro_batches}, remat {args.remat}, {first['layers']}, compute {args.dtype}, f32 params, "
        f"attention {args.attention_impl}; host malloc: "
        + ", ".join(f"{s} {rs[0]['host_malloc']}" for s, rs in results.items())
    )
    print(
        f"{args.runs} process(es) per side, {args.warmup} warm-up + {args.steps} timed steps each; tok/s per "
        "run: " + "; ".join(f"{s} {', '.join(v)}" for s, v in per_run.items())
    )
    print(
        f"peak matmul ({first['peak_what']}), median of {len(peaks)} processes: {peak / 1e12:.3f} TFLOP/s "
        f"(each: {', '.join(f'{p / 1e9:.0f}' for p in peaks)} GFLOP/s)"
    )
    print("| model | batch x seq | ours tok/s | torch tok/s | ratio | our MFU | torch MFU |")
    print("|---|---|---|---|---|---|---|")
    ours, theirs = rate.get("ours"), rate.get("torch")
    ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
    print(
        f"| {first['name']} | {args.batch} x {args.seq} | {ours or 0:.1f} | {theirs or 0:.1f} | {ratio} | "
        f"{mfu('ours')} | {mfu('torch')} |"
    )


def _child(args) -> None:
    from isheep_jax.backends.cpu import host_memory

    # Before JAX (or torch) starts its threads (see host_memory).
    args.host_malloc = "retain" if host_memory.configure_from_env() else "system"
    if args.side == "torch":  # JAX only builds the weights: leave the accelerator's memory to torch
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_ALLOCATOR", "platform")
    tmp = tempfile.mkdtemp(prefix="bench_train_")
    try:  # the random checkpoint and its HF export are GBs for a large preset
        _run(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _run(args, tmp: str) -> None:
    import importlib.metadata

    import gin
    import jax

    from isheep_jax.model import checkpoint
    from isheep_jax.model.config import ModelConfig
    from isheep_jax.model.embedded import smollm2_checkpoint
    from isheep_jax.model.params import init_params
    from isheep_jax.parallel import sharding

    gpu = jax.default_backend() == "gpu"
    tdev = "cuda" if gpu else "cpu"
    name = os.path.basename(args.preset).removesuffix(".gin") if args.preset else args.model
    if args.preset:
        gin.parse_config_file(args.preset)
        cfg = ModelConfig()
        gin.clear_config()
    elif args.model == "tiny":
        cfg = ModelConfig(
            vocab_size=4096,
            hidden_size=256,
            intermediate_size=768,
            num_layers=4,
            num_heads=4,
            num_kv_heads=2,
            head_dim=64,
            tie_embeddings=True,
        )
    if args.preset or args.model == "tiny":
        model_dir = os.path.join(tmp, name)
        checkpoint.save_model(model_dir, init_params(cfg, sharding.make_mesh()), cfg)
    else:
        model_dir = smollm2_checkpoint()
    scan = gpu if args.scan_layers is None else args.scan_layers == "true"
    cfg = checkpoint.load_config(model_dir).replace(
        remat_policy=args.remat, dtype=args.dtype, attention_impl=args.attention_impl, scan_layers=scan
    )
    n_params = cfg.num_params()
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1)).astype(np.int32)
    step = (
        _ours(args, cfg, model_dir, tokens)
        if args.side == "ours"
        else _torch(args, model_dir, tmp, tokens, tdev)
    )
    warmup_s = sum(step() for _ in range(args.warmup))
    times = [step() for _ in range(args.steps)]
    del step  # the state's buffers, before the peak's matmuls allocate
    n = 8192 if gpu else 2048
    peak_dtype = args.dtype if gpu else "float32"
    where = (
        jax.devices()[0].device_kind
        if gpu
        else f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    )
    print(
        RESULT
        + json.dumps(
            {
                "side": args.side,
                "steps": times,
                "warmup_s": warmup_s,
                "peak": peak_matmul_flops(n, dtype=peak_dtype),
                "peak_what": f"jnp.dot {n}^2, {peak_dtype}",
                "n_params": n_params,
                "name": name,
                "machine": where,
                "versions": f"jax {jax.__version__}, torch {importlib.metadata.version('torch')}",
                "host_malloc": args.host_malloc,
                "layers": "scanned" if scan else "unrolled",
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
