"""Contamination guard: keep the evaluation sets out of the training data.

If a synthesized instruction (or a seed task) repeats an IFEval prompt, a held-out pair,
a win-rate instruction or a judge-calibration item, fine-tuning on it inflates the very
numbers that measure the loop. `ContaminationGuard` flags such texts with two tests:

* a shared word n-gram (13 by default, the length used by common decontamination
  practice): a verbatim span of an eval text, however long the rest of the text is;
* ROUGE-L F1 above a threshold (0.7, the synthesis stage's near-duplicate bar): a close
  paraphrase of a whole eval text, or a copy of a short one (too short to hold an n-gram).

Words are `rouge.tokenize`'s (lowercase, alphanumeric), so case and punctuation changes do
not hide a copy. The n-gram test is one set lookup per n-gram of the checked text; the ROUGE
test goes through `RougeDeduper`, built for one text against many.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from isheep_jax.evals import calibration, ifeval, runner
from isheep_jax.loop.rouge import RougeDeduper, tokenize
from isheep_jax.loop.seed_pool import SeedTask


def join_pair(instruction: str, input: str = "") -> str:
    """The text checked for an instruction and its input: both, on separate lines.

    Args:
      instruction: the instruction.
      input: its input ('' for none).

    Returns:
      `instruction`, followed by a newline and `input` when there is one.
    """
    return f"{instruction}\n{input}" if input else instruction


class ContaminationGuard:
    """Flags texts that repeat an evaluation text (shared n-gram or high ROUGE-L).

    Args:
      eval_texts: set name -> [(item id, text)], e.g. `eval_texts()`'s result; labels in
        messages are "<set name>:<item id>".
      ngram: the word n-gram length that marks a verbatim copy.
      rouge_threshold: ROUGE-L F1 above which (strictly) a text counts as a near duplicate.

    Raises:
      ValueError: `ngram` below 1 or `rouge_threshold` outside [0, 1].
    """

    def __init__(
        self,
        eval_texts: Mapping[str, Sequence[tuple[str, str]]],
        ngram: int = 13,
        rouge_threshold: float = 0.7,
    ) -> None:
        if ngram < 1:
            raise ValueError(f"ngram must be >= 1, got {ngram}")
        if not 0.0 <= rouge_threshold <= 1.0:
            raise ValueError(f"rouge_threshold must be in [0, 1], got {rouge_threshold}")
        self.ngram = ngram
        self.rouge_threshold = rouge_threshold
        self._labels: list[str] = []  # deduper index -> "set:id"
        self._rouge = RougeDeduper()
        # n-gram -> index of the first eval text holding it: one dict lookup per n-gram.
        self._ngrams: dict[tuple[str, ...], int] = {}
        for set_name, items in eval_texts.items():
            for item_id, text in items:
                index = self._rouge.add(text)
                self._labels.append(f"{set_name}:{item_id}")
                for gram in _ngrams(tokenize(text), ngram):
                    self._ngrams.setdefault(gram, index)

    def __len__(self) -> int:
        """Number of evaluation texts guarded."""
        return len(self._labels)

    def check(self, text: str) -> str | None:
        """Whether `text` repeats an evaluation text, and which one.

        Args:
          text: the text to check (for an instruction with an input, `join_pair`'s).

        Returns:
          None when clean; else a description of the match: "<set>:<id> (13-gram)" for the
          first of the text's n-grams found in an eval text, or otherwise
          "<set>:<id> (rouge-l 0.82)" for the eval text with the highest ROUGE-L F1 above
          the threshold.
        """
        for gram in _ngrams(tokenize(text), self.ngram):
            index = self._ngrams.get(gram)
            if index is not None:
                return f"{self._labels[index]} ({self.ngram}-gram)"
        found = self._rouge.best_match(text, self.rouge_threshold)
        if found is not None:
            index, score = found
            return f"{self._labels[index]} (rouge-l {score:.2f})"
        return None


def _ngrams(tokens: Sequence[str], n: int) -> Iterable[tuple[str, ...]]:
    return (tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def eval_texts(
    ifeval_file: str = "", heldout_file: str = "", winrate_file: str = "", calibration_file: str = ""
) -> dict[str, list[tuple[str, str]]]:
    """The texts of every evaluation set, as `ContaminationGuard` takes them.

    Each argument is a file path, '' for the shipped set; the same files the evaluation
    reads (`EvalConfig.ifeval_file`, `heldout_file`, `winrate_file`) should be passed, so the
    guard protects what is actually measured.

    Args:
      ifeval_file: IFEval-format prompts (unknown instruction ids are skipped, as the
        evaluation skips them).
      heldout_file: held-out pairs: their instruction and input.
      winrate_file: win-rate instructions; '' = the held-out pairs', as the evaluation does.
      calibration_file: judge calibration items (`evals.calibration`): instruction and input.

    Returns:
      {"ifeval": [(key, prompt)], "heldout": [(id, text)], "winrate": [(id, text)],
      "calibration": [(id, text)]}, ids as strings, texts from `join_pair`.

    Raises:
      DataError: a malformed file; the message names the file and the line.
    """
    prompts = ifeval.load_prompts(ifeval_file or ifeval.shipped_prompts_path(), strict=False).prompts
    return {
        "ifeval": [(str(p.key), p.prompt) for p in prompts],
        "heldout": _pair_texts(heldout_file=heldout_file),
        "winrate": _pair_texts(heldout_file=heldout_file, winrate_file=winrate_file),
        "calibration": [
            (item["id"], join_pair(item["instruction"], item["input"]))
            for item in calibration.load_items(calibration_file or None)
        ],
    }


def _pair_texts(heldout_file: str = "", winrate_file: str = "") -> list[tuple[str, str]]:
    """(id, instruction + input) of the rows the win-rate suite would read.

    `runner.winrate_items` is reused so that the file fallback (winrate_file, else
    heldout_file, else the shipped held-out pairs), the ids (a row's `id`, else its line)
    and the row checks are exactly the evaluation's. Every field it reads is passed, so a
    gin binding of EvalConfig (e.g. a winrate_limit) cannot shrink the guarded set.
    """
    config = runner.EvalConfig(winrate_file=winrate_file, heldout_file=heldout_file, winrate_limit=0)
    return [
        (str(item["id"]), join_pair(item["instruction"], item["input"]))
        for item in runner.winrate_items(config)
    ]


def check_seed_pool(guard: ContaminationGuard, seeds: Iterable[SeedTask]) -> list[tuple[str, str]]:
    """The seed tasks that repeat an evaluation text.

    A seed is checked as instruction + input and, when it has an input, as the instruction
    alone too (an eval instruction copied with a different input is still a leak).

    Args:
      guard: the guard over the evaluation sets.
      seeds: the seed pool (`seed_pool.load_seed_pool()`).

    Returns:
      (seed id, match description) for each contaminated seed, in pool order.
    """
    found: list[tuple[str, str]] = []
    for seed in seeds:
        match = guard.check(join_pair(seed.instruction, seed.input))
        if match is None and seed.input:
            match = guard.check(seed.instruction)
        if match is not None:
            found.append((seed.id, match))
    return found
