"""Grouping prompts into trees and laying the trees out (`sampling.prompt_tree`)."""

import numpy as np
import pytest

from isheep_jax.model import layers
from isheep_jax.sampling import prompt_tree
from isheep_jax.sampling.prompt_tree import PromptGroup


def _pair_prompts(rng, tasks: int, answers: int, head: int, rubric: int) -> list[list[int]]:
    """Rating prompts: per task and answer, two prompts that differ only in their rubric."""
    prompts = []
    rubrics = [rng.randint(500, 600, size=rubric).tolist() for _ in range(2)]
    for _ in range(tasks):
        task = rng.randint(5, 300, size=head).tolist()
        for _ in range(answers):
            answer = rng.randint(5, 300, size=60).tolist()
            prompts += [task + answer + r for r in rubrics]
    return prompts


def test_group_prompts_pairs_each_answers_two_rubrics():
    """Two rubrics per answer and three answers per task: the trees are the pairs (trunk: the
    task and the answer, 100 tokens), not one tree per task (a 40-token trunk saves less)."""
    rng = np.random.RandomState(0)
    ids = _pair_prompts(rng, tasks=3, answers=3, head=40, rubric=20)
    rng.shuffle(ids)
    groups = prompt_tree.group_prompts(ids, own=2, max_row=4096)
    assert sorted(i for g in groups for i in g.members) == list(range(len(ids)))
    assert len(groups) == 9
    for g in groups:
        a, b = (ids[i] for i in g.members)
        assert g.trunk == 100 and a[:100] == b[:100] and a[100] != b[100]


def test_group_prompts_respects_own_tokens_row_size_and_minimum_trunk():
    rng = np.random.RandomState(1)
    base = rng.randint(5, 300, size=80).tolist()
    # Identical prompts: the trunk still leaves each one its last `own` tokens.
    groups = prompt_tree.group_prompts([base, base, base], own=3, max_row=4096)
    assert groups == [PromptGroup((0, 1, 2), 77)]
    # A row may not outgrow max_row: 77 + 3 * 3 = 86 tokens do not fit in 85, two prompts do.
    groups = prompt_tree.group_prompts([base, base, base], own=3, max_row=85)
    assert sorted(len(g.members) for g in groups) == [1, 2]
    assert all(g.row_len([80] * 3) <= 85 for g in groups)
    # Sharing fewer than MIN_TRUNK tokens makes no tree.
    short = [base[:20] + rng.randint(5, 300, size=30).tolist() for _ in range(3)]
    assert all(g.trunk == 0 for g in prompt_tree.group_prompts(short, own=1, max_row=4096))
    # At most MAX_BRANCHES members per tree.
    many = prompt_tree.group_prompts([base + [k] for k in range(9)], own=1, max_row=4096)
    assert max(len(g.members) for g in many) == prompt_tree.MAX_BRANCHES
    with pytest.raises(ValueError, match="fewer than 2 tokens"):
        prompt_tree.group_prompts([[5]], own=2, max_row=4096)


def test_layout_puts_each_branch_after_its_trunk():
    ids = [[1, 2, 3, 4, 5], [1, 2, 3, 9], [7, 8]]
    groups = [PromptGroup((0, 1), 3), PromptGroup((2,), 0)]
    tree = prompt_tree.layout(groups, ids, rows=4, width=8, own=1, pad_id=0, max_branches=2)
    np.testing.assert_array_equal(tree.tokens[0], [0, 0, 1, 2, 3, 4, 5, 9])
    np.testing.assert_array_equal(tree.segment_ids[0], [0, 0, 1, 1, 1, 2, 2, 3])
    np.testing.assert_array_equal(tree.parent_ids[0], [0, 0, 0, 0, 0, 1, 1, 1])
    np.testing.assert_array_equal(tree.positions[0], [0, 0, 0, 1, 2, 3, 4, 3])
    np.testing.assert_array_equal(tree.logits_index[0], [6, 7])
    np.testing.assert_array_equal(tree.tokens[1], [0] * 6 + [7, 8])
    np.testing.assert_array_equal(tree.segment_ids[1], [0] * 6 + [2, 2])
    np.testing.assert_array_equal(tree.logits_index[1], [7, 7])
    np.testing.assert_array_equal(tree.segment_ids[2:], [[0] * 7 + [1]] * 2)  # filler rows


def test_a_branch_sees_its_trunk_and_itself_never_a_sibling():
    tree = prompt_tree.layout(
        [PromptGroup((0, 1), 2)], [[1, 2, 3, 4], [1, 2, 5]], rows=1, width=5, own=1, pad_id=0
    )
    mask = np.asarray(layers.segment_causal_mask(tree.segment_ids, tree.parent_ids))[0, 0]
    want = np.array(
        [
            [1, 0, 0, 0, 0],  # trunk
            [1, 1, 0, 0, 0],
            [1, 1, 1, 0, 0],  # branch 0
            [1, 1, 1, 1, 0],
            [1, 1, 0, 0, 1],  # branch 1: the trunk and itself
        ],
        bool,
    )
    np.testing.assert_array_equal(mask, want)
