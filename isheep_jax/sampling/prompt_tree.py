"""Prompt trees: prompts that share a long prefix, prefilled as one trunk and its branches.

A judge rates every pair on two criteria with prompts that differ only in their last part
(the rubric), and a calibration set rates several answers to each task. Prefilling such
prompts one by one computes their common part once per prompt; a tree computes it once
per group. One row holds the group's trunk (the prefix its members share) and then each
member's own tokens (a branch). A branch attends to the trunk and to itself, never to a
sibling (`layers.segment_causal_mask` with parents), and its positions continue the
trunk's, so every branch's logits are those of its whole prompt.

Pure host-side functions: which prompts form a tree (`group_prompts`) and the padded
arrays of a batch of trees (`layout`); `decode_loop.prompt_logprobs` runs them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

# A tree's rows compute attention between sibling branches only to mask it, and a trunk
# shorter than this saves less than that costs.
MIN_TRUNK = 32
# Branches per tree: the logits positions per row are a static shape (MAX_BRANCHES times
# the positions read per prompt).
MAX_BRANCHES = 4


@dataclasses.dataclass(frozen=True)
class PromptGroup:
    """Prompts prefilled as one tree.

    Attributes:
      members: the prompts' indices, one branch each, in row order.
      trunk: the tokens every member starts with, prefilled once (0: a single prompt).
    """

    members: tuple[int, ...]
    trunk: int

    def row_len(self, lengths: Sequence[int]) -> int:
        """Tokens of the group's row: the trunk once, then each member's own tokens."""
        return self.trunk + sum(lengths[i] - self.trunk for i in self.members)


class TreeBatch(NamedTuple):
    """A batch of prompt trees, left-padded to a common width W (all [R, ...] numpy arrays).

    Attributes:
      tokens: [R, W] int32 token ids (`pad_id` on padding).
      segment_ids: [R, W] int32: 0 on padding, 1 on the trunk, 2 + j on branch j.
      parent_ids: [R, W] int32: 1 on a branch that has a trunk, else 0.
      positions: [R, W] int32 RoPE positions: the trunk from 0, each branch after it.
      logits_index: [R, MAX_BRANCHES * own] int32: the last `own` slots of each branch
        (unused entries point at the row's last slot).
    """

    tokens: np.ndarray
    segment_ids: np.ndarray
    parent_ids: np.ndarray
    positions: np.ndarray
    logits_index: np.ndarray


def common_prefix_len(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def group_prompts(
    ids: Sequence[Sequence[int]],
    own: int,
    max_row: int,
    min_trunk: int = MIN_TRUNK,
    max_branches: int = MAX_BRANCHES,
) -> list[PromptGroup]:
    """Groups prompts into trees so that the fewest tokens are computed.

    Sorted by their tokens, prompts with a common prefix are neighbours, so a tree is a run
    of that order; its trunk is the run's common prefix, less what leaves every member
    `own` tokens of its own. A dynamic programme over the runs picks the grouping that saves
    the most tokens ((members - 1) * trunk per tree); a single prompt is the fallback.

    Args:
      ids: every prompt's token ids.
      own: tokens each member keeps in its branch, at least the positions read from it.
      max_row: the most tokens a tree's row may hold.
      min_trunk: the shortest trunk worth a tree.
      max_branches: the most members per tree.

    Returns:
      The groups, covering every prompt once; sorted by their first member's tokens.

    Raises:
      ValueError: a prompt is shorter than `own`.
    """
    short = [i for i, x in enumerate(ids) if len(x) < own]
    if short:
        raise ValueError(f"prompts {short[:5]} have fewer than {own} tokens")
    order = sorted(range(len(ids)), key=lambda i: list(ids[i]))
    n = len(order)
    lcp = [common_prefix_len(ids[order[k]], ids[order[k + 1]]) for k in range(n - 1)]
    best = [0] * (n + 1)  # tokens saved by the best grouping of the first k prompts
    take = [1] * (n + 1)  # the last group's size in it
    for end in range(1, n + 1):
        best[end], take[end] = best[end - 1], 1
        trunk, total = None, len(ids[order[end - 1]])
        for size in range(2, min(max_branches, end) + 1):
            first = end - size
            shared = lcp[first]
            trunk = shared if trunk is None else min(trunk, shared)
            total += len(ids[order[first]])
            t = min(trunk, min(len(ids[order[k]]) for k in range(first, end)) - own)
            if t < min_trunk:
                break  # runs reaching further back only share less
            if total - (size - 1) * t > max_row:
                continue
            if best[first] + (size - 1) * t > best[end]:
                best[end], take[end] = best[first] + (size - 1) * t, size
    groups: list[PromptGroup] = []
    end = n
    while end:
        size = take[end]
        members = tuple(order[end - size : end])
        trunk = 0
        if size > 1:
            trunk = min(min(lcp[end - size : end - 1]), min(len(ids[i]) for i in members) - own)
        groups.append(PromptGroup(members, trunk))
        end -= size
    return groups[::-1]


def layout(
    groups: Sequence[PromptGroup],
    ids: Sequence[Sequence[int]],
    rows: int,
    width: int,
    own: int,
    pad_id: int,
    max_branches: int = MAX_BRANCHES,
) -> TreeBatch:
    """Left-pads a batch of trees into `rows` rows of `width` slots.

    Rows past the groups are filler: one token in the last slot, so they are well defined.

    Args:
      groups: at most `rows` groups, each with at most `max_branches` members.
      ids: every prompt's token ids (what the groups index).
      rows: R, the padded batch.
      width: W, at least every group's `row_len`.
      own: the positions read from each branch (its last `own` tokens).
      pad_id: the token id on padding.
      max_branches: the branches `logits_index` has room for.

    Returns:
      The `TreeBatch`.
    """
    tokens = np.full((rows, width), pad_id, np.int32)
    seg = np.zeros((rows, width), np.int32)
    parent = np.zeros((rows, width), np.int32)
    pos = np.zeros((rows, width), np.int32)
    index = np.full((rows, max_branches * own), width - 1, np.int32)
    lengths = [len(x) for x in ids]
    for r, g in enumerate(groups):
        at = width - g.row_len(lengths)
        t = g.trunk
        if t:
            tokens[r, at : at + t] = ids[g.members[0]][:t]
            seg[r, at : at + t] = 1
            pos[r, at : at + t] = np.arange(t)
            at += t
        for j, i in enumerate(g.members):
            u = lengths[i] - t
            tokens[r, at : at + u] = ids[i][t:]
            seg[r, at : at + u] = 2 + j
            parent[r, at : at + u] = 1 if t else 0
            pos[r, at : at + u] = np.arange(t, t + u)
            at += u
            index[r, j * own : (j + 1) * own] = np.arange(at - own, at)
    seg[len(groups) :, -1] = 1
    return TreeBatch(tokens, seg, parent, pos, index)
