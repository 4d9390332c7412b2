"""`isheep` command line: import / export checkpoints, sample, and the demo pass."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

CACHE_DIR = os.environ.get("ISHEEP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "isheep_jax"))


def _cmd_import_hf(a: argparse.Namespace) -> None:
    from isheep_jax.convert import hf
    cfg = hf.import_hf(a.hf_dir, a.out, param_dtype=a.param_dtype)
    print(f"imported {cfg.model_type} ({cfg.num_params() / 1e6:.1f}M params) -> {a.out}")


def _cmd_import_gguf(a: argparse.Namespace) -> None:
    from isheep_jax.convert import gguf_import
    cfg = gguf_import.import_gguf(a.gguf, a.out, param_dtype=a.param_dtype)
    print(f"imported {cfg.model_type} ({cfg.num_params() / 1e6:.1f}M params) -> {a.out}")


def _cmd_export_hf(a: argparse.Namespace) -> None:
    from isheep_jax.convert import hf
    hf.export_hf(a.model, a.out, dtype=a.dtype, max_shard_bytes=int(a.max_shard_gb * (1 << 30)))
    print(f"exported {a.model} -> {a.out} (load with transformers.AutoModelForCausalLM.from_pretrained)")


def smollm2_checkpoint() -> str:
    """The embedded SmolLM2-135M-Instruct, imported from its GGUF once and cached."""
    from isheep_jax import checkpoint
    from isheep_jax.convert import gguf_import
    from isheep_jax.demo_model import smollm2_gguf_path

    out = os.path.join(CACHE_DIR, "smollm2-135m-instruct")
    if not checkpoint.is_complete(out):
        print(f"importing SmolLM2-135M-Instruct from its GGUF into {out} (once)")
        gguf_import.import_gguf(smollm2_gguf_path(), out)
    return out


def _load_generator(model: str):
    from isheep_jax import checkpoint
    from isheep_jax.generate import Generator
    from isheep_jax.tokenizer import Tokenizer

    model = smollm2_checkpoint() if model == "smollm2" else model
    cfg, params = checkpoint.load_model(model)
    return Generator(cfg, params, Tokenizer(checkpoint.tokenizer_dir(model)))


def _cmd_sample(a: argparse.Namespace) -> None:
    from isheep_jax.generate import SamplingSettings

    gen = _load_generator(a.model)
    prompts = a.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    rendered = [gen.tokenizer.render_prompt(p, a.style) for p in prompts]
    settings = SamplingSettings(max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p,
                                top_k=a.top_k, seed=a.seed, batch_size=a.batch_size)
    for p, c in zip(prompts, gen.generate(rendered, settings, add_special_tokens=a.style == "raw")):
        print(json.dumps({"prompt": p, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))


def _cmd_demo(a: argparse.Namespace) -> None:
    from isheep_jax.preview import PreviewSettings, run_preview
    from isheep_jax.seed_pool import load_seed_pool

    gen = _load_generator(a.model)
    os.makedirs(a.run_dir, exist_ok=True)
    summary = run_preview(gen, load_seed_pool(a.seed_file), a.run_dir,
                          PreviewSettings(num_prompts=a.num_prompts, seed=a.seed))
    print(json.dumps(summary, indent=2))
    print(f"artifacts in {a.run_dir}: instructions / responses / assessments / kept / dropped .jsonl")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="isheep", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("import-hf", help="Hugging Face folder (safetensors) -> isheep checkpoint")
    s.add_argument("hf_dir")
    s.add_argument("out")
    s.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16"])
    s.set_defaults(fn=_cmd_import_hf)

    s = sub.add_parser("import-gguf", help="llama.cpp GGUF file -> isheep checkpoint (dequantised)")
    s.add_argument("gguf")
    s.add_argument("out")
    s.add_argument("--param_dtype", default="float32", choices=["float32", "bfloat16"])
    s.set_defaults(fn=_cmd_import_gguf)

    s = sub.add_parser("export-hf", help="isheep checkpoint -> Hugging Face folder (safetensors)")
    s.add_argument("model")
    s.add_argument("out")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--max_shard_gb", type=float, default=4.0)
    s.set_defaults(fn=_cmd_export_hf)

    s = sub.add_parser("sample", help="sample completions (prompts as arguments or one per stdin line)")
    s.add_argument("--model", default="smollm2", help="checkpoint directory, or 'smollm2' (embedded)")
    s.add_argument("--prompt", action="append", help="may repeat")
    s.add_argument("--style", default="chat", help="'raw', 'chat' (own template), 'chatml' or 'llama3'")
    s.add_argument("--max_new_tokens", type=int, default=128)
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--top_p", type=float, default=0.95)
    s.add_argument("--top_k", type=int, default=0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch_size", type=int, default=32)
    s.set_defaults(fn=_cmd_sample)

    s = sub.add_parser("demo", help="one synthesize -> respond -> assess -> filter pass on a real model")
    s.add_argument("--model", default="smollm2")
    s.add_argument("--run_dir", default="runs/demo")
    s.add_argument("--num_prompts", type=int, default=8)
    s.add_argument("--seed_file", default=None, help="Self-Instruct or Alpaca seed file (default: shipped)")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(fn=_cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except (ValueError, FileNotFoundError, OSError) as e:  # our errors name the file and problem
        print(f"isheep {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
