"""The I-SHEEP loop: synthesize -> respond -> assess -> filter -> train, iterated and resumable.

Iteration i uses model M_i (M_0 = the base model). Each stage writes its artifacts under
RUN/iter_<i>/ (see run_dir.py); a restarted run skips finished stages and recomputes only
missing sampling chunks, and because every random choice is keyed by (seed, iteration,
stage, row), a resumed run produces the same data as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import gin

from isheep_jax import evals
from isheep_jax.core import choices, hooks, io_utils
from isheep_jax.evals import rating
from isheep_jax.evals.rating import AssessMode
from isheep_jax.loop import assessment, contamination, response_filter, synthesis
from isheep_jax.loop.assessment import RankBy
from isheep_jax.loop.report import format_summary, iteration_summary
from isheep_jax.loop.rouge import RougeDeduper
from isheep_jax.loop.run_dir import STAGES, IterationPaths, RunDir, RunError
from isheep_jax.loop.seed_pool import SeedTask, load_seed_pool
from isheep_jax.model import checkpoint
from isheep_jax.model.embedded import resolve_model
from isheep_jax.model.tokenizer import PromptStyle, Tokenizer, TokenizerError
from isheep_jax.parallel import sharding
from isheep_jax.prompts.templates import load_template, user_text
from isheep_jax.sampling.chunked import Stream, chunk_files, stream_in_chunks
from isheep_jax.sampling.generator import Generator, GeneratorCache, SamplingSettings, completion_stream
from isheep_jax.training.optim import OptimizerConfig

log = logging.getLogger(__name__)

Assessor = Literal["base", "current"]  # which model rates the pairs of iteration i
TrainFrom = Literal["base", "previous"]  # which model iteration i fine-tunes
TrainData = Literal["latest", "cumulative"]  # this iteration's kept pairs, or all iterations'
# Which trained models a run keeps: every iteration's, or only the newest (an older one is
# deleted once a later iteration has trained its own and finished).
KeepModels = Literal["all", "last"]
# How instructions are synthesized: the model continues few-shot lists of seed tasks, or
# (chat models) writes a user message from its chat template's user-turn prefix (Magpie).
SynthesisMode = Literal["few_shot", "template_prefix"]

# Stage offsets of the sampling seed: each (iteration, stage) gets its own random stream.
_SYNTH, _RESPOND, _ASSESS = 0, 1, 2


@gin.configurable
@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything an I-SHEEP run decides; bound in gin files (see gin_configs/runs/).

    Attributes:
      base_model: a checkpoint directory, or 'embedded:smollm2' (the demo model); required.
      iterations: how many iterations to run.
      seed_file: the seed pool file; '' = the package's own seed tasks.
      synthesis_mode: 'few_shot' (the paper's: the model continues numbered lists of
        `k_demos` seed tasks, raw prompts) or 'template_prefix' (Magpie, for chat models: the
        model is prompted with its chat template up to a user message, in the style it is
        prompted with, and writes one instruction; no seed pool is shown). The same
        filters, ROUGE-L dedup and resume apply to both.
      synthesis_prompts: synthesis prompts per iteration; a few-shot prompt yields several
        instructions, a template-prefix prompt one.
      k_demos: seed demos per synthesis prompt.
      tasks_per_prompt: the list length the synthesis prompt announces.
      rouge_threshold: an instruction whose ROUGE-L F1 against the pool exceeds this is a
        near duplicate and dropped.
      assess_mode: how the judge's score is read: 'logits' (the expected score over its
        distribution at the answer position, one prefill per rating) or 'text' (the paper's:
        generate `<score>||<explanation>` and parse it).
      score_threshold: keep scores strictly above (in logits mode: expected scores); 0 = no
        threshold.
      require_both_scores: both the quality and the following score must pass (else one).
      keep_top_fraction: then keep the best ceil(f * n) of the n rated pairs by `rank_by`
        (1 = no cut): selection that fits a judge whose scale is not calibrated.
      keep_top_k: and at most the best k (0 = no limit).
      rank_by: how the two scores rank a pair: 'mean', 'min', 'quality' or 'following'.
      contamination_check: drop kept pairs that overlap an evaluation set (13-gram or
        ROUGE-L against EvalConfig's IFEval prompts, held-out pairs, win-rate instructions
        and judge calibration set) as 'contaminated'; seed tasks that overlap are left out of
        the pool.
      rating_prefill: text that opens the judge's answer, after the rendered prompt (the
        rating templates end with their format line). Logits mode reads the score right
        after it, so it ends where the score starts ('Rating: '); in text mode it is part of
        what the score parser reads.
      base_prompt_style: how the base model is prompted.
      tuned_prompt_style: how trained models are prompted (and trained).
      assessor: which model rates the pairs of iteration i: 'base' or 'current' (M_i).
      train_from: which model iteration i fine-tunes: 'base' or 'previous' (M_i).
      train_data: 'latest' (this iteration's kept pairs) or 'cumulative' (all iterations').
      stop_when_empty: an iteration with no kept pairs ends the run (else the model carries
        over).
      evaluate: evaluate each trained model (and the base model once) with EvalConfig:
        IFEval-style accuracy, held-out loss, win-rate against the base model judged by the
        base model.
      eval_judge: '' = the base model judges the win-rate; else a checkpoint (chat-prompted).
      chunk_size: prompts per resumable sampling chunk.
      keep_models: 'all' keeps every iteration's trained model; 'last' deletes iteration j's
        model (RUN/iter_<j>/train/model, leaving model_pruned.json) once a later iteration
        has trained its own and written its summary: nothing left in the run samples or
        trains from it then, and its evaluation, data and metrics stay. One model on disk
        instead of one per iteration (a 72B model is ~290 GB in f32).
      synth_sampling: sampling settings of the synthesis stage.
      respond_sampling: sampling settings of the response stage.
      rate_sampling: sampling settings of the assessment stage.
      seed: the run's seed; each (iteration, stage) derives its own from it.

    Raises:
      ValueError: an unknown choice, or a count below 1.
    """

    base_model: str = gin.REQUIRED  # a checkpoint directory, or 'embedded:smollm2' (the demo model)
    iterations: int = 2
    seed_file: str = ""  # '' = the package's own seed tasks
    synthesis_mode: SynthesisMode = "few_shot"
    synthesis_prompts: int = 64  # few-shot: several instructions each; template_prefix: one
    k_demos: int = 5
    tasks_per_prompt: int = 20  # the list length the synthesis prompt announces
    rouge_threshold: float = 0.7
    assess_mode: AssessMode = "logits"
    score_threshold: float = 8  # keep scores strictly above (0 = no threshold)
    require_both_scores: bool = True
    keep_top_fraction: float = 1.0
    keep_top_k: int = 0
    rank_by: RankBy = "mean"
    contamination_check: bool = True
    rating_prefill: str = "Rating: "
    base_prompt_style: PromptStyle = "raw"  # how the base model is prompted
    tuned_prompt_style: PromptStyle = "chat"  # how trained models are prompted (and trained)
    assessor: Assessor = "base"
    train_from: TrainFrom = "base"
    train_data: TrainData = "latest"
    stop_when_empty: bool = True  # an iteration with no kept pairs ends the run (else the model carries over)
    # Evaluate each trained model (and the base model once) with EvalConfig: IFEval-style
    # accuracy, held-out loss, win-rate against the base model judged by the base model.
    evaluate: bool = False
    eval_judge: str = ""  # '' = the base model judges the win-rate; else a checkpoint (chat-prompted)
    chunk_size: int = 64  # prompts per resumable sampling chunk
    keep_models: KeepModels = "all"
    synth_sampling: SamplingSettings = SamplingSettings(max_new_tokens=1000)
    respond_sampling: SamplingSettings = SamplingSettings(max_new_tokens=1000)
    rate_sampling: SamplingSettings = SamplingSettings(max_new_tokens=64)
    seed: int = 0

    def __post_init__(self):
        """Checks the choices and that the counts are at least 1."""
        for name, choice in (
            ("synthesis_mode", SynthesisMode),
            ("keep_models", KeepModels),
            ("assessor", Assessor),
            ("assess_mode", AssessMode),
            ("rank_by", RankBy),
            ("train_from", TrainFrom),
            ("train_data", TrainData),
            ("base_prompt_style", PromptStyle),
            ("tuned_prompt_style", PromptStyle),
        ):
            choices.check("LoopConfig", name, getattr(self, name), choice)
        for name in ("iterations", "synthesis_prompts", "k_demos", "chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"LoopConfig.{name} must be >= 1, got {getattr(self, name)}")
        try:
            _ = self.selection  # its checks
        except ValueError as e:
            raise ValueError(f"LoopConfig: {e}") from None

    @property
    def selection(self) -> assessment.Selection:
        """The score filter's settings (threshold, top fraction, top-k, ranking)."""
        return assessment.Selection(
            threshold=self.score_threshold,
            require_both=self.require_both_scores,
            top_fraction=self.keep_top_fraction,
            top_k=self.keep_top_k,
            rank_by=self.rank_by,
        )


def _completions(
    gen: Callable[[], Generator], settings: SamplingSettings, seed: int, chat: bool, desc: str
) -> Stream:
    """A stage's `completion_stream` under its own seed."""
    return completion_stream(gen, dataclasses.replace(settings, seed=seed), chat, desc)


class Loop:
    """Runs (or resumes) the iterations of one run directory.

    Args:
      lc: the run's settings.
      run_dir: RUN, the run directory (opened by `run` with `RunDir.open`).
      mesh: the device mesh; None builds the default one.
      train_config: the `trainer.TrainConfig`; None = its gin-bound defaults.
      optimizer_config: the `OptimizerConfig`; None = its gin-bound defaults.

    Raises:
      ValueError: the seed pool holds fewer than `k_demos` tasks, the base model is not a
        complete checkpoint, the training overrides do not suit it, or its tokenizer cannot
        render a configured prompt style (e.g. 'chat' without a chat template).
    """

    def __init__(self, lc: LoopConfig, run_dir: str, mesh=None, train_config=None, optimizer_config=None):
        # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
        from isheep_jax.training.trainer import TrainConfig

        self.lc, self.run = lc, RunDir(run_dir)
        self.mesh = mesh or sharding.make_mesh()
        self.tc = train_config or TrainConfig()
        self.oc = optimizer_config or OptimizerConfig()
        self.seeds: list[SeedTask] = load_seed_pool(lc.seed_file or None)
        self.guard = None
        if lc.contamination_check:
            ec = evals.EvalConfig()
            self.guard = contamination.ContaminationGuard(
                contamination.eval_texts(
                    ec.ifeval_file, ec.heldout_file, ec.winrate_file, ec.calibration_file
                )
            )
            leaked = dict(contamination.check_seed_pool(self.guard, self.seeds))
            if leaked:
                log.warning(
                    "%d seed task(s) overlap an evaluation set and are left out of the pool: %s",
                    len(leaked),
                    "; ".join(f"{k}: {v}" for k, v in list(leaked.items())[:5]),
                )
                self.seeds = [t for t in self.seeds if t.id not in leaked]
        if len(self.seeds) < lc.k_demos:
            raise ValueError(f"seed pool has {len(self.seeds)} tasks, fewer than k_demos={lc.k_demos}")
        self.base_dir = resolve_model(lc.base_model)
        # The training overrides must suit the base model now, not after an iteration's sampling.
        self.tc.model_config(checkpoint.load_config(self.base_dir))
        # So must the prompt styles: the base tokenizer renders the tuned style too (training
        # and the trained models' prompts), so a missing chat template fails here, not at train.
        tok = Tokenizer(checkpoint.tokenizer_dir(self.base_dir))
        for name in ("base_prompt_style", "tuned_prompt_style"):
            try:
                tok.render_prompt("x", getattr(lc, name))
            except TokenizerError as e:
                raise ValueError(f"LoopConfig.{name} = {getattr(lc, name)!r}: {e}") from None
            if lc.synthesis_mode == "template_prefix":
                try:
                    tok.user_turn_prefix(getattr(lc, name))
                except ValueError as e:  # TokenizerError too
                    raise ValueError(
                        f"LoopConfig.synthesis_mode = 'template_prefix' samples instructions from "
                        f"the chat template, but LoopConfig.{name} = {getattr(lc, name)!r}: {e}"
                    ) from None
        self.models = GeneratorCache(self.mesh)

    # ------------------------------------------------------------------ helpers
    def _seed(self, i: int, stage: int) -> int:
        return self.lc.seed * 1_000_003 + i * 10 + stage

    def _style(self, model_dir: str) -> str:
        return self.lc.base_prompt_style if model_dir == self.base_dir else self.lc.tuned_prompt_style

    def model_for(self, i: int) -> str | None:
        """M_i: the base model, or the model trained in the last iteration that trained one.

        Args:
          i: the iteration.

        Returns:
          The model's checkpoint directory.
        """
        for j in range(i - 1, -1, -1):
            it = self.run.iteration(j)
            if checkpoint.is_complete(it.model_dir):
                return str(it.model_dir)
            if io_utils.exists(it.model_pruned):  # never, unless a run changed keep_models
                raise RunError(
                    f"iteration {i} needs the model of iteration {j}, which was deleted "
                    f"({it.model_pruned}); restart the run in a new run directory"
                )
        return self.base_dir

    def _prune_superseded(self, i: int) -> None:
        """With keep_models = 'last', deletes the models that iteration i's model superseded.

        Called once iteration i's summary is written: every later iteration samples and
        trains from M_{i+1} (or a newer model), never from an older one.

        Args:
          i: a finished iteration.
        """
        if self.lc.keep_models != "last" or not checkpoint.is_complete(self.run.iteration(i).model_dir):
            return
        for j in range(i):
            old = self.run.iteration(j)
            if checkpoint.is_complete(old.model_dir):
                # The marker first: a kill during the deletion leaves a pruned, not a missing, model.
                io_utils.write_json(
                    old.model_pruned,
                    {"deleted": str(old.model_dir), "superseded_by": str(self.run.iteration(i).model_dir)},
                )
                io_utils.remove_tree(old.model_dir)
                log.info(
                    "deleted %s, superseded by iteration %d's model (keep_models = 'last')", old.model_dir, i
                )

    # ------------------------------------------------------------------ stages
    def synthesize(self, i: int, it: IterationPaths, model_dir: str) -> None:
        """Synthesis stage: writes instructions.jsonl and dropped_synthesize.jsonl of iteration `i`.

        The model continues few-shot numbered lists of seed instructions (raw prompts, no chat
        template), or with `synthesis_mode = 'template_prefix'` writes one user message per
        prompt from its chat template's user-turn prefix; the parsed items go through the
        heuristic filter and the ROUGE-L check against the seeds, earlier iterations'
        instructions and the items kept so far.

        Args:
          i: the iteration.
          it: its paths.
          model_dir: M_i, the model that synthesizes.
        """
        lc = self.lc
        if lc.synthesis_mode == "template_prefix":
            # One prompt for all: each row's own random stream makes the messages differ, and
            # the sampler prefills the shared prompt once.
            gen = self.models.get(model_dir)
            prompts = [gen.tokenizer.user_turn_prefix(self._style(model_dir))] * lc.synthesis_prompts
            first = [0] * lc.synthesis_prompts
        else:
            rng = random.Random(f"{lc.seed}-{i}-synthesize")
            template = load_template("instruction_synthesis")
            prompts, first = [], []
            for _ in range(lc.synthesis_prompts):
                text, nxt = synthesis.build_synthesis_prompt(
                    rng.sample(self.seeds, lc.k_demos), template, lc.tasks_per_prompt
                )
                prompts.append(text)
                first.append(nxt)
        # Few-shot synthesis continues a raw numbered list whatever the model (a chat template
        # would make it answer); a user-turn prefix is rendered already, special tokens included.
        outs = stream_in_chunks(
            it.chunks("synthesize"),
            prompts,
            lc.chunk_size,
            _completions(
                lambda: self.models.get(model_dir),
                lc.synth_sampling,
                self._seed(i, _SYNTH),
                lc.synthesis_mode == "template_prefix",
                "synthesize",
            ),
            "synthesize",
        )
        pool = RougeDeduper(t.instruction for t in self.seeds)
        for j in range(i):  # the pool so far includes earlier iterations' instructions
            pool_rows = io_utils.read_jsonl(self.run.iteration(j).instructions)
            for r in pool_rows:
                pool.add(r["instruction"])
        kept, dropped = [], []
        for p, (out, nxt) in enumerate(zip(outs, first)):
            if lc.synthesis_mode == "template_prefix":
                items = [synthesis.parse_user_turn(out["text"], out["finish_reason"])]
            else:
                items = synthesis.parse_instructions(out["text"], nxt, out["finish_reason"])
            for item in items:
                row = {"id": f"{i}-{p}-{item.index}", "instruction": item.instruction, "input": item.input}
                reason = synthesis.heuristic_filter(item)
                if reason is None and pool.is_duplicate(item.instruction, lc.rouge_threshold):
                    reason = synthesis.ROUGE_DUPLICATE
                if reason:
                    dropped.append({**row, "stage": "synthesize", "reason": reason})
                else:
                    pool.add(item.instruction)
                    kept.append(row)
        io_utils.write_jsonl(it.dropped_stage("synthesize"), dropped)
        io_utils.write_jsonl(it.instructions, kept)

    def respond(self, i: int, it: IterationPaths, model_dir: str) -> None:
        """Response stage: writes responses.jsonl and dropped_respond.jsonl of iteration `i`.

        M_i answers every instruction in its prompt style; the rule filter
        (`response_filter.filter_response`) drops failed answers.

        Args:
          i: the iteration.
          it: its paths.
          model_dir: M_i, the model that responds.
        """
        # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
        lc = self.lc
        candidates = io_utils.read_jsonl(it.instructions)
        style = self._style(model_dir)
        tok = self.models.get(model_dir).tokenizer if candidates else None
        prompts = [tok.render_prompt(user_text(c["instruction"], c["input"]), style) for c in candidates]
        outs = stream_in_chunks(
            it.chunks("respond"),
            prompts,
            lc.chunk_size,
            _completions(
                lambda: self.models.get(model_dir),
                lc.respond_sampling,
                self._seed(i, _RESPOND),
                style != "raw",
                "respond",
            ),
            "respond",
        )
        pairs, dropped = [], []
        for c, a in zip(candidates, outs):
            row = {**c, "response": a["text"], "finish_reason": a["finish_reason"]}
            # The filter reads the special tokens too: a chat-turn marker the model wrote
            # mid-answer is leakage, though the stored text drops it.
            reason = response_filter.filter_response(
                a.get("raw_text", a["text"]), c["instruction"], c["input"], a["finish_reason"]
            )
            (dropped if reason else pairs).append(
                {**row, "stage": "respond", "reason": reason} if reason else row
            )
        io_utils.write_jsonl(it.dropped_stage("respond"), dropped)
        io_utils.write_jsonl(it.responses, pairs)

    def assess(self, i: int, it: IterationPaths, model_dir: str) -> None:
        """Assessment stage: writes assessments.jsonl of iteration `i`.

        The assessor rates every pair for quality and for following (`evals.rating`); each
        row gains `<kind>_score` and `<kind>_reason`, and in logits mode `<kind>_mode_score`,
        `<kind>_score_mass` and `<kind>_probs`, in text mode `<kind>_rating` (the reply,
        prefill included).

        Args:
          i: the iteration.
          it: its paths.
          model_dir: M_i, the assessor when `LoopConfig.assessor` is 'current'.
        """
        lc = self.lc
        pairs = io_utils.read_jsonl(it.responses)
        judge = self.base_dir if lc.assessor == "base" else model_dir
        style = self._style(judge)
        tok = self.models.get(judge).tokenizer if pairs else None
        prompts = [
            tok.render_prompt(
                rating.build_rating_prompt(kind, p["instruction"], p["input"], p["response"]), style
            )
            + lc.rating_prefill
            for p in pairs
            for kind in rating.KINDS
        ]
        settings = dataclasses.replace(lc.rate_sampling, seed=self._seed(i, _ASSESS))
        outs = stream_in_chunks(
            it.chunks("assess"),
            prompts,
            lc.chunk_size,
            rating.rate_stream(
                lambda: self.models.get(judge), lc.assess_mode, settings, style != "raw", "assess"
            ),
            "assess",
        )
        rows = []
        for n, p in enumerate(pairs):
            row = dict(p)
            for j, kind in enumerate(rating.KINDS):
                row.update(rating.rating_fields(kind, outs[len(rating.KINDS) * n + j], lc.rating_prefill))
            rows.append(row)
        io_utils.write_jsonl(it.assessments, rows)

    def filter(self, i: int, it: IterationPaths) -> None:
        """Score-filter stage: writes kept.jsonl, and dropped.jsonl with every stage's drops.

        Pairs whose instruction overlaps an evaluation set are dropped first
        ('contaminated', with the match in `contaminated_by`); the others go through
        `assessment.select` (threshold, then top fraction / top-k).

        Args:
          i: the iteration.
          it: its paths.
        """
        rows = io_utils.read_jsonl(it.assessments)
        # An evaluation item is an instruction (with its input): that is what is compared; a
        # long response would only dilute its ROUGE-L.
        leaks = [
            self.guard.check(contamination.join_pair(r["instruction"], r["input"])) if self.guard else None
            for r in rows
        ]
        clean = [r for r, leak in zip(rows, leaks) if leak is None]
        reasons = iter(
            assessment.select(
                [self._rating(r, "quality") for r in clean],
                [self._rating(r, "following") for r in clean],
                [str(r["id"]) for r in clean],
                self.lc.selection,
            )
        )
        kept, dropped = [], []
        for row, leak in zip(rows, leaks):
            if leak is not None:
                dropped.append({**row, "stage": "filter", "reason": "contaminated", "contaminated_by": leak})
                continue
            reason = next(reasons)
            if reason:
                dropped.append({**row, "stage": "assess", "reason": reason})
            else:
                kept.append(row)
        earlier = io_utils.read_jsonl(it.dropped_stage("synthesize")) + io_utils.read_jsonl(
            it.dropped_stage("respond")
        )
        io_utils.write_jsonl(it.dropped, earlier + dropped)
        io_utils.write_jsonl(it.kept, kept)

    @staticmethod
    def _rating(row: dict, kind: str) -> rating.ScoreResult | float:
        """A stored rating as `assessment.select` reads it: the expected score, or the parsed one."""
        if f"{kind}_probs" in row:
            return row[f"{kind}_score"]
        return rating.ScoreResult(row[f"{kind}_score"], "", row[f"{kind}_reason"], "")

    def train(self, i: int, it: IterationPaths, model_dir: str) -> None:
        """Training stage: fine-tunes on the kept pairs into RUN/iter_<i>/train/.

        With no kept pair in this iteration it writes train_skipped.json instead. Pairs are
        prompted in `tuned_prompt_style`; pairs over the training budget are left out (logged).

        Args:
          i: the iteration.
          it: its paths.
          model_dir: M_i, the starting point when `LoopConfig.train_from` is 'previous'.
        """
        # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
        from isheep_jax.training import sft_data, trainer

        lc = self.lc
        self.models.release()  # the trainer loads its own copy; free the sampler's
        if not io_utils.read_jsonl(it.kept):
            io_utils.write_json(
                it.train_skipped, {"reason": "no pair survived the filters; nothing to train on"}
            )
            return
        run_name = os.path.basename(str(self.run.root))
        sources = range(i + 1) if lc.train_data == "cumulative" else [i]
        names = []
        for j in sources:
            kept = self.run.iteration(j).kept
            if io_utils.read_jsonl(kept):
                names.append(sft_data.task_name(run_name, j))
                sft_data.register_sft_task(
                    names[-1], [kept], checkpoint.tokenizer_dir(self.base_dir), lc.tuned_prompt_style
                )
        name = names[0]
        if len(names) > 1:
            name = f"{sft_data.task_name(run_name, i)}_cumulative"
            sft_data.register_mixture(name, names)
        data = sft_data.load_examples(name, self.tc.max_prompt_len, self.tc.max_response_len, self.tc.pack)
        if data.num_too_long:
            log.warning(
                "iteration %d: %d of %d pairs longer than the training budget are left out",
                i,
                data.num_too_long,
                data.num_examples,
            )
        init = self.base_dir if lc.train_from == "base" else model_dir
        trainer.train(init, data, it.train_dir, self.tc, self.oc, self.mesh)

    def evaluate(self, i: int, it: IterationPaths) -> None:
        """Evaluation stage: evaluates this iteration's trained model (and the base model once).

        Writes eval_skipped.json instead when `LoopConfig.evaluate` is off or no model was
        trained in this iteration.

        Args:
          i: the iteration.
          it: its paths.
        """

        if not self.lc.evaluate:
            io_utils.write_json(it.eval_skipped, {"reason": "LoopConfig.evaluate is False"})
            return
        if not checkpoint.is_complete(it.model_dir):
            io_utils.write_json(it.eval_skipped, {"reason": "no model was trained in this iteration"})
            return
        # The judge calibration measures the judge as the assessment stage prompts it.
        ec = dataclasses.replace(evals.EvalConfig(), rating_prefill=self.lc.rating_prefill)
        base = evals.ModelSpec(self.base_dir, self.lc.base_prompt_style)
        log.info("evaluating the base model (once per run) -> %s", self.run.base_eval_dir)
        evals.evaluate(base, self.run.base_eval_dir, ec, cache=self.models)
        judge = evals.ModelSpec(resolve_model(self.lc.eval_judge), "chat") if self.lc.eval_judge else base
        evals.evaluate(
            evals.ModelSpec(str(it.model_dir), self.lc.tuned_prompt_style),
            it.eval_dir,
            ec,
            reference=(base, self.run.base_eval_dir),
            judge=judge,
            cache=self.models,
        )

    def _drop_trainer_state(self, it: IterationPaths) -> None:
        """Deletes a trainer state that outlived its export (a run killed between the two).

        The trainer deletes it right after the export (`trainer.delete_trainer_state`); a
        resumed run skips the finished train stage, so the leftover is removed here.
        """
        if self.tc.keep_trainer_state or not io_utils.exists(it.train_state_dir):
            return
        # Imported here: seqio loads TensorFlow, which only training and tokenizing need.
        from isheep_jax.training import trainer

        if checkpoint.is_complete(it.model_dir):
            trainer.delete_trainer_state(it.train_dir)

    # ------------------------------------------------------------------ driver
    def run_iteration(self, i: int) -> dict:
        """Runs the unfinished stages of iteration `i`, then writes its summary.

        Each stage's seconds accumulate in RUN/iter_<i>/stage_seconds.json, across restarts.

        Args:
          i: the iteration.

        Returns:
          The iteration summary (`report.iteration_summary`), also written to summary.json.
        """
        it = self.run.iteration(i)
        model_dir = self.model_for(i)
        times_path = it.root / "stage_seconds.json"
        times = io_utils.read_json(times_path) if times_path.exists() else {}
        steps = [
            ("synthesize", lambda: self.synthesize(i, it, model_dir)),
            ("respond", lambda: self.respond(i, it, model_dir)),
            ("assess", lambda: self.assess(i, it, model_dir)),
            ("filter", lambda: self.filter(i, it)),
            ("train", lambda: self.train(i, it, model_dir)),
            ("eval", lambda: self.evaluate(i, it)),
        ]
        for stage, fn in steps:
            if it.stage_done(stage):
                continue
            log.info("iteration %d: %s (model %s)", i, stage, model_dir)
            t0 = time.perf_counter()
            fn()
            hooks.between_stages()  # the next stage allocates differently
            times[stage] = round(times.get(stage, 0.0) + time.perf_counter() - t0, 1)
            io_utils.write_json(times_path, times)
        self._drop_trainer_state(it)
        summary = iteration_summary(it, i, model_dir, times)
        io_utils.write_json(it.summary, summary)
        return summary

    def run_all(self) -> list[dict]:
        """Runs or resumes every iteration; with `stop_when_empty`, stops after one with no kept pair.

        A newly finished iteration's summary replaces its row in RUN/metrics.jsonl and is
        printed.

        Returns:
          The summaries of the iterations run, in order.
        """

        summaries = []
        for i in range(self.lc.iterations):
            it = self.run.iteration(i)
            summary = io_utils.read_json(it.summary) if it.stage_done("summary") else None
            if summary is None:
                summary = self.run_iteration(i)
                rows = io_utils.read_jsonl(self.run.metrics_path, missing_ok=True)
                io_utils.write_jsonl(
                    self.run.metrics_path, [r for r in rows if r.get("iteration") != i] + [summary]
                )
                print(format_summary(summary), flush=True)
            summaries.append(summary)
            self._prune_superseded(i)
            if summary["pairs_kept"] == 0 and self.lc.stop_when_empty:
                print(f"iteration {i}: no pair survived the filters; stopping (LoopConfig.stop_when_empty)")
                break
        self.models.release()
        return summaries


def config_for_manifest() -> str:
    """The resolved gin bindings of this run (what the manifest hashes).

    Returns:
      `gin.config_str()`.
    """
    return gin.config_str()


def run(run_dir: str, force: bool = False) -> list[dict]:
    """Runs the loop configured by the parsed gin files; resumes an existing run directory.

    Args:
      run_dir: RUN, the run directory.
      force: continue an existing run even though the gin config changed.

    Returns:
      The iteration summaries (`Loop.run_all`).

    Raises:
      RunError: the directory cannot be created, or holds a run with another config and
        `force` is not set.
    """
    RunDir(run_dir).open(config_for_manifest(), force=force)
    return Loop(LoopConfig(), run_dir).run_all()


def status(run_dir: str) -> dict[str, Any]:
    """What is done and what is next, read from the artifacts alone.

    Args:
      run_dir: RUN, the run directory.

    Returns:
      {"iterations": {i: {"done": [stages], "chunks_on_disk": {stage: files}}}, "next":
      "iteration <i>: <stage>" for the first unfinished iteration on disk, or None}.

    Raises:
      RunError: `run_dir` has no manifest.json.
    """
    run = RunDir(run_dir)
    if not run.manifest_path.exists():
        raise RunError(f"{run_dir}: not a run directory (no manifest.json)")
    out: dict[str, Any] = {"iterations": {}, "next": None}
    for i in run.iterations_present():
        it = run.iteration(i)
        done = [s for s in STAGES if it.stage_done(s)]
        chunks = {
            s: len(chunk_files(it.chunks(s)))
            for s in ("synthesize", "respond", "assess")
            if it.chunks(s).exists()
        }
        out["iterations"][i] = {"done": done, "chunks_on_disk": chunks}
        if out["next"] is None and "summary" not in done:
            nxt = next(s for s in STAGES if s not in done)
            out["next"] = f"iteration {i}: {nxt}"
    return out
