"""Evaluation of one checkpoint: IFEval-style instruction following, held-out loss, an
AlpacaEval-style pairwise win-rate against a reference model judged by a judge model, and
the model itself as a rating judge on labelled calibration pairs.

Everything lands in one eval directory and resumes like the loop's sampling stages:

    EVAL/chunks/<suite>/<n>.jsonl   raw generations or score probabilities, one file per chunk
    EVAL/ifeval_responses.jsonl     {key, prompt, response}: the official IFEval scorer reads it too
    EVAL/ifeval_results.jsonl       {key, strict, loose} per prompt: paired comparisons (`evals.compare`)
    EVAL/winrate_answers.jsonl      {id, instruction, input, answer}: reusable as a reference
    EVAL/winrate_judgments.jsonl    both verdicts of each pair (position-swapped), replies, label probs
    EVAL/eval.json                  the results; written last, so it marks the evaluation done

Models are loaded one at a time (evaluated model, reference, judge), so evaluating a 7B
model needs the memory of one 7B model. Generation is greedy by default: same checkpoint,
same numbers.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any, Literal

import gin
import jax
import numpy as np

from isheep_jax.core import choices, hooks, io_utils
from isheep_jax.evals import calibration, ifeval, judge_eval, rating, winrate
from isheep_jax.evals.rating import AssessMode
from isheep_jax.model import checkpoint
from isheep_jax.model.tokenizer import PromptStyle, Tokenizer
from isheep_jax.parallel import distributed
from isheep_jax.prompts.templates import user_text
from isheep_jax.sampling.chunked import sample_in_chunks, stream_in_chunks
from isheep_jax.sampling.generator import GeneratorCache, SamplingSettings, completion_stream
from isheep_jax.training.train_step import per_segment_loss

log = logging.getLogger(__name__)

Suite = Literal["ifeval", "heldout_loss", "winrate", "judge_calibration"]
SUITES: tuple[Suite, ...] = choices.values(Suite)


@gin.configurable
@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """What `isheep eval` (and the loop, when LoopConfig.evaluate is set) measures.

    Attributes:
      suites: the suites to run, from `SUITES` ("ifeval", "heldout_loss", "winrate").
      ifeval_file: IFEval-format prompt file; '' = our shipped prompts (the official IFEval
        input_data.jsonl works too).
      ifeval_limit: the first N prompts only (0 = all): quick runs.
      heldout_file: JSONL of instruction / input / response (or output) pairs for the
        held-out loss; '' = the shipped held-out pairs.
      winrate_file: instructions compared pairwise (instruction / input); '' = the held-out
        pairs'.
      winrate_limit: the first N win-rate instructions only (0 = all).
      sampling: how the evaluated and reference models answer (greedy by default).
      judge_sampling: how the judge model replies.
      judge_prefill: text that opens the judge's reply, e.g. '[[' so that the verdict label
        comes next (logits mode reads it right there); in text mode parsed with the reply.
      verdict_mode: how the win-rate judge's verdict is read: 'logits' (the most likely of
        the labels 'A', 'B', 'tie' right after `judge_prefill`, one prefill per judgment) or
        'text' (generate a reply and parse it).
      calibration_file: the judge calibration items (`evals.calibration`); '' = the shipped
        set.
      calibration_limit: the first N calibration items only (0 = all).
      rating_modes: the modes the evaluated model is measured in as a rating judge on the
        calibration pairs ('logits', 'text').
      rating_prefill: text that opens the rating judge's answer (the loop passes its own
        `LoopConfig.rating_prefill`).
      rating_sampling: how the rating judge replies in text mode.
      max_prompt_len: held-out loss: pairs whose prompt is longer than this are left out and
        counted.
      max_response_len: held-out loss: the same for the response (EOS included).
      loss_batch_size: rows per held-out loss batch.
      chunk_size: prompts per resumable sampling chunk.
      seed: the sampling seed and the win-rate bootstrap's seed.

    Raises:
      ValueError: an unknown or empty suite list, a negative limit, or a size below 1.
    """

    suites: tuple[Suite, ...] = SUITES
    ifeval_file: str = ""  # '' = our shipped prompts; the official IFEval input_data.jsonl works too
    ifeval_limit: int = 0  # the first N prompts only (0 = all): quick runs
    heldout_file: str = ""  # '' = shipped held-out pairs; JSONL of instruction / input / response (or output)
    winrate_file: str = ""  # instructions compared pairwise (instruction / input); '' = the held-out pairs'
    winrate_limit: int = 0
    sampling: SamplingSettings = SamplingSettings(max_new_tokens=512, temperature=0.0, batch_size=16)
    judge_sampling: SamplingSettings = SamplingSettings(max_new_tokens=64, temperature=0.0, batch_size=16)
    judge_prefill: str = "[["
    verdict_mode: AssessMode = "logits"
    calibration_file: str = ""
    calibration_limit: int = 0
    rating_modes: tuple[AssessMode, ...] = ("logits",)
    rating_prefill: str = "Rating: "
    rating_sampling: SamplingSettings = SamplingSettings(max_new_tokens=32, temperature=0.0, batch_size=16)
    max_prompt_len: int = 256  # held-out loss: pairs longer than this are left out and counted
    max_response_len: int = 512
    loss_batch_size: int = 8
    chunk_size: int = 64
    seed: int = 0

    def __post_init__(self):
        """Checks the suites, limits and sizes."""
        unknown = [s for s in self.suites if s not in SUITES]
        if unknown or not self.suites:
            raise ValueError(f"EvalConfig.suites: unknown {unknown} or empty; choose from {SUITES}")
        choices.check("EvalConfig", "verdict_mode", self.verdict_mode, AssessMode)
        for mode in self.rating_modes:
            choices.check("EvalConfig", "rating_modes", mode, AssessMode)
        for name in ("ifeval_limit", "winrate_limit", "calibration_limit"):
            if getattr(self, name) < 0:
                raise ValueError(f"EvalConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_prompt_len", "max_response_len", "loss_batch_size", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name} must be >= 1, got {getattr(self, name)}")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A checkpoint and how it is prompted ('raw' | 'chat' | a builtin template name).

    Attributes:
      model_dir: the checkpoint directory.
      prompt_style: 'raw' (base models), 'chat' (the tokenizer's template) or a builtin
        template name.
    """

    model_dir: str
    prompt_style: PromptStyle = "chat"


IFEVAL_RESULTS = "ifeval_results.jsonl"
VERDICT_LABELS = ("A", "B", "tie")  # what follows judge_prefill '[[' in the judge template
# The held-out loss builds the f32 logits of about this many tokens at a time, not all of a
# batch's at once (8 rows x 768 tokens x 49152 = 1.2 GB for SmolLM2-135M); the same loss to
# float round-off, so it is not part of the config (nor of an eval folder's key).
HELDOUT_LOSS_CHUNK_TOKENS = 1024


def shipped_heldout_path() -> os.PathLike:
    """The held-out pairs shipped with the package.

    Returns:
      The path of `isheep_jax/evals/data/heldout_pairs.jsonl`.
    """
    return resources.files("isheep_jax.evals") / "data" / "heldout_pairs.jsonl"


# ---------------------------------------------------------------------------- suites
def _sample(
    cache: GeneratorCache,
    spec: ModelSpec,
    chunk_dir,
    user_texts: Sequence[str],
    settings: SamplingSettings,
    ec: EvalConfig,
    desc: str,
    prefill: str = "",
) -> list[dict]:
    """Greedy (by default) completions of user turns rendered in the model's style, chunked."""
    tok = Tokenizer(checkpoint.tokenizer_dir(spec.model_dir))
    prompts = [tok.render_prompt(t, spec.prompt_style) + prefill for t in user_texts]
    settings = dataclasses.replace(settings, seed=ec.seed)
    return stream_in_chunks(
        chunk_dir,
        prompts,
        ec.chunk_size,
        completion_stream(lambda: cache.get(spec.model_dir), settings, spec.prompt_style != "raw", desc),
        desc,
    )


def run_ifeval(cache: GeneratorCache, spec: ModelSpec, out, ec: EvalConfig) -> dict[str, Any]:
    """Prompt- and instruction-level strict/loose accuracy on an IFEval-format prompt file.

    Unknown instruction ids are logged and skipped. The responses are also written to
    EVAL/ifeval_responses.jsonl, and each prompt's per-instruction results to
    EVAL/ifeval_results.jsonl.

    Args:
      cache: loads the model to sample with.
      spec: the evaluated model.
      out: EVAL, the eval directory.
      ec: the eval settings (prompt file, limit, sampling, chunk size).

    Returns:
      `IFEvalResult.to_dict()` plus `prompt_file`, `unknown_instructions` and
      `cut_at_max_tokens` (responses the token limit cut).
    """
    path = ec.ifeval_file or ifeval.shipped_prompts_path()
    loaded = ifeval.load_prompts(path, strict=False)
    for u in loaded.unknown:
        log.warning("ifeval: %s (instruction skipped)", u)
    prompts = list(loaded.prompts)[: ec.ifeval_limit or None]
    rows = _sample(
        cache, spec, out / "chunks" / "ifeval", [p.prompt for p in prompts], ec.sampling, ec, "ifeval"
    )
    io_utils.write_jsonl(
        out / "ifeval_responses.jsonl",
        [{"key": p.key, "prompt": p.prompt, "response": r["text"]} for p, r in zip(prompts, rows)],
    )
    outcomes = [ifeval.score_response(p, r["text"]) for p, r in zip(prompts, rows)]
    # Per prompt, so two models can be compared on the same prompts (`evals.compare`).
    io_utils.write_jsonl(out / IFEVAL_RESULTS, ifeval.outcome_rows(outcomes))
    result = ifeval.aggregate(outcomes).to_dict()
    result.update(
        prompt_file=os.fspath(path),
        unknown_instructions=[str(u) for u in loaded.unknown],
        cut_at_max_tokens=sum(r["finish_reason"] == "length" for r in rows),
    )
    return result


def heldout_loss(spec: ModelSpec, ec: EvalConfig, mesh=None) -> dict[str, Any]:
    """Mean response-token loss on held-out pairs, prompted exactly as training prompts them.

    Args:
      spec: the evaluated model.
      ec: the eval settings (pair file, length budgets, loss batch size).
      mesh: the device mesh; None builds the default one.

    Returns:
      `loss` (over all response tokens), `mean_example_loss` (mean of the per-pair losses),
      `pairs`, `pairs_too_long` (left out), `target_tokens`, `pair_file` and `per_pair`
      ({loss_sum, tokens} per pair, in the data's order).

    Raises:
      DataError: the pair file is malformed, or no pair fits the budgets.
    """
    # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
    from isheep_jax.training import sft_data

    path = ec.heldout_file or shipped_heldout_path()
    name = "isheep_eval_heldout"
    sft_data.register_sft_task(name, [path], checkpoint.tokenizer_dir(spec.model_dir), spec.prompt_style)
    # Packed rows: the short held-out pairs cost their own tokens, not the padded budget.
    data = sft_data.load_examples(name, ec.max_prompt_len, ec.max_response_len, pack=True)
    cfg, params = checkpoint.load_model(spec.model_dir, mesh)
    max_segments = int(data.arrays["decoder_segment_ids"].max())
    loss_fn = jax.jit(
        functools.partial(
            per_segment_loss, cfg, max_segments=max_segments, chunk_tokens=HELDOUT_LOSS_CHUNK_TOKENS
        )
    )
    rows, b = data.num_rows, ec.loss_batch_size
    padded = (
        -(-rows // b) * b
    )  # zero rows (no segment, loss weight 0) fill the last batch: one compiled shape
    arrays = {
        k: np.concatenate([v, np.zeros((padded - rows, v.shape[1]), v.dtype)]) for k, v in data.arrays.items()
    }
    sums, counts = [], []
    for lo in range(0, padded, b):
        s, c = distributed.to_host(loss_fn(params, {k: v[lo : lo + b] for k, v in arrays.items()}))
        sums.append(np.asarray(s).ravel())
        counts.append(np.asarray(c).ravel())
    del params
    sums, counts = np.concatenate(sums), np.concatenate(counts)
    sums, counts = sums[counts > 0], counts[counts > 0]  # one entry per example
    n = len(counts)
    return {
        # Per pair, in the data's order (the same for every model of a run): paired comparisons.
        "per_pair": [{"loss_sum": float(a), "tokens": int(c)} for a, c in zip(sums, counts)],
        "loss": float(sums.sum() / counts.sum()),
        "mean_example_loss": float(np.mean(sums / counts)),
        "pairs": n,
        "pairs_too_long": data.num_too_long,
        "target_tokens": int(counts.sum()),
        "pair_file": os.fspath(path),
    }


def winrate_items(ec: EvalConfig) -> list[dict]:
    """The instructions compared pairwise: {id, instruction, input}, validated.

    Args:
      ec: the eval settings: `winrate_file`, else `heldout_file`, else the shipped pairs;
        `winrate_limit`.

    Returns:
      One item per row, in file order; `id` is the row's `id` or its line number.

    Raises:
      DataError: a row is not an object with a non-empty instruction, or has a non-string
        input.
    """
    path = ec.winrate_file or ec.heldout_file or shipped_heldout_path()
    items = []
    for lineno, row in io_utils.iter_jsonl(path):
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("instruction"), str)
            or not row["instruction"].strip()
        ):
            raise io_utils.DataError(f"{path}:{lineno}: expected an object with a non-empty 'instruction'")
        if not isinstance(row.get("input", "") or "", str):
            raise io_utils.DataError(f"{path}:{lineno}: field 'input' must be a string")
        items.append(
            {"id": row.get("id", lineno), "instruction": row["instruction"], "input": row.get("input") or ""}
        )
    return items[: ec.winrate_limit or None]


def winrate_answers(cache: GeneratorCache, spec: ModelSpec, out, ec: EvalConfig) -> list[dict]:
    """The model's answers to the win-rate instructions (read back when already on disk).

    Args:
      cache: loads the model to sample with.
      spec: the model that answers.
      out: the eval directory whose winrate_answers.jsonl holds (or will hold) the answers.
      ec: the eval settings.

    Returns:
      One row per item of `winrate_items`: its fields plus `answer` and `finish_reason`.

    Raises:
      DataError: the answers on disk are for other instructions.
    """
    path = out / "winrate_answers.jsonl"
    items = winrate_items(ec)
    if io_utils.exists(path):
        rows = io_utils.read_jsonl(path)
        if [r["id"] for r in rows] == [it["id"] for it in items]:
            return rows
        raise io_utils.DataError(
            f"{path}: answers for other instructions than {ec.winrate_file or 'the shipped set'}; "
            "delete it to regenerate"
        )
    outs = _sample(
        cache,
        spec,
        out / "chunks" / "winrate",
        [user_text(it["instruction"], it["input"]) for it in items],
        ec.sampling,
        ec,
        "winrate answers",
    )
    rows = [{**it, "answer": o["text"], "finish_reason": o["finish_reason"]} for it, o in zip(items, outs)]
    io_utils.write_jsonl(path, rows)
    return rows


def judge_pairs(
    cache: GeneratorCache,
    judge: ModelSpec,
    out,
    ec: EvalConfig,
    answers: Sequence[dict],
    reference: Sequence[dict],
) -> dict[str, Any]:
    """Win / tie / loss of `answers` against `reference`, both orders judged (see evals/winrate.py).

    The verdicts and replies are written to EVAL/winrate_judgments.jsonl.

    Args:
      cache: loads the judge model.
      judge: the judge model.
      out: EVAL, the evaluated model's eval directory.
      ec: the eval settings (judge sampling and prefill, seed).
      answers: the evaluated model's rows from `winrate_answers`.
      reference: the reference model's rows, in the same order.

    Returns:
      The `WinRate` fields (rates None when no pair is valid), `n` and `judge`.
    """
    triples = [
        (user_text(a["instruction"], a["input"]), a["answer"], r["answer"])
        for a, r in zip(answers, reference)
    ]

    if ec.verdict_mode == "logits":
        tok = Tokenizer(checkpoint.tokenizer_dir(judge.model_dir))
        prompts = [
            tok.render_prompt(p, judge.prompt_style) + ec.judge_prefill
            for t in triples
            for p in winrate.judge_prompts(*t)
        ]
        rows = sample_in_chunks(
            out / "chunks" / "judge_logits",
            prompts,
            ec.chunk_size,
            lambda p, ids: [
                {"label_probs": [rating.round_sig(x) for x in row]}
                for row in rating.label_probabilities(
                    cache.get(judge.model_dir),
                    p,
                    VERDICT_LABELS,
                    ec.judge_sampling.batch_size,
                    judge.prompt_style != "raw",
                    "judge",
                    continues="",
                )
            ],
            "judge",
        )
        probs = [r["label_probs"] for r in rows]
        judgments = [
            winrate.PairJudgment(
                _verdict(first), _verdict(second), (_label_text(first), _label_text(second)), (first, second)
            )
            for first, second in zip(probs[0::2], probs[1::2])
        ]
    else:

        def generate(prompts: Sequence[str]) -> list[str]:
            outs = _sample(
                cache,
                judge,
                out / "chunks" / "judge",
                prompts,
                ec.judge_sampling,
                ec,
                "judge",
                ec.judge_prefill,
            )
            return [ec.judge_prefill + o["text"] for o in outs]

        judgments = winrate.judge_all(triples, generate)
    io_utils.write_jsonl(
        out / "winrate_judgments.jsonl",
        [
            {
                "id": a["id"],
                "model_first": j.model_first,
                "model_second": j.model_second,
                "outcome": j.outcome(),
                "replies": list(j.replies),
                **({"label_probs": [list(p) for p in j.probs]} if j.probs else {}),
            }
            for a, j in zip(answers, judgments)
        ],
    )
    wr = winrate.win_rate([j.outcome() for j in judgments], seed=ec.seed)
    # No valid pair leaves the rates undefined: null in JSON (NaN is not JSON), counts say why.
    rates = {
        k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in dataclasses.asdict(wr).items()
    }
    bias = judge_eval.position_bias([v for j in judgments for v in (j.model_first, j.model_second)])
    return {
        **rates,
        "n": wr.n,
        "judge": judge.model_dir,
        "verdict_mode": ec.verdict_mode,
        "position_bias": bias,
    }


def _verdict(probs: Sequence[float]) -> winrate.Verdict:
    """The most likely verdict label (the first on a tie of probabilities)."""
    return VERDICT_LABELS[int(np.argmax(probs))]  # type: ignore[return-value]


def _label_text(probs: Sequence[float]) -> str:
    """The judgment as it would read: the most likely label in the template's brackets."""
    return f"[[{_verdict(probs)}]]"


def run_judge_calibration(cache: GeneratorCache, spec: ModelSpec, out, ec: EvalConfig) -> dict[str, Any]:
    """The evaluated model as a rating judge on the calibration pairs (`evals.judge_eval`).

    Args:
      cache: loads the model.
      spec: the model, judging in its prompt style.
      out: EVAL, the eval directory (chunks under chunks/calibration_<mode>/).
      ec: the eval settings (calibration file and limit, rating modes, prefill, sampling).

    Returns:
      `pairs`, `calibration_file`, and `modes`: mode -> `judge_eval.rate_calibration`.
    """
    pairs = calibration.load_pairs(ec.calibration_file or None, ec.calibration_limit)
    tok = Tokenizer(checkpoint.tokenizer_dir(spec.model_dir))
    settings = dataclasses.replace(ec.rating_sampling, seed=ec.seed)
    modes = {
        mode: judge_eval.rate_calibration(
            lambda: cache.get(spec.model_dir),
            tok,
            spec.prompt_style,
            out / "chunks" / f"calibration_{mode}",
            pairs,
            mode,
            ec.rating_prefill,
            settings,
            ec.chunk_size,
        )
        for mode in ec.rating_modes
    }
    return {
        "pairs": len(pairs),
        "calibration_file": os.fspath(ec.calibration_file or calibration.shipped_calibration_path()),
        "modes": modes,
    }


# ---------------------------------------------------------------------------- driver
class EvalDirError(ValueError):
    """An eval folder that holds the results of another checkpoint or configuration."""


def eval_key(spec: ModelSpec, ec: EvalConfig, reference: ModelSpec | None, judge: ModelSpec | None) -> dict:
    """What an eval folder's results belong to: the checkpoint (its directory and the hash of
    its model.json), the prompt style, the config's hash, the reference and the judge.

    Args:
      spec: the evaluated model.
      ec: the eval config.
      reference: the win-rate reference model, or None.
      judge: the judge model, or None.

    Returns:
      A JSON-able dict; two evaluations may share a folder only if their keys are equal.
    """
    model_json = io_utils.as_path(spec.model_dir) / "model.json"
    config = json.dumps(dataclasses.asdict(ec), sort_keys=True, default=str)
    return {
        "model": str(spec.model_dir),
        "checkpoint_sha256": hashlib.sha256(model_json.read_bytes()).hexdigest()[:16],
        "prompt_style": spec.prompt_style,
        "config_sha256": hashlib.sha256(config.encode()).hexdigest()[:16],
        "reference": reference.model_dir if reference else None,
        "judge": (judge or reference).model_dir if (judge or reference) else None,
    }


def _claim_eval_dir(out, key: dict) -> None:
    """Writes `key` into a new eval folder, or checks it against the folder's own key.

    Raises:
      EvalDirError: the folder holds another evaluation's results (or files that are not an
        evaluation of ours); nothing in it is changed.
    """
    key_path = out / "eval_key.json"
    if io_utils.exists(key_path):
        old = io_utils.read_json(key_path)
        if old != key:
            diff = ", ".join(
                f"{k}: {old.get(k)!r} there, {key[k]!r} here" for k in key if old.get(k) != key[k]
            )
            raise EvalDirError(
                f"{out}: holds the evaluation of another checkpoint or configuration ({diff}); "
                "its results are kept: choose another --out folder"
            )
        return
    done = out / "eval.json"
    legacy = io_utils.exists(done) and io_utils.read_json(done).get("model") == key["model"]
    problem = None if legacy else io_utils.output_dir_problem(out)  # legacy: results from before keys
    if problem:
        raise EvalDirError(f"{problem} (no eval_key.json: not an eval folder of ours)")
    io_utils.write_json(key_path, key)


def evaluate(
    spec: ModelSpec,
    out_dir,
    ec: EvalConfig,
    reference: tuple[ModelSpec, Any] | None = None,
    judge: ModelSpec | None = None,
    cache: GeneratorCache | None = None,
    mesh=None,
) -> dict[str, Any]:
    """Runs the configured suites on one checkpoint; returns (and writes) EVAL/eval.json.

    reference: (model, eval directory) whose win-rate answers the model is compared with
    (generated there if missing, so a loop evaluates its base model's answers once); the
    judge defaults to the reference model. Without a reference the win-rate suite only
    writes this model's answers. An existing eval.json is returned as is.

    Args:
      spec: the evaluated model.
      out_dir: EVAL, the eval directory (created; resumable).
      ec: what to measure and how.
      reference: (reference model, its eval directory), or None.
      judge: the judge model; None = the reference model.
      cache: the generator cache to load models with; None makes one.
      mesh: the device mesh; None = the cache's.

    Returns:
      `model`, `prompt_style` and `sampling`, plus one entry per suite run: `heldout_loss`,
      `ifeval` and `winrate` (`judge_pairs`' result and `reference`, or why it was skipped).

    Raises:
      EvalDirError: `out_dir` holds the results of another checkpoint or configuration
        (`eval_key`), or files that are not an evaluation; they are left as they are.
    """
    out = io_utils.absolute(out_dir)
    done = out / "eval.json"
    _claim_eval_dir(out, eval_key(spec, ec, reference[0] if reference else None, judge))
    if io_utils.exists(done):
        return io_utils.read_json(done)
    cache = cache or GeneratorCache(mesh)
    results: dict[str, Any] = {
        "model": spec.model_dir,
        "prompt_style": spec.prompt_style,
        "sampling": dataclasses.asdict(ec.sampling),
    }
    # Each suite allocates differently (prompt lengths, slots, prefill shapes): the pages a
    # retained CPU heap keeps from one would otherwise add to the next one's peak. (Their
    # programs stay compiled: the suites share the generator's.)
    if "heldout_loss" in ec.suites:
        cache.release()  # the loss needs the stacked params; keep one copy of the model in memory
        results["heldout_loss"] = heldout_loss(spec, ec, mesh or cache.mesh)
        hooks.after_release()
    if "ifeval" in ec.suites:
        results["ifeval"] = run_ifeval(cache, spec, out, ec)
        hooks.after_release()
    if "judge_calibration" in ec.suites:
        results["judge_calibration"] = run_judge_calibration(cache, spec, out, ec)
        hooks.after_release()
    if "winrate" in ec.suites:
        answers = winrate_answers(cache, spec, out, ec)
        if reference is None or reference[0].model_dir == spec.model_dir:
            results["winrate"] = {"skipped": "no reference model (this model's answers are the reference)"}
        else:
            ref_spec, ref_dir = reference
            ref_out = io_utils.absolute(ref_dir)
            ref_key = ref_out / "eval_key.json"
            if io_utils.exists(ref_key) and io_utils.read_json(ref_key)["model"] != ref_spec.model_dir:
                raise EvalDirError(
                    f"{ref_out}: holds the evaluation of {io_utils.read_json(ref_key)['model']}, "
                    f"not of the reference {ref_spec.model_dir}"
                )
            ref_answers = winrate_answers(cache, ref_spec, ref_out, ec)
            results["winrate"] = {
                **judge_pairs(cache, judge or ref_spec, out, ec, answers, ref_answers),
                "reference": ref_spec.model_dir,
            }
    io_utils.write_json(done, results)
    return results


def headline(results: dict[str, Any]) -> dict[str, float | None]:
    """The few numbers a per-iteration table shows (None where a suite did not run).

    Args:
      results: the contents of an eval.json (`evaluate`).

    Returns:
      IFEval prompt/instruction strict/loose accuracy, `heldout_loss`, `win_rate`,
      `win_rate_ci` ([low, high]) and `win_rate_invalid`.
    """
    ife, loss, wr = results.get("ifeval"), results.get("heldout_loss"), results.get("winrate") or {}
    return {
        "ifeval_prompt_strict": ife["prompt_level"]["strict_accuracy"] if ife else None,
        "ifeval_prompt_loose": ife["prompt_level"]["loose_accuracy"] if ife else None,
        "ifeval_instruction_strict": ife["instruction_level"]["strict_accuracy"] if ife else None,
        "ifeval_instruction_loose": ife["instruction_level"]["loose_accuracy"] if ife else None,
        "heldout_loss": loss["loss"] if loss else None,
        "win_rate": wr.get("win_rate"),
        "win_rate_ci": [wr["ci_low"], wr["ci_high"]] if wr.get("ci_low") is not None else None,
        "win_rate_invalid": wr.get("invalid"),
    }


def percent(v: float | None) -> str:
    """A fraction as percent with one decimal; '-' for a metric that did not run.

    Args:
      v: a fraction, or None.

    Returns:
      E.g. '62.5', or '-'.
    """
    return "-" if v is None else f"{100 * v:.1f}"


def format_win_rate(h: dict[str, Any]) -> str:
    """'62.5 [40.0, 80.0]' (percent, with the interval), plus how many pairs the judge left unreadable.

    Args:
      h: a `headline` dict.

    Returns:
      The win rate text; '-' when none was measured.
    """
    ci = h.get("win_rate_ci")
    text = (
        "-" if h.get("win_rate") is None else f"{percent(h['win_rate'])} [{percent(ci[0])}, {percent(ci[1])}]"
    )
    return text + (f" ({h['win_rate_invalid']} unparseable)" if h.get("win_rate_invalid") else "")


def format_headline(name: str, h: dict[str, Any]) -> str:
    """One line with the headline numbers of one model.

    Args:
      name: the model's label in the line.
      h: a `headline` dict.

    Returns:
      IFEval accuracies, held-out loss and win rate as one indented line.
    """
    loss = "-" if h.get("heldout_loss") is None else f"{h['heldout_loss']:.4f}"
    return (
        f"  {name}: IFEval prompt strict/loose "
        f"{percent(h['ifeval_prompt_strict'])}/{percent(h['ifeval_prompt_loose'])}, "
        f"instruction strict/loose "
        f"{percent(h['ifeval_instruction_strict'])}/{percent(h['ifeval_instruction_loose'])}; "
        f"held-out loss {loss}; win rate vs reference {format_win_rate(h)}"
    )
