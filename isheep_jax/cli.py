"""`isheep` command line: import / export checkpoints, sample, run the loop, evaluate, report."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys

from isheep_jax.backends.cpu.host_memory import accelerator_present

# TensorFlow (under SeqIO) logs C++ start-up chatter at import; keep warnings and errors
# (what it prints through absl before that applies is filtered: core.native_logs).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Without a TPU or GPU device node JAX runs on the CPU anyway. Saying so before JAX starts
# keeps it from initialising libtpu (the tpu-aot extra installs it), whose probe of a host
# that is no TPU prints a page of errors and takes a lock other processes then wait on.
# `isheep plan` compiles for TPU topologies either way.
if "JAX_PLATFORMS" not in os.environ and not accelerator_present():
    os.environ["JAX_PLATFORMS"] = "cpu"


def _cmd_import_hf(a: argparse.Namespace) -> None:
    from isheep_jax.model.convert import hf

    cfg = hf.import_hf(a.hf_dir, a.out, param_dtype=a.param_dtype)
    print(f"imported {cfg.model_type} ({cfg.num_params() / 1e6:.1f}M params) -> {a.out}")


def _cmd_import_gguf(a: argparse.Namespace) -> None:
    from isheep_jax.model.convert import gguf_import

    cfg = gguf_import.import_gguf(a.gguf, a.out, param_dtype=a.param_dtype)
    print(f"imported {cfg.model_type} ({cfg.num_params() / 1e6:.1f}M params) -> {a.out}")


def _cmd_export_hf(a: argparse.Namespace) -> None:
    from isheep_jax.model.convert import hf

    hf.export_hf(a.model, a.out, dtype=a.dtype, max_shard_bytes=int(a.max_shard_gb * (1 << 30)))
    print(f"exported {a.model} -> {a.out} (load with transformers.AutoModelForCausalLM.from_pretrained)")


def _cmd_export_peft(a: argparse.Namespace) -> None:
    from isheep_jax.model.convert import peft

    base = peft.export_peft(a.adapter, a.out, a.base_model)
    print(
        f"exported {a.adapter} -> {a.out} (PEFT LoRA adapter; base_model_name_or_path {base!r}): load with "
        "peft.PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(BASE), OUT), BASE being "
        "the `isheep export-hf` folder of the model it was trained on"
    )


def _cmd_sample(a: argparse.Namespace) -> None:
    from isheep_jax.model.embedded import resolve_model
    from isheep_jax.sampling.generator import GeneratorCache, SamplingSettings

    gen = GeneratorCache().get(resolve_model("embedded:smollm2" if a.model == "smollm2" else a.model))
    prompts = a.prompt or [line.rstrip("\n") for line in sys.stdin if line.strip()]
    rendered = [gen.tokenizer.render_prompt(p, a.style) for p in prompts]
    settings = SamplingSettings(
        max_new_tokens=a.max_new_tokens,
        temperature=a.temperature,
        top_p=a.top_p,
        top_k=a.top_k,
        seed=a.seed,
        batch_size=a.batch_size,
    )
    for p, c in zip(prompts, gen.generate(rendered, settings, add_special_tokens=a.style == "raw")):
        print(json.dumps({"prompt": p, "text": c.text, "finish_reason": c.finish_reason}, ensure_ascii=False))


def gin_dir() -> str:
    """The shipped gin configs (presets for runs, models and meshes).

    A wheel carries the repository's `gin_configs/` inside the package (pyproject's
    package-dir); a source checkout (an editable install) has it beside the package.

    Returns:
      The directory's path.
    """
    here = os.path.dirname(os.path.abspath(__file__))
    packaged = os.path.join(here, "gin_configs")
    return packaged if os.path.isdir(packaged) else os.path.join(os.path.dirname(here), "gin_configs")


def parse_gin(files: list[str], bindings: list[str]) -> None:
    """Parses gin files and KEY=VALUE bindings.

    Args:
      files: gin files, each looked up in the current directory, then in `gin_dir()`.
      bindings: gin bindings such as 'LoopConfig.iterations = 3'.

    Raises:
      FileNotFoundError: a file is in neither place.
    """
    import gin

    from isheep_jax import evals, loop, plan  # noqa: F401  (register the configurables)
    from isheep_jax.training import optim, trainer  # noqa: F401

    shipped = gin_dir()
    gin.clear_config()
    gin.add_config_file_search_path(shipped)  # for `include 'models/...'` inside gin files
    resolved = []
    for f in files:
        path = f if os.path.exists(f) else os.path.join(shipped, f)
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"gin file {f!r} not found (looked in the current directory and {shipped})"
            )
        resolved.append(path)
    gin.parse_config_files_and_bindings(resolved, bindings)


def _split_gin_flags(rest: list[str]) -> list[str]:
    """--gin.LoopConfig.iterations=3 -> 'LoopConfig.iterations = 3' (t5x style)."""
    out = []
    for arg in rest:
        if not arg.startswith("--gin.") or "=" not in arg:
            raise ValueError(
                f"unknown argument {arg!r} (gin bindings look like --gin.LoopConfig.iterations=3)"
            )
        key, value = arg[len("--gin.") :].split("=", 1)
        out.append(f"{key} = {value}")
    return out


def _cmd_run(a: argparse.Namespace) -> None:
    from isheep_jax import loop

    parse_gin(a.gin_file, a.gin_bindings)
    summaries = loop.run(a.run_dir, force=a.force)
    print(
        f"run finished: {len(summaries)} iteration(s) in {a.run_dir}; "
        f"`isheep report {a.run_dir}` writes the report"
    )


def _cmd_train(a: argparse.Namespace) -> None:
    from isheep_jax.model.embedded import resolve_model
    from isheep_jax.training import finetune, optim, trainer

    parse_gin(a.gin_file, a.gin_bindings)
    res = finetune.finetune(
        resolve_model(a.init), a.data, a.out, a.prompt_style, trainer.TrainConfig(), optim.OptimizerConfig()
    )
    loss = f"{res.final_loss:.4f}" if res.final_loss is not None else "n/a"
    print(
        f"trained {res.steps} step(s), final loss {loss} -> {res.model_dir} "
        f"(metrics: {res.metrics_path}; run the same command again to resume a killed run)"
    )


def _cmd_demo(a: argparse.Namespace) -> None:
    a.gin_file = ["runs/demo_cpu.gin"] + list(a.gin_file)
    _cmd_run(a)


def _cmd_status(a: argparse.Namespace) -> None:
    from isheep_jax import loop

    st = loop.status(a.run_dir)
    for i, info in st["iterations"].items():
        chunks = ", ".join(f"{k} {v}" for k, v in info["chunks_on_disk"].items())
        print(
            f"iteration {i}: done {', '.join(info['done']) or 'nothing'}"
            + (f" (chunks: {chunks})" if chunks else "")
        )
    print(
        f"next: {st['next'] or 'nothing (all started iterations are finished; rerun `isheep run` to go on)'}"
    )


def _cmd_eval(a: argparse.Namespace) -> None:
    from isheep_jax import evals
    from isheep_jax.evals import compare, judge_eval
    from isheep_jax.model.embedded import resolve_model

    parse_gin(a.gin_file, a.gin_bindings)
    ec = evals.EvalConfig()
    if a.suite:
        ec = dataclasses.replace(ec, suites=tuple(s.strip() for s in a.suite.split(",") if s.strip()))
    spec = evals.ModelSpec(resolve_model(a.checkpoint), a.prompt_style)
    reference = judge = None
    if a.reference:
        reference = (
            evals.ModelSpec(resolve_model(a.reference), a.reference_style),
            os.path.join(a.out, "reference"),
        )
    if a.judge:
        judge = evals.ModelSpec(resolve_model(a.judge), a.judge_style)
    results = evals.evaluate(spec, a.out, ec, reference=reference, judge=judge)
    print(evals.format_headline(a.checkpoint, evals.headline(results)))
    if results.get("judge_calibration"):
        print("  " + judge_eval.summary_line(results["judge_calibration"]))
    if a.compare_to:
        comparisons = compare.compare_evals(a.compare_to, a.out, seed=ec.seed)
        print(f"  against {a.compare_to} (paired, 95 % bootstrap interval):")
        for line in compare.format_comparisons(comparisons) or ["    nothing measured on the same items"]:
            print("  " + line)
    print(f"results in {os.path.join(a.out, 'eval.json')}")


def _cmd_ifeval_score(a: argparse.Namespace) -> None:
    # Scoring loads no model and touches no device: the ifeval module and file helpers only.
    from isheep_jax.core import io_utils
    from isheep_jax.evals import ifeval

    sources = [a.input_data, a.responses]
    for path in sources:
        if not io_utils.as_path(path).is_file():
            raise FileNotFoundError(f"{path}: no such file")
    out = io_utils.absolute(a.output_dir) if a.output_dir else ifeval.default_score_dir(a.responses)
    problem = ifeval.score_dir_problem(out, sources)
    if problem:  # before any reading: a refused folder costs nothing
        raise io_utils.OutputDirError(problem)
    # Unknown ids are reported and skipped, as `isheep eval` does (the reference would stop).
    loaded = ifeval.load_prompts(a.input_data, strict=False)
    for u in loaded.unknown[:10]:
        print(f"isheep ifeval-score: warning: {u} (instruction skipped)", file=sys.stderr)
    if len(loaded.unknown) > 10:
        print(
            f"isheep ifeval-score: warning: and {len(loaded.unknown) - 10} more (scores.json)",
            file=sys.stderr,
        )
    if not loaded.prompts:
        raise io_utils.DataError(
            f"{a.input_data}: no prompt with a known instruction id to score "
            f"({len(loaded.unknown)} unknown instruction(s) skipped)"
        )
    responses = ifeval.load_responses(a.responses)
    result, outcomes = ifeval.score_responses(loaded.prompts, responses, source=a.responses)
    scored = {p.prompt for p in loaded.prompts}
    unmatched = sum(prompt not in scored for prompt in responses)
    info = {
        "input_data": str(io_utils.absolute(a.input_data)),
        "responses": str(io_utils.absolute(a.responses)),
        "unknown_instructions": [str(u) for u in loaded.unknown],
        "unmatched_responses": unmatched,
    }
    out = ifeval.write_scores(out, result, outcomes, info, sources)
    for mode, name in zip(ifeval.MODES, ifeval.SCORE_FILES):
        print(ifeval.reference_report(result, mode, out / name))
    print("=" * 64)
    print(
        f"scored {result.prompts.total} prompt(s), {result.instructions.total} instruction(s) "
        f"of {a.input_data} against {a.responses}"
    )
    for line in ifeval.summary_lines(result):
        print(line)
    if loaded.unknown:
        print(
            f"note: {len(loaded.unknown)} instruction(s) with an unknown id were skipped: "
            "not comparable with the reference scorer"
        )
    if unmatched:
        print(f"note: {unmatched} response(s) to prompts not scored here were ignored")
    print(f"results in {out}")


def _cmd_plan(a: argparse.Namespace) -> None:
    import gin

    from isheep_jax import plan
    from isheep_jax.model.config import ModelConfig
    from isheep_jax.parallel import sharding
    from isheep_jax.training.trainer import TrainConfig

    parse_gin(a.gin_file, a.gin_bindings)
    cfg, tc, pc = ModelConfig(), TrainConfig(), plan.PlanConfig()
    cfg = tc.model_config(cfg)
    shape = []
    for axis, default in (("data", 1), ("fsdp", -1), ("tensor", 1)):
        try:
            shape.append(int(gin.query_parameter(f"make_mesh.{axis}")))
        except ValueError:  # not bound
            shape.append(default)
    if -1 in shape:
        raise ValueError(
            "isheep plan needs every mesh size (data, fsdp, tensor) bound, e.g. --gin_file "
            "meshes/v5p_128.gin; -1 (fill the devices) has no meaning without devices"
        )
    seq_len = tc.max_prompt_len + tc.max_response_len
    spec = tc.lora_spec()  # None: full fine-tuning
    p = plan.make_plan(
        cfg, tuple(shape), tc.batch_size, tc.micro_batches, seq_len, pc, tc.loss_chunk_tokens, spec
    )
    print(plan.format_plan(p, cfg, tuple(shape), pc.chip, (tc.batch_size, tc.micro_batches, seq_len), spec))
    why_not = (
        "--no_compile"
        if a.no_compile
        else "no PlanConfig.topology (e.g. 'v5p:4x4x4'; the TPU mesh presets set it)"
        if not pc.topology
        else "libtpu is not installed (pip install 'isheep_jax[tpu-aot]')"
        if not plan.libtpu_installed()
        else ""
    )
    if why_not:
        print(f"\ncompiler figure: not computed: {why_not}; the table above is the analytic plan")
        return
    devices = plan.tpu_devices(pc.topology)
    if len(devices) != shape[0] * shape[1] * shape[2]:
        raise ValueError(
            f"PlanConfig.topology {pc.topology!r} has {len(devices)} devices but the mesh data "
            f"{shape[0]} x fsdp {shape[1]} x tensor {shape[2]} needs {shape[0] * shape[1] * shape[2]}"
        )
    mesh = sharding.make_mesh(*shape, devices=devices)
    print(
        f"\ncompiling the train step and the sampler for {pc.topology} ({mesh.devices.size} devices) ...",
        flush=True,
    )
    rows = tc.batch_size // tc.micro_batches
    mem = plan.compiled_memory(cfg, mesh, (tc.micro_batches, rows, seq_len), pc, tc.loss_chunk_tokens, spec)
    print(plan.format_compiled(mem, p, pc.topology))


def _cmd_report(a: argparse.Namespace) -> None:
    from isheep_jax.loop.report import write_report

    print(f"report written to {write_report(a.run_dir)}")


def _cmd_export_data(a: argparse.Namespace) -> None:
    from isheep_jax.loop.export_data import export_data

    r = export_data(a.run_dir, a.out, preferences=a.preferences)
    counts = ", ".join(f"{n} {kind}" for kind, n in r.rows.items())
    print(f"exported iterations {', '.join(map(str, r.iterations))} of {a.run_dir}: {counts} rows -> {r.out}")
    for note in r.skipped:
        print(f"  note: {note}")
    if a.preferences and not r.rows.get("preferences"):
        print("  note: no preference pair (no instruction has two scored responses of different scores)")
    print(f"  load with datasets.load_dataset({r.out!r}, 'kept'); the card is {r.out}/README.md")


def build_parser() -> argparse.ArgumentParser:
    """The `isheep` argument parser, one sub-command per task.

    Returns:
      The parser; each sub-command sets `fn`, the function that runs it.
    """
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

    s = sub.add_parser(
        "export-peft",
        help="LoRA adapters of a run (WORK/adapter, TrainConfig.lora_rank > 0) -> PEFT adapter folder",
        description="Writes adapter_config.json + adapter_model.safetensors for "
        "peft.PeftModel.from_pretrained. "
        "The merged model of the same run is WORK/model (export it with export-hf); the adapters apply "
        "to the model the run started from.",
    )
    s.add_argument("adapter", help="the adapter folder, e.g. RUN/iter_0/train/adapter")
    s.add_argument("out")
    s.add_argument(
        "--base_model",
        default=None,
        help="base_model_name_or_path to record: a Hub id or the export-hf folder of the base "
        "(default: the isheep checkpoint the adapters were trained from)",
    )
    s.set_defaults(fn=_cmd_export_peft)

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

    s = sub.add_parser("run", help="run (or resume) the I-SHEEP loop configured by gin files")
    s.add_argument("--gin_file", action="append", default=[], help="may repeat; e.g. runs/demo_cpu.gin")
    s.add_argument("--run_dir", required=True)
    s.add_argument("--force", action="store_true", help="resume even though the gin config changed")
    s.set_defaults(fn=_cmd_run)

    s = sub.add_parser(
        "train",
        help="fine-tune a checkpoint on your JSONL pairs (full, or LoRA with TrainConfig.lora_rank)",
        description="Supervised fine-tuning on JSONL rows of instruction / input / output (or "
        "response), or one-turn chats {messages: [system?, user, assistant]}; loss on the "
        "response tokens only. OUT gets checkpoints/ (resumed when the same command runs "
        "again), metrics.jsonl, tensorboard/ and model/ (the trained checkpoint). TrainConfig and "
        "OptimizerConfig come from --gin_file files and --gin.KEY=VALUE bindings, e.g. "
        "--gin.TrainConfig.num_epochs=3 --gin.OptimizerConfig.learning_rate=1e-5.",
    )
    s.add_argument("--init", required=True, help="checkpoint directory, or 'embedded:smollm2'")
    s.add_argument("--data", action="append", required=True, help="JSONL file; may repeat")
    s.add_argument(
        "--out", required=True, help="WORK: a new or empty folder, or an earlier `isheep train` OUT"
    )
    s.add_argument(
        "--prompt_style",
        default="chat",
        help="'chat' (the tokenizer's template), 'raw', 'chatml' or 'llama3'",
    )
    s.add_argument(
        "--gin_file", action="append", default=[], help="may repeat; binds TrainConfig / OptimizerConfig"
    )
    s.set_defaults(fn=_cmd_train)

    s = sub.add_parser("demo", help="2 iterations on the embedded SmolLM2-135M-Instruct (runs/demo_cpu.gin)")
    s.add_argument("--gin_file", action="append", default=[], help="extra gin files, after demo_cpu.gin")
    s.add_argument("--run_dir", default="runs/demo")
    s.add_argument("--force", action="store_true")
    s.set_defaults(fn=_cmd_demo)

    s = sub.add_parser("eval", help="IFEval-style accuracy, held-out loss and win-rate of one checkpoint")
    s.add_argument("--checkpoint", required=True, help="checkpoint directory, or 'embedded:smollm2'")
    s.add_argument("--out", required=True, help="eval directory (resumable; eval.json holds the results)")
    s.add_argument(
        "--suite",
        default="",
        help="comma-separated subset of ifeval,heldout_loss,winrate,judge_calibration "
        "(default: EvalConfig.suites)",
    )
    s.add_argument(
        "--compare_to",
        default="",
        help="another eval directory of the same prompts (e.g. the base model's): "
        "paired differences and verdicts",
    )
    s.add_argument("--prompt_style", default="chat", help="'raw' (base model), 'chat', 'chatml' or 'llama3'")
    s.add_argument("--reference", default="", help="checkpoint the win-rate compares against")
    s.add_argument("--reference_style", default="chat")
    s.add_argument("--judge", default="", help="judge checkpoint (default: the reference)")
    s.add_argument("--judge_style", default="chat")
    s.add_argument("--gin_file", action="append", default=[], help="may repeat; binds EvalConfig")
    s.set_defaults(fn=_cmd_eval)

    s = sub.add_parser(
        "ifeval-score",
        help="score an IFEval responses file (prompt, response per line) like the reference scorer",
    )
    s.add_argument(
        "--input_data", required=True, help="IFEval-format prompts (key, prompt, instruction_id_list, kwargs)"
    )
    s.add_argument(
        "--responses",
        "--input_response_data",
        dest="responses",
        required=True,
        help="JSONL with prompt and response per line, matched to the prompts by exact text",
    )
    s.add_argument(
        "--output_dir",
        default="",
        help="eval_results_strict.jsonl, eval_results_loose.jsonl and scores.json go here "
        "(default: <responses stem>_ifeval beside the responses file); a new or empty folder, "
        "or an earlier ifeval-score folder (replaced)",
    )
    s.set_defaults(fn=_cmd_ifeval_score)

    s = sub.add_parser("plan", help="per-device memory of training and sampling for a model preset and mesh")
    s.add_argument(
        "--gin_file", action="append", default=[], help="model, mesh and run gin files; may repeat"
    )
    s.add_argument(
        "--no_compile",
        action="store_true",
        help="analytic plan only: skip the ahead-of-time TPU compilation (minutes for 70B models)",
    )
    s.set_defaults(fn=_cmd_plan)

    s = sub.add_parser("status", help="what a run has done and what comes next")
    s.add_argument("run_dir")
    s.set_defaults(fn=_cmd_status)

    s = sub.add_parser("report", help="write RUN/report/report.md with plots")
    s.add_argument("run_dir")
    s.set_defaults(fn=_cmd_report)

    s = sub.add_parser(
        "export-data",
        help="a run's kept, dropped and scored rows as a Hugging Face datasets Parquet folder",
        description="Writes OUT/{kept,dropped,scored}/iteration_<i>-00000-of-00001-<sha>.parquet "
        "(one split per iteration whose filter stage is done; <sha> is the file's content hash) "
        "and a dataset card OUT/README.md; "
        "load with datasets.load_dataset(OUT, 'kept'). OUT must be new, empty, or an earlier "
        "export (replaced); set the card's license before sharing.",
    )
    s.add_argument("run_dir", help="the run directory (local or gs://)")
    s.add_argument("out", help="the local output folder")
    s.add_argument(
        "--preferences",
        action="store_true",
        help="also a 'preferences' config: prompt, chosen, rejected, score_chosen, score_rejected "
        "for each instruction with several scored responses (the loop answers each instruction "
        "once, so a plain run has none; the card then says so)",
    )
    s.set_defaults(fn=_cmd_export_data)
    return p


def _enable_compilation_cache() -> None:
    """Persistent XLA compilation cache: a resumed run (or the next iteration's process) skips
    recompiling the sampler and train step. ISHEEP_XLA_CACHE='' turns it off."""
    import jax

    from isheep_jax.core.cache import private_dir, xla_cache_dir

    path = xla_cache_dir()
    if path and not jax.config.jax_compilation_cache_dir:
        private_dir(path)  # compiled programs are loaded from it: this user's only
        jax.config.update("jax_compilation_cache_dir", path)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def main(argv: list[str] | None = None) -> int:
    """The `isheep` entry point.

    Arguments the parser does not know must be gin bindings (`--gin.KEY=VALUE`). Errors
    that name their cause (ValueError, OSError, TrainingError) are printed as one line;
    any other exception propagates.

    Args:
      argv: the arguments; None = sys.argv[1:].

    Returns:
      The exit code: 0, or 2 after such an error.
    """
    # Our own progress at INFO; library chatter (orbax, absl, gin) only from WARNING up.
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("isheep_jax").setLevel(logging.INFO)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass
    args, rest = build_parser().parse_known_args(argv)
    try:
        from isheep_jax.backends.cpu import host_memory
        from isheep_jax.parallel import distributed

        host_memory.install_hooks()  # before JAX starts its threads (see host_memory)
        distributed.initialize_from_env()  # before anything touches the devices
        if args.command != "plan":  # plan compiles for TPU topologies, not for this host
            _enable_compilation_cache()
        args.gin_bindings = _split_gin_flags(rest)
        args.fn(args)
    except Exception as e:  # our errors name the file and problem: one line, exit code 2
        if not isinstance(e, (ValueError, OSError)):
            # Imported on this path only, and only when needed: it loads TensorFlow (seqio).
            from isheep_jax.training.trainer import TrainingError

            if not isinstance(e, TrainingError):
                raise
        print(f"isheep {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
