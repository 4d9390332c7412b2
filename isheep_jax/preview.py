"""One self-synthesis + self-assessment pass on a real model (the loop's stages 1-5, no training).

This is what `isheep demo` runs until the full iterated loop lands: the model writes new
instructions from few-shot seed prompts, answers them zero-shot, rates each pair for
quality and instruction following, and the filters keep or drop each pair with a reason.
Artifacts: RUN/{instructions,responses,assessments,kept,dropped}.jsonl and summary.json.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import random
import time

from isheep_jax import assessment, io_utils, response_filter, synthesis
from isheep_jax.generate import Generator, SamplingSettings
from isheep_jax.prompt_templates import load_template
from isheep_jax.rouge import RougeDeduper
from isheep_jax.seed_pool import SeedTask

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PreviewSettings:
    num_prompts: int = 8  # synthesis prompts; each yields several candidate instructions
    k_demos: int = 5
    rouge_threshold: float = 0.7
    score_threshold: int = 8
    prompt_style: str = "chat"  # 'raw' for base models, 'chat' for tuned ones
    synth: SamplingSettings = SamplingSettings(max_new_tokens=160, temperature=1.0, top_p=0.95, batch_size=8)
    respond: SamplingSettings = SamplingSettings(max_new_tokens=128, temperature=1.0, top_p=0.95, batch_size=16)
    rate: SamplingSettings = SamplingSettings(max_new_tokens=24, temperature=1.0, top_p=0.95, batch_size=16)
    seed: int = 0


def run_preview(gen: Generator, seeds: list[SeedTask], run_dir: str, s: PreviewSettings) -> dict:
    """Runs the pass and writes its artifacts; returns the summary."""
    tok = gen.tokenizer
    rng = random.Random(s.seed)
    template = load_template("instruction_synthesis")
    t0 = time.perf_counter()

    prompts, first = [], []
    for _ in range(s.num_prompts):
        text, nxt = synthesis.build_synthesis_prompt(rng.sample(seeds, s.k_demos), template)
        prompts.append(text)
        first.append(nxt)
    # Synthesis continues a raw list, whatever the model: a chat template would make it answer.
    outs = gen.generate(prompts, dataclasses.replace(s.synth, seed=s.seed), progress="synthesize")
    pool = RougeDeduper(t.instruction for t in seeds)
    candidates, dropped = [], []
    for p, (out, nxt) in enumerate(zip(outs, first)):
        for item in synthesis.parse_instructions(out.text, nxt, out.finish_reason):
            row = {"prompt": p, "instruction": item.instruction, "input": item.input}
            reason = synthesis.heuristic_filter(item)
            if reason is None and pool.is_duplicate(item.instruction, s.rouge_threshold):
                reason = synthesis.ROUGE_DUPLICATE
            if reason:
                dropped.append({**row, "stage": "synthesize", "reason": reason})
                continue
            pool.add(item.instruction)
            candidates.append(row)
    io_utils.write_jsonl(os.path.join(run_dir, "instructions.jsonl"), candidates)

    def user_text(c: dict) -> str:
        return f"{c['instruction']}\n\n{c['input']}" if c["input"] else c["instruction"]

    chat = s.prompt_style != "raw"
    answers = gen.generate([tok.render_prompt(user_text(c), s.prompt_style) for c in candidates],
                           dataclasses.replace(s.respond, seed=s.seed + 1), add_special_tokens=not chat,
                           progress="respond")
    pairs = []
    for c, a in zip(candidates, answers):
        row = {**c, "response": a.text, "finish_reason": a.finish_reason}
        reason = response_filter.filter_response(a.text, c["instruction"], c["input"], a.finish_reason)
        if reason:
            dropped.append({**row, "stage": "respond", "reason": reason})
        else:
            pairs.append(row)
    io_utils.write_jsonl(os.path.join(run_dir, "responses.jsonl"), pairs)

    rating_prompts = [tok.render_prompt(assessment.build_rating_prompt(kind, p["instruction"], p["input"],
                                                                       p["response"]), s.prompt_style)
                      for p in pairs for kind in assessment.KINDS]
    ratings = gen.generate(rating_prompts, dataclasses.replace(s.rate, seed=s.seed + 2),
                           add_special_tokens=not chat, progress="assess")
    kept, assessed, hist = [], [], collections.Counter()
    for i, p in enumerate(pairs):
        scores = {kind: assessment.parse_score(ratings[2 * i + j].text) for j, kind in enumerate(assessment.KINDS)}
        row = {**p, **{f"{k}_score": v.score for k, v in scores.items()},
               **{f"{k}_raw": v.raw for k, v in scores.items()}}
        assessed.append(row)
        hist.update(v.score for v in scores.values() if v.score is not None)
        reason = assessment.score_filter(scores["quality"], scores["following"], s.score_threshold)
        if reason:
            dropped.append({**row, "stage": "assess", "reason": reason})
        else:
            kept.append(row)
    io_utils.write_jsonl(os.path.join(run_dir, "assessments.jsonl"), assessed)
    io_utils.write_jsonl(os.path.join(run_dir, "kept.jsonl"), kept)
    io_utils.write_jsonl(os.path.join(run_dir, "dropped.jsonl"), dropped)
    summary = {
        "instructions_parsed": len(candidates) + sum(d["stage"] == "synthesize" for d in dropped),
        "instructions_kept": len(candidates), "responses_kept": len(pairs), "pairs_kept": len(kept),
        "dropped_by_reason": dict(collections.Counter(f"{d['stage']}:{d['reason']}" for d in dropped)),
        "score_histogram": {str(k): hist[k] for k in sorted(hist)},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    io_utils.write_json(os.path.join(run_dir, "summary.json"), summary)
    return summary
