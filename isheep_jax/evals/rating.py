"""The rating judge: rating prompts, and a score read from the judge's distribution or from its text.

The judge rates each (instruction, input, response) twice, for *quality* and for
*following*, with a score from 1 to 10 (DESIGN §1 step 4). Two modes (`AssessMode`):

- 'logits' (default): one prefill of the rating prompt gives the probability of each score
  at the answer position (`score_tokens`, `choice_probabilities`); the expected score
  sum_k k p(k) (normalised over 1..10) ranks answers even where the most likely score is the
  same for all of them, and there is nothing to parse (G-Eval, DESIGN §8).
- 'text' (the paper's): the judge writes `<score>||<explanation>` and `parse_score` reads
  it, accepting the near misses and saying why when it cannot.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Sequence
from string import Template
from typing import Literal

import numpy as np

from isheep_jax.core import choices
from isheep_jax.prompts.templates import load_template, render
from isheep_jax.sampling.chunked import Stream, per_group
from isheep_jax.sampling.generator import Generator, SamplingSettings, completion_rows, completion_stream

Kind = Literal["quality", "following"]
KINDS: tuple[Kind, ...] = ("quality", "following")
MIN_SCORE, MAX_SCORE = 1, 10

# Parse failures (ScoreResult.reason).
UNPARSEABLE = "unparseable"
OUT_OF_RANGE = "out_of_range"


@dataclasses.dataclass(frozen=True)
class ScoreResult:
    """A parsed rating.

    `score` is None exactly when `reason` is set; `raw` is the number as the model wrote it
    ("" when none was found), kept for drop statistics.

    Attributes:
      score: the score, an integer from 1 to 10, or None.
      explanation: the text after the score (or the whole cleaned reply).
      reason: None, UNPARSEABLE or OUT_OF_RANGE.
      raw: the number as written.
    """

    score: int | None
    explanation: str = ""
    reason: str | None = None
    raw: str = ""


def build_rating_prompt(
    kind: Kind, instruction: str, input: str, response: str, template: Template | str | None = None
) -> str:
    """Renders the `kind` rating prompt; `template=None` uses the shipped `rate_<kind>`.

    Placeholders: `$task` (the instruction, then the input on the next line when there is
    one, as the model saw it), `$instruction`, `$input`, `$response`.

    Args:
      kind: "quality" or "following".
      instruction: the synthesized instruction.
      input: its input ('' for none).
      response: the response to rate.
      template: the template (or its text); None loads `rate_<kind>`.

    Returns:
      The rating prompt.

    Raises:
      ValueError: `kind` is not one of `KINDS`.
    """
    if kind not in KINDS:
        raise ValueError(f"rating kind must be one of {KINDS}, got {kind!r}")
    if template is None:
        template = load_template(f"rate_{kind}")
    task = f"{instruction}\n{input}" if input.strip() else instruction
    return render(template, task=task, instruction=instruction, input=input, response=response)


_NUMBER = r"[-+]?\d+(?:\.\d+)?(?!\w|\.\d)"  # not "1st", not the "1.2" of "1.2.3"
# "/10", "out of 10" after the number; "(1-10)", "1 to 10", "on a scale of 1-10" spans
# that are not the score.
_SCALE_SUFFIX = r"(?:\s*(?:/|out\s+of)\s*10(?:\.0+)?\b)?"
_SCALE_RANGE_RE = re.compile(r"\(?\b(?:on\s+a\s+scale\s+(?:of|from)\s+)?1\s*(?:-|–|to)\s*10\b\)?", re.I)
_MARKUP_RE = re.compile(r"\*\*|__|`|\[\[|\]\]")
# A line opening with the score, after bullets/quotes/labels: "8", "- 8/10", "Score: 8".
_LEADING_RE = re.compile(
    r"^[\s>*#•-]*?(?:(?:final\s+|overall\s+)?(?:score|rating|grade)\s*(?:is)?\s*[:=]?\s*)?"
    rf"(?P<num>{_NUMBER}){_SCALE_SUFFIX}(?P<rest>.*)$",
    re.I | re.S,
)
# A score named anywhere in a line: "I would rate it 7 out of 10", "... Score: 9",
# "I'd give it an 8".
_LABELLED_RE = re.compile(
    r"\b(?:(?:score|rating|rate|grade)\b[^\d\n]{0,30}?|give\s+(?:it|this(?:\s+response)?|the\s+response)\s+(?:an?\s+)?)"
    rf"(?P<num>{_NUMBER}){_SCALE_SUFFIX}",
    re.I,
)
# An explicit fraction of the scale anywhere in the line: "The response is 10 out of 10."
_OUT_OF_TEN_RE = re.compile(rf"(?<![\d.])(?P<num>{_NUMBER})\s*(?:/|out\s+of)\s*10(?:\.0+)?\b", re.I)
_EXPLANATION_LEAD_RE = re.compile(r"^[\s\-–—:.,;)|]*")


def parse_score(text: object) -> ScoreResult:
    """Reads a `<score>||<explanation>` rating; never raises.

    With "||": the score is the last number on the last line before it ("Score: 8/10",
    "**9**", "7.0"; scale spans like "(1-10)" are ignored). Without: lines holding no digit
    are skipped as preamble, and the first line with one must open with the score ("9 -
    good", "8/10", "Score: 8") or name it ("I rate it 7 out of 10"). Decimals are rounded
    (Python `round`, as the reference pipeline does) once inside 1-10; a number outside 1-10
    -> OUT_OF_RANGE; no score -> UNPARSEABLE.

    Args:
      text: the model's rating reply; anything that is not a str is UNPARSEABLE.

    Returns:
      The score with its explanation, or the reason there is none.
    """
    if not isinstance(text, str):
        return ScoreResult(None, "", UNPARSEABLE)
    clean = _MARKUP_RE.sub("", text).strip()
    if "||" in clean:
        head, _, explanation = clean.partition("||")
        lines = [line for line in head.splitlines() if line.strip()]
        if lines:
            numbers = re.findall(_NUMBER, _SCALE_RANGE_RE.sub(" ", _strip_scale_suffix(lines[-1])))
            if numbers:
                return _result(numbers[-1], explanation.strip())
    lines = clean.splitlines()
    for i, line in enumerate(lines):
        if not any(c.isdigit() for c in line):
            continue
        body = _SCALE_RANGE_RE.sub(" ", line).strip()
        rest = "\n".join(lines[i + 1 :])
        leading = _LEADING_RE.match(body)
        if leading:
            explanation = _EXPLANATION_LEAD_RE.sub("", leading.group("rest"))
            return _result(
                leading.group("num"), "\n".join(p for p in (explanation.strip(), rest.strip()) if p)
            )
        labelled = _LABELLED_RE.search(body)
        if labelled:
            return _result(labelled.group("num"), clean)
        fraction = _OUT_OF_TEN_RE.search(body)
        if fraction:
            return _result(fraction.group("num"), clean)
        break  # a number deep in prose is not a score
    return ScoreResult(None, clean, UNPARSEABLE)


def _strip_scale_suffix(line: str) -> str:
    return re.sub(r"(?:/|out\s+of)\s*10(?:\.0+)?\b", " ", line, flags=re.I)


def _result(number: str, explanation: str) -> ScoreResult:
    value = float(number)  # the pattern guarantees a decimal literal; huge ones give inf
    if not MIN_SCORE <= value <= MAX_SCORE:
        return ScoreResult(None, explanation, OUT_OF_RANGE, raw=number)
    return ScoreResult(round(value), explanation, None, raw=number)


# ------------------------------------------------------------------ scores from the distribution
AssessMode = Literal["logits", "text"]
SCORES = tuple(range(MIN_SCORE, MAX_SCORE + 1))


class ScoreTokenError(ValueError):
    """The labels cannot be read from one prefill after this prompt (see `choice_tokens`)."""


@dataclasses.dataclass(frozen=True)
class ChoiceTokens:
    """How a set of answer labels (the scores "1".."10", verdicts "A"/"B"/"C") is written in
    token ids right after a prompt.

    Attributes:
      labels: the labels, in order.
      sequences: the token ids of each label (SmolLM2 writes "10" as "1", "0").
      forced: the tokens fed after the prompt so that every label's later tokens are read
        from the same prefill: the longest proper prefix of a label ("1" for SmolLM2's
        scores, none where "10" is one token).
      select: the token ids whose log-probabilities are read, ascending.
      continuations: tokens that would extend a label into another word or number (their
        text starts with one of `choice_tokens`' `continues` characters); read only where a
        label is the start of another ("1" of "10"), else empty.
    """

    labels: tuple[str, ...]
    sequences: tuple[tuple[int, ...], ...]
    forced: tuple[int, ...]
    select: tuple[int, ...]
    continuations: tuple[int, ...]

    def needs_end(self, i: int) -> bool:
        """Whether label i's tokens start another label's (so the label must end there)."""
        s = self.sequences[i]
        return any(len(o) > len(s) and o[: len(s)] == s for o in self.sequences)


def choice_tokens(
    tokenizer, prompt: str, labels: Sequence[str], continues: str = "0123456789"
) -> ChoiceTokens:
    """The token ids of each label as the model would write it right after `prompt`.

    A label's tokens are those `prompt + label` adds to `prompt`'s: that keeps the
    tokenizer's merges at the boundary exact. The prompts of one stage end with the same
    template text, so one prompt stands for all of them.

    Args:
      tokenizer: the model's `Tokenizer` (`encode`, `decode`, `vocab_size`).
      prompt: a rendered prompt, as the model reads it (prefill included).
      labels: the answers to read, e.g. "1".."10".
      continues: the first characters of tokens that extend a label that starts another
        (digits: "1" then "0" is not the score 1).

    Returns:
      The `ChoiceTokens`.

    Raises:
      ScoreTokenError: the prompt's last token merges with a label (e.g. a prompt ending
        in a digit), two labels have the same tokens, or the labels' proper prefixes do not
        lie on one path of tokens (one prefill with forced tokens could not read them all).
    """
    base = tokenizer.encode(prompt, add_special_tokens=False)
    sequences = []
    for label in labels:
        full = tokenizer.encode(prompt + label, add_special_tokens=False)
        if full[: len(base)] != base or len(full) == len(base):
            raise ScoreTokenError(
                f"the prompt's end {prompt[-20:]!r} merges with the answer {label!r} into one token; "
                "end the prompt (or its prefill, e.g. LoopConfig.rating_prefill) with a space, a colon "
                "or a newline"
            )
        sequences.append(tuple(full[len(base) :]))
    if len(set(sequences)) < len(sequences):
        raise ScoreTokenError(f"two of the answers {list(labels)} have the same tokens after the prompt")
    prefixes = {s[:j] for s in sequences for j in range(1, len(s))}
    forced = max(prefixes, key=len, default=())
    if any(forced[: len(p)] != p for p in prefixes):
        raise ScoreTokenError(
            f"the answers' tokens {sequences} branch after a common start; one prefill cannot read them"
        )
    ct = ChoiceTokens(tuple(labels), tuple(sequences), forced, (), ())
    extend: tuple[int, ...] = ()
    if any(ct.needs_end(i) for i in range(len(labels))):
        extend = tuple(
            i for i in range(tokenizer.vocab_size) if tokenizer.decode([i], False)[:1] in continues
        )
    select = tuple(sorted({t for s in sequences for t in s} | set(extend)))
    return dataclasses.replace(ct, select=select, continuations=extend)


def score_tokens(tokenizer, prompt: str) -> ChoiceTokens:
    """`choice_tokens` of the scores "1".."10" after a rating prompt.

    Args:
      tokenizer: the judge's `Tokenizer`.
      prompt: a rendered rating prompt, prefill included.

    Returns:
      The `ChoiceTokens` of the scores.
    """
    return choice_tokens(tokenizer, prompt, [str(k) for k in SCORES])


def choice_probabilities(logprobs: np.ndarray, ct: ChoiceTokens) -> np.ndarray:
    """The model's probability of writing each label, from one prefill's log-probabilities.

    p(label) is the product of the conditional probabilities of its tokens; where a label's
    tokens start another's ("1" of "10"), times the probability that it ends there
    (1 - p(a continuation token next)), so "10" is never counted as a "1". Not normalised:
    the sum is how much of the model's mass went to the labels at all.

    Args:
      logprobs: [N, F + 1, K] log p of `ct.select` after each prompt followed by
        `ct.forced[:j]` (`Generator.score(prompts, ct.select, ct.forced)`).
      ct: the prompts' `ChoiceTokens`.

    Returns:
      [N, len(labels)] float64 probabilities.
    """
    col = {t: c for c, t in enumerate(ct.select)}
    probs = np.exp(np.asarray(logprobs, np.float64))
    out = np.ones((probs.shape[0], len(ct.labels)))
    extend = [col[d] for d in ct.continuations]
    for i, seq in enumerate(ct.sequences):
        for j, t in enumerate(seq):
            out[:, i] *= probs[:, j, col[t]]
        if ct.needs_end(i):
            out[:, i] *= np.clip(1.0 - probs[:, len(seq), extend].sum(axis=-1), 0.0, 1.0)
    return out


def label_probabilities(
    gen: Generator,
    prompts: Sequence[str],
    labels: Sequence[str],
    batch_size: int,
    chat: bool,
    desc: str,
    continues: str = "0123456789",
) -> np.ndarray:
    """p(each label) right after each prompt, from one prefill per prompt (no decoding).

    Args:
      gen: the model's generator.
      prompts: rendered prompts that end with the same text (prefill included).
      labels: the answers to read.
      batch_size: the most prompts per prefill (`Generator.score`).
      chat: the prompts were rendered with a chat template (no BOS added).
      desc: the progress bar's description.
      continues: see `choice_tokens`.

    Returns:
      [N, len(labels)] float64 probabilities (not normalised).
    """
    if not prompts:
        return np.zeros((0, len(labels)))
    ct = choice_tokens(gen.tokenizer, prompts[0], labels, continues)
    logprobs = gen.score(
        prompts, ct.select, ct.forced, batch_size=batch_size, add_special_tokens=not chat, progress=desc
    )
    return choice_probabilities(logprobs, ct)


@dataclasses.dataclass(frozen=True)
class ScoreSummary:
    """A rating read from the distribution over the scores.

    Attributes:
      expected: sum_k k p(k) with p normalised over 1..10 (5.5 if the judge gave the scores
        no mass at all).
      mode: the most likely score (the lowest on a tie).
      mass: the unnormalised sum of p(k): how much the judge meant to answer with a score.
    """

    expected: float
    mode: int
    mass: float


def summarize_scores(probs: np.ndarray) -> list[ScoreSummary]:
    """Expected score, most likely score and mass of each row of `score_probabilities`.

    Args:
      probs: [N, 10] probabilities of the scores 1..10 (`choice_probabilities`).

    Returns:
      One `ScoreSummary` per row.
    """
    probs = np.asarray(probs, np.float64)
    mass = probs.sum(axis=-1)
    norm = np.where(mass[:, None] > 0, probs / np.where(mass > 0, mass, 1.0)[:, None], 1.0 / len(SCORES))
    expected = norm @ np.asarray(SCORES, np.float64)
    mode = np.asarray(SCORES)[np.argmax(probs, axis=-1)]
    return [ScoreSummary(float(e), int(m), float(s)) for e, m, s in zip(expected, mode, mass)]


# ------------------------------------------------------------------ running the judge
def round_sig(x: float) -> float:
    """`x` to 6 significant digits, for JSON: small probabilities keep their size.

    Args:
      x: a float.

    Returns:
      The rounded float.
    """
    return float(f"{x:.6g}")


def rate_rows(
    gen: Generator,
    prompts: Sequence[str],
    mode: AssessMode,
    settings: SamplingSettings,
    row_ids: Sequence[int],
    chat: bool,
    desc: str,
) -> list[dict]:
    """The judge's raw results for rendered rating prompts (what a stage's chunk files store).

    Args:
      gen: the judge's generator.
      prompts: rendered rating prompts (prefill included); in logits mode they end with the
        same template text (`score_tokens`).
      mode: 'logits': one prefill per prompt, no decoding; 'text': sample a reply.
      settings: the judge's sampling settings (logits mode uses only `batch_size`).
      row_ids: stable row ids keying the random streams (text mode).
      chat: the prompts were rendered with a chat template (no BOS added).
      desc: the progress bar's description.

    Returns:
      One dict per prompt: logits mode {"score_probs": [p(1), ..., p(10)]}; text mode
      `completion_rows`' {"text", "finish_reason", "num_tokens", ...}.
    """
    choices.check("rate_rows", "mode", mode, AssessMode)
    if mode == "text":
        return completion_rows(gen, prompts, row_ids, settings, chat, desc)
    probs = label_probabilities(gen, prompts, [str(k) for k in SCORES], settings.batch_size, chat, desc)
    return [{"score_probs": [round_sig(p) for p in row]} for row in probs]


def rate_stream(
    gen: Callable[[], Generator], mode: AssessMode, settings: SamplingSettings, chat: bool, desc: str
) -> Stream:
    """The judge as a `chunked.Stream`: text mode samples every missing chunk in one call
    (slots stay busy across chunks); logits mode scores chunk by chunk (`rate_rows`).

    Args:
      gen: returns the judge's generator (called lazily: nothing loads when every chunk is on
        disk).
      mode: 'logits' or 'text' (`rate_rows`).
      settings: the judge's sampling settings.
      chat: the prompts were rendered with a chat template (no BOS added).
      desc: the progress bar's description.

    Returns:
      `stream(prompts, row_ids, groups, on_row)`, reporting `rate_rows`' dicts.
    """
    choices.check("rate_stream", "mode", mode, AssessMode)
    if mode == "logits":
        return per_group(lambda p, ids: rate_rows(gen(), p, mode, settings, ids, chat, desc))
    return completion_stream(gen, settings, chat, desc)


def rating_fields(kind: Kind, row: dict, prefill: str = "") -> dict:
    """A pair's `<kind>_*` fields from one `rate_rows` result.

    Both modes give `<kind>_score` (the expected score in logits mode, rounded to 4
    decimals; the parsed integer in text mode, None when unparseable) and `<kind>_reason`
    (None, or why text mode found no score). Logits mode adds `<kind>_mode_score` (the most
    likely score), `<kind>_score_mass` and `<kind>_probs`; text mode `<kind>_rating` (the
    reply, prefill included).

    Args:
      kind: "quality" or "following".
      row: one result of `rate_rows`.
      prefill: the text the judge's reply was opened with (text mode).

    Returns:
      The fields.
    """
    if "score_probs" in row:
        (s,) = summarize_scores(np.asarray([row["score_probs"]]))
        return {
            f"{kind}_score": round(s.expected, 4),
            f"{kind}_reason": None,
            f"{kind}_mode_score": s.mode,
            f"{kind}_score_mass": round_sig(s.mass),
            f"{kind}_probs": row["score_probs"],
        }
    rating = prefill + row["text"]
    res = parse_score(rating)
    return {f"{kind}_score": res.score, f"{kind}_reason": res.reason, f"{kind}_rating": rating}
