"""Re-packing a step's examples into the fewest rows (`training.step_packing`)."""

import numpy as np

from isheep_jax.training import step_packing
from isheep_jax.training.sft_data import MODEL_KEYS


def _rows(lengths_per_row, length):
    """Batch arrays whose examples have the given lengths, each value naming its example."""
    batch = {k: np.zeros((len(lengths_per_row), length), np.int32) for k in MODEL_KEYS}
    n = 0
    for r, lengths in enumerate(lengths_per_row):
        at = 0
        for s, m in enumerate(lengths, start=1):
            n += 1
            for k in MODEL_KEYS:
                batch[k][r, at : at + m] = 1000 * n + np.arange(m)
            batch["decoder_segment_ids"][r, at : at + m] = s
            batch["decoder_positions"][r, at : at + m] = np.arange(m)
            at += m
    return batch


def _examples(batch):
    """Each example's values per key (segment ids left out), as a sorted list."""
    out = []
    seg = batch["decoder_segment_ids"]
    for r in range(seg.shape[0]):
        for s in np.unique(seg[r][seg[r] > 0]):
            where = seg[r] == s
            out.append(tuple(tuple(batch[k][r][where]) for k in MODEL_KEYS if k != "decoder_segment_ids"))
    return sorted(out)


def test_row_options_are_powers_of_two_of_what_each_micro_batch_needs():
    assert step_packing.row_options(8, 1, 1) == [1, 2, 4, 8]
    assert step_packing.row_options(8, 2, 1) == [2, 4, 8]
    assert step_packing.row_options(12, 1, 2) == [2, 4, 8, 12]
    assert step_packing.row_options(8, 1, 8) == [8]


def test_repack_keeps_every_example_in_the_fewest_rows():
    # 8 rows of one example each (two of them packed rows, two empty): 10 examples, 236 tokens.
    batch = _rows([[50], [30, 20], [40], [], [10], [36, 14], [26], []], length=64)
    out = step_packing.repack(batch, step_packing.row_options(8, 1, 1))
    assert out["decoder_segment_ids"].shape == (4, 64)  # 236 tokens in 4 rows of 64
    assert _examples(out) == _examples(batch)
    seg = out["decoder_segment_ids"]
    for row in seg:  # segments 1, 2, ... each contiguous, padding after them
        ids = row[row > 0]
        assert (np.diff(ids) >= 0).all() and ids.tolist() == sorted(ids) and (row[len(ids) :] == 0).all()
    np.testing.assert_array_equal(
        np.sort((out["decoder_loss_weights"] != 0).sum(1)).sum(), (batch["decoder_loss_weights"] != 0).sum()
    )


def test_repack_returns_the_batch_when_no_fewer_rows_hold_it():
    batch = _rows([[60], [60]], length=64)
    assert step_packing.repack(batch, [1, 2]) is batch
    assert step_packing.repack(_rows([[10], [10]], 64), [2])["decoder_segment_ids"].shape == (2, 64)
