"""Packing into fixed-length rows: hand-computed layouts, targets within segments, count invariance."""

import numpy as np
import pytest

from biomni_jax.data.packing import (
    add_next_token_targets,
    count_target_tokens,
    pack_examples,
    shift_left_within_segments,
    unpacked_examples,
)


def ex(tokens, mask, **extra):
  return {"tokens": np.asarray(tokens, np.int32), "loss_mask": np.asarray(mask, np.int32), **extra}


A = ex([11, 12, 13], [0, 1, 1])
B = ex([21, 22, 23, 24, 25], [0, 0, 1, 1, 1])
C = ex([31, 32], [0, 1])
D = ex([41, 42, 43, 44], [0, 1, 0, 1])


def test_first_fit_hand_computed_layout():
  packed = pack_examples([A, B, C, D], row_length=6)
  # A(3) -> row 0 [0:3]; B(5) does not fit row 0 (3 free) -> row 1 [0:5];
  # C(2) -> row 0 [3:5]; D(4) fits nowhere (1 and 1 free) -> row 2 [0:4].
  rows = packed.rows
  np.testing.assert_array_equal(
      rows["tokens"], [[11, 12, 13, 31, 32, 0], [21, 22, 23, 24, 25, 0], [41, 42, 43, 44, 0, 0]]
  )
  np.testing.assert_array_equal(
      rows["loss_mask"], [[0, 1, 1, 0, 1, 0], [0, 0, 1, 1, 1, 0], [0, 1, 0, 1, 0, 0]]
  )
  np.testing.assert_array_equal(
      rows["segment_ids"], [[1, 1, 1, 2, 2, 0], [1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]]
  )
  np.testing.assert_array_equal(
      rows["positions"], [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 4, 0], [0, 1, 2, 3, 0, 0]]
  )
  assert [(p.index, p.row, p.start, p.length, p.segment) for p in packed.placements] == [
      (0, 0, 0, 3, 1),
      (1, 1, 0, 5, 1),
      (2, 0, 3, 2, 2),
      (3, 2, 0, 4, 1),
  ]
  assert all(v.dtype == np.int32 for v in rows.values())


def test_targets_predict_the_next_token_of_the_same_segment_only():
  rows = add_next_token_targets(pack_examples([A, C], row_length=6).rows)
  # Row: A=[11,12,13] seg 1, C=[31,32] seg 2, pad.
  np.testing.assert_array_equal(rows["targets"], [[12, 13, 0, 32, 0, 0]])
  # target_mask[t] = loss_mask[t+1] within the segment; 13 (end of A) and 32 (end of C) predict nothing.
  np.testing.assert_array_equal(rows["target_mask"], [[1, 1, 0, 1, 0, 0]])


def test_segment_boundary_between_equal_ids_in_adjacent_rows_is_not_crossed():
  seg = np.array([[1, 1, 1], [1, 1, 0]])
  vals = np.array([[1, 2, 3], [4, 5, 6]])
  shifted, valid = shift_left_within_segments(vals, seg)
  np.testing.assert_array_equal(shifted, [[2, 3, 0], [5, 0, 0]])
  np.testing.assert_array_equal(valid, [[1, 1, 0], [1, 0, 0]])


def test_unpacked_layout_has_one_right_padded_example_per_row():
  rows = unpacked_examples([A, C], row_length=4, rows_multiple_of=4).rows
  np.testing.assert_array_equal(
      rows["tokens"], [[11, 12, 13, 0], [31, 32, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  )
  np.testing.assert_array_equal(
      rows["segment_ids"], [[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  )
  np.testing.assert_array_equal(
      rows["positions"], [[0, 1, 2, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
  )


def test_extra_fields_are_laid_out_like_tokens_with_their_dtype():
  a = ex([1, 2], [0, 1], logprobs=np.array([-0.5, -1.5], np.float32))
  b = ex([3], [1], logprobs=np.array([-2.0], np.float32))
  rows = pack_examples([a, b], row_length=4).rows
  assert rows["logprobs"].dtype == np.float32
  np.testing.assert_allclose(rows["logprobs"], [[-0.5, -1.5, -2.0, 0.0]])


def test_rows_are_padded_to_a_multiple():
  packed = pack_examples([A, B, C, D], row_length=6, rows_multiple_of=4)
  assert packed.rows["tokens"].shape == (4, 6)
  assert packed.rows["segment_ids"][3].sum() == 0


def test_overlong_examples_are_rejected_truncated_or_dropped():
  with pytest.raises(ValueError, match=r"example 1 has 5 tokens, longer than row_length=4"):
    pack_examples([A, B], row_length=4)
  truncated = pack_examples([A, B], row_length=4, overlong="truncate")
  np.testing.assert_array_equal(truncated.rows["tokens"], [[11, 12, 13, 0], [21, 22, 23, 24]])
  dropped = pack_examples([A, B, C], row_length=4, overlong="drop")
  assert dropped.dropped == [1]
  np.testing.assert_array_equal(dropped.rows["tokens"], [[11, 12, 13, 0], [31, 32, 0, 0]])


@pytest.mark.parametrize(
    "examples, match",
    [
        ([{"tokens": [1, 2]}], "example 0 is missing field 'loss_mask'"),
        (
            [ex([1, 2], [1])],
            r"example 0 field 'loss_mask': expected a 1-D array of the tokens' shape \(2,\)",
        ),
        ([ex([1], [1]), ex([2], [1], logprobs=[0.0])], "example 1 has fields"),
        ([ex([], [])], "example 0 is empty"),
        ([ex([1], [1], segment_ids=[1])], "field 'segment_ids' is computed by packing"),
    ],
)
def test_malformed_examples_raise_errors_naming_the_example(examples, match):
  with pytest.raises(ValueError, match=match):
    pack_examples(examples, row_length=8)


def test_packing_preserves_token_and_target_counts_on_random_examples():
  rng = np.random.default_rng(0)
  examples = []
  for _ in range(200):
    n = int(rng.integers(1, 40))
    examples.append(ex(rng.integers(1, 1000, n), rng.integers(0, 2, n)))
  packed = pack_examples(examples, row_length=64, rows_multiple_of=8)
  unpacked = unpacked_examples(examples, row_length=64)
  for layout in (packed, unpacked):
    rows = add_next_token_targets(layout.rows)
    assert rows["loss_mask"].sum() == sum(e["loss_mask"].sum() for e in examples)
    assert rows["target_mask"].sum() == count_target_tokens(examples)
    assert (rows["segment_ids"] > 0).sum() == sum(len(e["tokens"]) for e in examples)
  # Every example is recoverable from its placement, and its targets are its own next tokens.
  rows = add_next_token_targets(packed.rows)
  for p in packed.placements:
    cols = slice(p.start, p.start + p.length)
    e = examples[p.index]
    np.testing.assert_array_equal(rows["tokens"][p.row, cols], e["tokens"])
    np.testing.assert_array_equal(rows["targets"][p.row, cols][:-1], e["tokens"][1:])
    np.testing.assert_array_equal(rows["target_mask"][p.row, cols][:-1], e["loss_mask"][1:])
    assert rows["target_mask"][p.row, p.start + p.length - 1] == 0
  # Packing is dense: far fewer rows than examples.
  assert packed.rows["tokens"].shape[0] < 100
