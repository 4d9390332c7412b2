"""Self-assessment, text side: rating prompts, score parsing, the score filter.

The model rates each (instruction, input, response) twice, for *quality* and for
*following*, answering `<score>||<explanation>` with a score from 1 to 10 (DESIGN §1
steps 4-5). Models miss that format in many small ways; `parse_score` accepts the near
misses and says why when it cannot.
"""

from __future__ import annotations

import dataclasses
import re
from string import Template
from typing import Literal

from isheep_jax.loop.prompt_templates import load_template, render

Kind = Literal["quality", "following"]
KINDS: tuple[Kind, ...] = ("quality", "following")
MIN_SCORE, MAX_SCORE = 1, 10

# Parse failures (ScoreResult.reason).
UNPARSEABLE = "unparseable"
OUT_OF_RANGE = "out_of_range"
# Score-filter drop reasons: "<failure>_<kind>" and "low_<kind>".
LOW_QUALITY = "low_quality"
LOW_FOLLOWING = "low_following"
UNPARSEABLE_QUALITY = "unparseable_quality"
UNPARSEABLE_FOLLOWING = "unparseable_following"
OUT_OF_RANGE_QUALITY = "out_of_range_quality"
OUT_OF_RANGE_FOLLOWING = "out_of_range_following"


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


def score_filter(
    quality: ScoreResult | int | None,
    following: ScoreResult | int | None,
    threshold: int = 8,
    require_both: bool = True,
) -> str | None:
    """Returns why a rated pair should be dropped, or None to keep it.

    A score passes when it is strictly greater than `threshold` (8 keeps 9 and 10). With
    `require_both` both must pass and the first failure is reported (quality checked
    first); otherwise one passing score is enough, and the quality failure is reported
    when neither passes. A plain int is taken as a parsed score, None as unparseable.

    Args:
      quality: the quality rating.
      following: the following rating.
      threshold: scores above this pass.
      require_both: whether both scores must pass.

    Returns:
      None to keep the pair, else "low_<kind>", "unparseable_<kind>" or
      "out_of_range_<kind>".
    """
    failures = [_failure(quality, "quality", threshold), _failure(following, "following", threshold)]
    if require_both:
        return failures[0] or failures[1]
    return None if None in failures else failures[0]


def _failure(result: ScoreResult | int | None, kind: str, threshold: int) -> str | None:
    if result is None:
        return f"{UNPARSEABLE}_{kind}"
    if isinstance(result, ScoreResult):
        if result.reason is not None or result.score is None:
            return f"{result.reason or UNPARSEABLE}_{kind}"
        result = result.score
    return None if result > threshold else f"low_{kind}"
