"""AlpacaEval-style pairwise win-rate: judge prompts, verdict parsing, position-swap, rates.

A judge model compares the evaluated model's answer with a reference answer. Judges favour
whichever answer comes first (or second), so every pair is judged twice with the answers
swapped, and the two verdicts are combined from the evaluated model's point of view:

- it wins both orders → win; it loses both → loss;
- anything else (split verdicts, a tie in either order) → tie.

The verdict is read either from the judge's distribution over the labels right after
`[[` (`evals.runner`, verdict_mode 'logits': never unreadable) or from its reply
(`parse_verdict`). An unparseable verdict (→ None) makes the pair *invalid* by default: it is
left out of the rates and counted in `WinRate.invalid`, so a judge that fails to answer shows
up instead of being silently scored. `on_unparseable="tie"` scores such pairs as ties.

Headline, as AlpacaEval: win_rate = (wins + ties / 2) / valid pairs, with a percentile
bootstrap confidence interval over pairs (fixed seed, so reruns print the same interval).
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Literal

import numpy as np

Verdict = Literal["A", "B", "tie"]
Outcome = Literal["win", "tie", "loss"]
OnUnparseable = Literal["drop", "tie"]

_PLACEHOLDERS = ("instruction", "answer_a", "answer_b")


def load_judge_template() -> str:
    """The shipped template, `isheep_jax/evals/data/judge_pairwise.txt`.

    Returns:
      The template text (`string.Template` syntax).
    """
    return (resources.files("isheep_jax.evals") / "data" / "judge_pairwise.txt").read_text()


def build_judge_prompt(instruction: str, answer_a: str, answer_b: str, template: str | None = None) -> str:
    """Fills `$instruction`, `$answer_a`, `$answer_b` of a `string.Template` text.

    `$` inside the answers is safe: only the template's own placeholders are substituted.

    Args:
      instruction: the user's request (stripped).
      answer_a: the answer shown first, as A (stripped).
      answer_b: the answer shown second, as B (stripped).
      template: the template text; None uses `load_judge_template()`.

    Returns:
      The judge prompt.

    Raises:
      ValueError: the template lacks one of the three placeholders, uses another one, or
        holds an invalid `$`.
    """
    text = load_judge_template() if template is None else template
    named = {m.group("named") or m.group("braced") for m in string.Template.pattern.finditer(text)}
    missing = [p for p in _PLACEHOLDERS if p not in named]
    if missing:
        raise ValueError(f"judge template lacks placeholder(s) {['$' + p for p in missing]}")
    try:
        return string.Template(text).substitute(
            instruction=instruction.strip(), answer_a=answer_a.strip(), answer_b=answer_b.strip()
        )
    except KeyError as e:
        raise ValueError(f"judge template uses unknown placeholder ${e.args[0]}") from None


# --- verdict parsing ---------------------------------------------------------------------
# A label is "Output (a)", "Answer B", "Response b", ... in any case, or a bare capital A/B
# (a bare lowercase "a" is usually the article). Group 1 or group 2 holds the letter.
_LABEL = (
    r"(?:(?i:output|answer|response|assistant|option|model|candidate)\s*\(?([ABab])\)?"
    r"|\(?\b([AB])\b\)?)"
)

_BRACKETED = re.compile(r"\[\[\s*(a|b|c|tie)\s*\]\]", re.IGNORECASE)
_BARE = re.compile(
    r"(?i:(?:(?:final\s+)?(?:verdict|answer|choice|winner|decision)\s*(?:is)?\s*[:\-]?\s*)?)"
    r"(?:(?i:output|answer|response|assistant|option|model|candidate)\s*)?\(?([ABab])\)?"
)
_BARE_TIE = re.compile(r"(?i:(?:(?:final\s+)?verdict\s*:?\s*)?(?:tie|draw|equal|c))")
_LEADING = re.compile(
    r"(?:(?i:output|answer|response|assistant|option|model|candidate)\s*\(?([ABab])\)?\b"
    r"|\(?([AB])\)?(?=[.:,)\n]|$))"
)
_BETTER = (
    r"(?i:clearly\s+|slightly\s+|much\s+|far\s+|the\s+)?(?i:better|superior|preferred"
    r"|preferable|stronger|winner|more\s+(?:helpful|accurate|complete|relevant|correct"
    r"|useful|informative|appropriate|precise|faithful))"
)
_PREFERENCES = tuple(
    re.compile(p)
    for p in (
        _LABEL + r"\s+(?i:is|was|seems|appears)\s+" + _BETTER,
        _LABEL + r"\s+(?i:wins)\b",
        r"(?i:prefer|choose|pick|select|go\s+with|vote\s+for)\s+" + _LABEL,
        r"(?i:winner|better\s+(?:one|answer|output|response)|best\s+(?:answer|output|response)"
        r"|verdict|final\s+answer|choice)\s*(?i:is|:)\s*" + _LABEL,
    )
)
# "B is worse" points at A.
_DISPREFERENCES = tuple(
    re.compile(p)
    for p in (
        _LABEL + r"\s+(?i:is|was|seems|appears)\s+(?i:clearly\s+|slightly\s+|much\s+|far\s+)?"
        r"(?i:worse|inferior|weaker|less\s+(?:helpful|accurate|complete|relevant|correct|useful))",
    )
)
_OTHER: dict[str, Verdict] = {"A": "B", "B": "A"}
_TIE_PHRASE = re.compile(
    r"\b(?:tie|tied|draw|equally\s+(?:good|bad|helpful|strong|weak|valid|correct)"
    r"|equal(?:ly)?\s+(?:in\s+)?quality|same\s+quality|neither\s+(?:is|answer|output|response)"
    r"|no\s+(?:clear\s+)?(?:winner|preference|difference))\b",
    re.IGNORECASE,
)


def _letter(match: re.Match) -> Verdict:
    return (match.group(1) or match.group(2)).upper()  # type: ignore[return-value]


def parse_verdict(text: str) -> Verdict | None:
    """ "A", "B" or "tie" from a judge's reply; None when it cannot be read unambiguously.

    Tried in order, the first rule that applies decides:
    1. `[[A]]`, `[[B]]`, `[[C]]`/`[[tie]]` (the last one wins: judges restate the format);
    2. the whole reply is a label ("B", "Output (a)", "Verdict: A") or a tie word;
    3. the reply opens with a label ("Output (b) ...", "A.", "Answer A:");
    4. preference phrases ("Answer B is better", "I prefer A", "The winner is Output (a)",
       "A is worse" → B);
       if they point both ways the reply is ambiguous → None;
    5. tie phrases ("it's a tie", "equally good", "no clear winner").

    Args:
      text: the judge's reply.

    Returns:
      The verdict, or None for an empty, ambiguous or unreadable reply.
    """
    stripped = text.strip().strip("*_`'\" \n\t.!")
    if not stripped:
        return None
    brackets = _BRACKETED.findall(stripped)
    if brackets:
        last = brackets[-1].upper()
        return last if last in ("A", "B") else "tie"  # type: ignore[return-value]
    if m := _BARE.fullmatch(stripped):
        return m.group(1).upper()  # type: ignore[return-value]
    if _BARE_TIE.fullmatch(stripped):
        return "tie"
    if m := _LEADING.match(stripped):
        return _letter(m)
    found = {_letter(m) for pattern in _PREFERENCES for m in pattern.finditer(stripped)}
    found |= {_OTHER[_letter(m)] for p in _DISPREFERENCES for m in p.finditer(stripped)}
    if len(found) == 1:
        return found.pop()
    if found:
        return None
    if _TIE_PHRASE.search(stripped):
        return "tie"
    return None


# --- position swap -----------------------------------------------------------------------


def judge_prompts(
    instruction: str, model_answer: str, reference_answer: str, template: str | None = None
) -> tuple[str, str]:
    """The two judge prompts of one pair: model's answer shown as A, then shown as B.

    Args:
      instruction: the user's request.
      model_answer: the evaluated model's answer.
      reference_answer: the reference model's answer.
      template: the judge template text; None uses the shipped one.

    Returns:
      (prompt with the model's answer as A, prompt with the model's answer as B).
    """
    return (
        build_judge_prompt(instruction, model_answer, reference_answer, template),
        build_judge_prompt(instruction, reference_answer, model_answer, template),
    )


def combine(
    model_first: Verdict | None, model_second: Verdict | None, on_unparseable: OnUnparseable = "drop"
) -> Outcome | None:
    """The pair's outcome for the evaluated model (see module doc); None = invalid pair.

    `model_first` is the verdict when the model's answer was A, `model_second` when it was B.

    Args:
      model_first: the verdict with the model's answer as A; None if unparseable.
      model_second: the verdict with the model's answer as B; None if unparseable.
      on_unparseable: "drop" makes a pair with an unparseable verdict invalid, "tie" scores
        it as a tie.

    Returns:
      "win", "tie" or "loss", or None for an invalid pair.
    """
    if model_first is None or model_second is None:
        return "tie" if on_unparseable == "tie" else None
    first = {"A": "win", "B": "loss", "tie": "tie"}[model_first]
    second = {"B": "win", "A": "loss", "tie": "tie"}[model_second]
    return first if first == second else "tie"  # type: ignore[return-value]


@dataclass(frozen=True)
class PairJudgment:
    """Both verdicts of one pair and the judge's raw replies (model-first, model-second).

    Attributes:
      model_first: the verdict with the model's answer as A; None if unparseable.
      model_second: the verdict with the model's answer as B; None if unparseable.
      replies: the judge's two raw replies, in the same order.
      probs: where the verdicts were read from the judge's distribution, its probabilities
        of the labels (A, B, tie) in each order; None for parsed replies.
    """

    model_first: Verdict | None
    model_second: Verdict | None
    replies: tuple[str, str] = ("", "")
    probs: tuple[Sequence[float], Sequence[float]] | None = None

    def outcome(self, on_unparseable: OnUnparseable = "drop") -> Outcome | None:
        """The pair's outcome (`combine`).

        Args:
          on_unparseable: "drop" (an unparseable verdict makes the pair invalid) or "tie".

        Returns:
          "win", "tie" or "loss" for the evaluated model, or None for an invalid pair.
        """
        return combine(self.model_first, self.model_second, on_unparseable)


def judge_all(
    triples: Sequence[tuple[str, str, str]],
    generate: Callable[[Sequence[str]], Sequence[str]],
    template: str | None = None,
) -> list[PairJudgment]:
    """Judges (instruction, model_answer, reference_answer) triples in one batched call.

    `generate` maps judge prompts to the judge's replies (a sampler, or a stub in tests).

    Args:
      triples: (instruction, model answer, reference answer) per pair.
      generate: judge prompts -> replies, one reply per prompt, in order.
      template: the judge template text; None uses the shipped one.

    Returns:
      One `PairJudgment` per triple, in order.

    Raises:
      ValueError: `generate` returned a different number of replies than prompts.
    """
    prompts = [p for t in triples for p in judge_prompts(*t, template=template)]
    replies = list(generate(prompts))
    if len(replies) != len(prompts):
        raise ValueError(f"judge returned {len(replies)} replies for {len(prompts)} prompts")
    return [
        PairJudgment(parse_verdict(first), parse_verdict(second), (first, second))
        for first, second in zip(replies[0::2], replies[1::2])
    ]


# --- rates -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WinRate:
    """Counts and rates over valid pairs; `win_rate` counts a tie as half a win.

    Attributes:
      wins: valid pairs the model won.
      ties: valid pairs tied.
      losses: valid pairs the model lost.
      invalid: pairs left out for an unparseable verdict.
      win_rate: (wins + ties / 2) / valid pairs; NaN without valid pairs.
      ci_low: lower end of the bootstrap confidence interval (NaN without valid pairs).
      ci_high: upper end of the interval.
      confidence: the interval's confidence level, e.g. 0.95.
    """

    wins: int
    ties: int
    losses: int
    invalid: int
    win_rate: float
    ci_low: float
    ci_high: float
    confidence: float

    @property
    def n(self) -> int:
        """Number of valid pairs."""
        return self.wins + self.ties + self.losses

    @property
    def win_fraction(self) -> float:
        """wins / n; NaN without valid pairs."""
        return self.wins / self.n if self.n else float("nan")

    @property
    def tie_fraction(self) -> float:
        """ties / n; NaN without valid pairs."""
        return self.ties / self.n if self.n else float("nan")

    @property
    def loss_fraction(self) -> float:
        """losses / n; NaN without valid pairs."""
        return self.losses / self.n if self.n else float("nan")


def win_rate(
    outcomes: Iterable[Outcome | None], *, confidence: float = 0.95, num_resamples: int = 2000, seed: int = 0
) -> WinRate:
    """Aggregates pair outcomes (None = invalid pair) into a `WinRate`.

    The interval is a percentile bootstrap of the mean per-pair score (win 1, tie 0.5,
    loss 0) with `num_resamples` resamples from `numpy.random.default_rng(seed)`.

    Args:
      outcomes: "win", "tie", "loss" or None (invalid) per pair.
      confidence: the interval's confidence level, in (0, 1).
      num_resamples: bootstrap resamples.
      seed: the bootstrap's seed (a fixed seed gives the same interval on every run).

    Returns:
      The counts, the win rate and its interval.

    Raises:
      ValueError: `confidence` is outside (0, 1), or an outcome is not one of the four.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    values = {"win": 1.0, "tie": 0.5, "loss": 0.0}
    outcomes = list(outcomes)
    bad = {o for o in outcomes if o is not None and o not in values}
    if bad:
        raise ValueError(f"unknown outcome(s) {sorted(bad)}; expected win, tie, loss or None")
    scores = np.array([values[o] for o in outcomes if o is not None])
    counts = {k: sum(1 for o in outcomes if o == k) for k in values}
    if scores.size == 0:
        point = low = high = float("nan")
    else:
        point = float(scores.mean())
        rng = np.random.default_rng(seed)
        means = scores[rng.integers(0, scores.size, (num_resamples, scores.size))].mean(axis=1)
        tail = (1 - confidence) / 2
        low, high = (float(q) for q in np.quantile(means, [tail, 1 - tail]))
    return WinRate(
        wins=counts["win"],
        ties=counts["tie"],
        losses=counts["loss"],
        invalid=sum(1 for o in outcomes if o is None),
        win_rate=point,
        ci_low=low,
        ci_high=high,
        confidence=confidence,
    )
