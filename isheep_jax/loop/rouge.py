"""ROUGE-L F1 (as `rouge_score`'s `rougeL`, no stemmer) and a near-duplicate pool.

The synthesis stage drops an instruction whose ROUGE-L F1 against any instruction already
in the pool exceeds 0.7 (DESIGN §1). With ~10k candidates against a pool that grows to
~10k, the naive all-pairs O(n*m) DP is ~10^8 pair scores; this module makes that cheap:

* LCS is bit-parallel (Allison-Dix / Hyyro): one sequence becomes per-token bit masks held
  in Python ints, and each token of the other costs a handful of big-int operations.
* `RougeDeduper` keeps an inverted index over (token, occurrence) elements of the pool.
  A pool entry can beat the threshold only if it shares at least `alpha` elements with the
  candidate, so probing the candidate's `m - alpha + 1` rarest elements finds every such
  entry (prefix filtering). Found entries then pass a length-ratio bound, a bound from the
  probe hits, a token-multiset-overlap bound, and only then the exact LCS.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

import numpy as np

# rouge_score/tokenize.py: lowercase, non-[a-z0-9] runs become spaces, split on spaces,
# keep only non-empty [a-z0-9]+ tokens. str.lower() is applied first there too, so the
# same Unicode case folding quirks (e.g. the Kelvin sign -> "k") carry over.
_NON_ALNUM = re.compile(r"[^a-z0-9]+")

# Bounds are compared against `threshold - _SLACK`, so float rounding in the exact score
# can never make a pruned pair a missed duplicate.
_SLACK = 1e-9


def tokenize(text: str) -> list[str]:
    """Tokens exactly as `rouge_score.tokenize.tokenize(text, stemmer=None)` yields them.

    Args:
      text: any text.

    Returns:
      Lowercase [a-z0-9]+ tokens in order.
    """
    return _NON_ALNUM.sub(" ", text.lower()).split()


def f_measure(lcs: int, candidate_len: int, reference_len: int) -> float:
    """ROUGE-L F1 from an LCS length, with `rouge_score`'s float arithmetic.

    rouge_score computes precision = lcs/len(prediction), recall = lcs/len(target) and
    2*p*r/(p+r); we follow the same operation order so scores match to the last bit.

    Args:
      lcs: the LCS length.
      candidate_len: tokens of the candidate (prediction).
      reference_len: tokens of the reference (target).

    Returns:
      The F1 score; 0.0 when either side is empty or nothing matches.
    """
    if candidate_len == 0 or reference_len == 0 or lcs == 0:
        return 0.0
    precision = lcs / candidate_len
    recall = lcs / reference_len
    return 2 * precision * recall / (precision + recall)


def match_masks(seq: Sequence[Hashable]) -> dict[Hashable, int]:
    """Bit i of `masks[tok]` is set where `seq[i] == tok`: the pattern side of `lcs_length`.

    Args:
      seq: the pattern sequence.

    Returns:
      Token -> bit mask (a Python int) of its positions in `seq`.
    """
    masks: dict[Hashable, int] = {}
    for i, tok in enumerate(seq):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def lcs_with_masks(masks: dict[Hashable, int], pattern_len: int, text: Iterable[Hashable]) -> int:
    """LCS length of the masked pattern and `text`, bit-parallel (Allison-Dix / Hyyro).

    V holds a 1 bit for every pattern position not yet matched on the current frontier;
    LCS = pattern_len - popcount(V). Tokens absent from the pattern leave V unchanged,
    so they are skipped. Carries may set bits above `pattern_len`; they never flow back
    down, so masking once at the end is enough.

    Args:
      masks: `match_masks(pattern)`.
      pattern_len: len(pattern).
      text: the other sequence.

    Returns:
      The length of the longest common subsequence.
    """
    full = (1 << pattern_len) - 1
    v = full
    for tok in text:
        m = masks.get(tok)
        if m:
            u = v & m
            v = (v + u) | (v - u)
    return pattern_len - (v & full).bit_count()


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Length of the longest common subsequence of two token sequences.

    Args:
      a: one sequence.
      b: the other.

    Returns:
      The LCS length.
    """
    if len(a) < len(b):  # the shorter side as bit masks keeps the ints small
        a, b = b, a
    return lcs_with_masks(match_masks(b), len(b), a)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 between two texts.

    Equals `RougeScorer(["rougeL"]).score(reference, candidate)["rougeL"].fmeasure` (F1 is
    symmetric, so the argument order is moot).

    Args:
      candidate: one text.
      reference: the other.

    Returns:
      The F1 score in [0, 1].
    """
    return rouge_l_tokens(tokenize(candidate), tokenize(reference))


def rouge_l_tokens(candidate: Sequence[Hashable], reference: Sequence[Hashable]) -> float:
    """ROUGE-L F1 between two already tokenized sequences.

    Args:
      candidate: one token sequence.
      reference: the other.

    Returns:
      The F1 score in [0, 1]; 0.0 when either is empty.
    """
    if not candidate or not reference:
        return 0.0
    return f_measure(lcs_length(candidate, reference), len(candidate), len(reference))


class RougeDeduper:
    """A growing pool of texts, queried for near duplicates under ROUGE-L F1.

    Typical use in the synthesis stage::

        pool = RougeDeduper(seed_instructions)
        for text in candidates:
            if not pool.is_duplicate(text, threshold=0.7):
                pool.add(text)

    "Duplicate" means score > threshold (strictly), as in the reference pipeline.

    Args:
      texts: the initial pool, added in order.
    """

    def __init__(self, texts: Iterable[str] = ()) -> None:
        self._vocab: dict[str, int] = {}
        self._seqs: list[tuple[int, ...]] = []
        self._counts: list[Counter[int]] = []
        self._lengths = _GrowingArray()
        # (token id, k): indices of pool entries holding the token at least k times.
        self._postings: dict[tuple[int, int], _GrowingArray] = {}
        for text in texts:
            self.add(text)

    def __len__(self) -> int:
        """Number of texts in the pool."""
        return len(self._seqs)

    def add(self, text: str) -> int:
        """Adds `text` to the pool; returns its index (order of addition).

        Args:
          text: the text to add.

        Returns:
          Its index in the pool.
        """
        ids = tuple(self._vocab.setdefault(tok, len(self._vocab)) for tok in tokenize(text))
        index = len(self._seqs)
        counts = Counter(ids)
        self._seqs.append(ids)
        self._counts.append(counts)
        self._lengths.append(len(ids))
        for tok, count in counts.items():
            for k in range(1, count + 1):
                self._postings.setdefault((tok, k), _GrowingArray()).append(index)
        return index

    def score(self, candidate: str, index: int) -> float:
        """Exact ROUGE-L F1 between `candidate` and pool entry `index`.

        Args:
          candidate: any text.
          index: a pool index (`add`'s return value).

        Returns:
          The F1 score.
        """
        return rouge_l_tokens(self._encode(candidate), self._seqs[index])

    def is_duplicate(self, candidate: str, threshold: float = 0.7) -> bool:
        """Whether some pool entry scores strictly above `threshold` against `candidate`.

        Args:
          candidate: the text to check.
          threshold: the F1 a duplicate must exceed.

        Returns:
          True at the first entry found above the threshold.
        """
        return self._search(candidate, threshold, first_only=True) is not None

    def best_match(self, candidate: str, threshold: float = 0.7) -> tuple[int, float] | None:
        """(index, score) of the best pool entry scoring above `threshold`, else None.

        Args:
          candidate: the text to check.
          threshold: the F1 a match must exceed.

        Returns:
          The best entry's index and score, or None when no entry exceeds the threshold.
        """
        return self._search(candidate, threshold, first_only=False)

    def max_score(self, candidate: str) -> float:
        """Exact maximum ROUGE-L F1 of `candidate` against the pool (0.0 for an empty pool).

        Slower than `is_duplicate` (every entry sharing a token is a candidate), but still
        bounded: entries are scored in order of their overlap bound and the scan stops once
        the bound cannot beat the best score so far.

        Args:
          candidate: the text to score.

        Returns:
          The best F1 score against any pool entry.
        """
        found = self._search(candidate, 0.0, first_only=False)
        return 0.0 if found is None else found[1]

    # -- internals -------------------------------------------------------------------

    def _encode(self, text: str) -> list[int]:
        # Tokens the pool has never seen get distinct negative ids: they match nothing.
        return [self._vocab.get(tok, -1 - i) for i, tok in enumerate(tokenize(text))]

    def _search(self, candidate: str, threshold: float, first_only: bool) -> tuple[int, float] | None:
        if threshold < 0:
            # Every pair scores >= 0 > threshold; any entry is a match.
            if not self._seqs:
                return None
            best = max(range(len(self._seqs)), key=lambda i: self.score(candidate, i))
            return best, self.score(candidate, best)
        cand = self._encode(candidate)
        m = len(cand)
        if m == 0 or not self._seqs or threshold >= 1.0:
            return None  # F1 is at most 1.0, and 0.0 against an empty text
        t = max(threshold - _SLACK, 0.0)
        # An entry of length n scoring > t needs LCS > t*(m+n)/2 with LCS <= n, hence
        # LCS > t*m/(2-t). alpha is one below that (or 1): a safe minimum overlap. Any
        # m - alpha + 1 of the candidate's elements then meet every such entry; the rarest
        # ones have the shortest posting lists.
        alpha = max(1, int(t * m / (2.0 - t)))
        cand_counts = Counter(cand)
        elements = [(tok, k) for tok, c in cand_counts.items() for k in range(1, c + 1)]
        elements.sort(key=lambda e: len(self._postings.get(e, ())))
        prefix = elements[: m - alpha + 1]
        unprobed = m - len(prefix)
        probe = [self._postings[e].view() for e in prefix if e in self._postings]
        if not probe:
            return None
        # The counting and the two cheap bounds run vectorised over the whole pool: a
        # common token's posting list can hold most of the pool.
        hits = np.bincount(np.concatenate(probe), minlength=len(self._seqs))
        lengths = self._lengths.view()
        # Overlap (hence LCS) cannot exceed the probe hits plus every unprobed element,
        # nor the entry's length.
        bound = np.minimum(hits + unprobed, lengths)
        survivors = np.flatnonzero((hits > 0) & (2 * bound > t * (m + lengths)))

        if unprobed:
            # Exact multiset overlap for the few survivors of the cheap bounds.
            overlap = np.array(
                [
                    sum(min(c, self._counts[i].get(tok, 0)) for tok, c in cand_counts.items())
                    for i in survivors.tolist()
                ],
                dtype=np.int64,
            ).reshape(-1)
        else:
            overlap = hits[survivors]  # every element was probed: hits are the overlap
        totals = m + lengths[survivors]
        keep = 2 * overlap > t * totals
        survivors, upper = survivors[keep], 2 * overlap[keep] / totals[keep]
        order = np.argsort(-upper, kind="stable")
        scored = zip(upper[order].tolist(), survivors[order].tolist())
        masks = match_masks(cand)
        best: tuple[int, float] | None = None
        for upper_f, idx in scored:
            if best is not None and upper_f <= best[1]:
                break  # no later entry can beat the best so far
            seq = self._seqs[idx]
            f = f_measure(lcs_with_masks(masks, m, seq), m, len(seq))
            if f > threshold and (best is None or f > best[1]):
                best = (idx, f)
                if first_only:
                    break
        return best


class _GrowingArray:
    """An int64 array with amortised O(1) append; `view()` shares its memory."""

    def __init__(self) -> None:
        self._buf = np.empty(4, dtype=np.int64)
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def append(self, value: int) -> None:
        if self._size == len(self._buf):
            self._buf = np.concatenate([self._buf, np.empty_like(self._buf)])
        self._buf[self._size] = value
        self._size += 1

    def view(self) -> np.ndarray:
        return self._buf[: self._size]
