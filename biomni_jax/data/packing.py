"""Fixed-length training rows from variable-length examples: packed or one example per row.

An example is a mapping of per-token arrays of equal length T_i; it must hold `tokens` and
`loss_mask` and may hold more (sampler log-probs, policy versions, advantages ...). Every field is
laid out the same way and padded with 0.

Output rows (numpy, all [N, L]):
  tokens      int32   token ids, 0 on padding
  loss_mask   int32   1 on tokens to learn, 0 elsewhere (and on padding)
  segment_ids int32   1..k for the k examples of a row in placement order, 0 = padding
  positions   int32   0..T_i-1 inside each example, restarting at every segment; 0 on padding
  + every extra field of the examples, with its own dtype

Targets (`add_next_token_targets`): the model at position t predicts token t+1 of the SAME segment:
  targets[t]     = tokens[t+1]                          if segment_ids[t+1] == segment_ids[t] > 0
  target_mask[t] = loss_mask[t+1] * [same segment]      (so the last token of a segment predicts nothing)
The loss is sum_t target_mask * -log p(targets[t]) over the global sum of target_mask; since a
segment's first token has no context, its loss_mask is never counted (rendered conversations start
with the masked `<|im_start|>`).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

REQUIRED_FIELDS = ("tokens", "loss_mask")
LAYOUT_FIELDS = ("segment_ids", "positions")
OVERLONG_POLICIES = ("truncate", "error", "drop")
# A training row with next-token targets (add_next_token_targets), each int32 [N, L]: what the SFT step
# reads, and the first fields of the RL rows (train/rl_batch.py).
TRAIN_ROW_FIELDS = ("tokens", "targets", "target_mask", "segment_ids", "positions")


class Placement(NamedTuple):
  """Where example `index` went: row, start column, length after truncation, segment id."""

  index: int
  row: int
  start: int
  length: int
  segment: int


class PackedRows(NamedTuple):
  """Rows [N, L] per field, the placement of each kept example, and the indices of dropped ones."""

  rows: dict[str, np.ndarray]
  placements: list[Placement]
  dropped: list[int]


def _check_examples(examples: Sequence[Mapping[str, Any]]) -> list[dict[str, np.ndarray]]:
  checked = []
  fields = None
  for i, example in enumerate(examples):
    for name in REQUIRED_FIELDS:
      if name not in example:
        raise ValueError(
            f"packing: example {i} is missing field {name!r} "
            f"(expected fields {REQUIRED_FIELDS} + extras)"
        )
    for name in LAYOUT_FIELDS:
      if name in example:
        raise ValueError(
            f"packing: example {i} field {name!r} is computed by packing; "
            f"remove it from the example"
        )
    arrays = {k: np.asarray(v) for k, v in example.items()}
    length = arrays["tokens"].shape
    for name, arr in arrays.items():
      if arr.ndim != 1 or arr.shape != length:
        raise ValueError(
            f"packing: example {i} field {name!r}: expected a 1-D array of the "
            f"tokens' shape {length}, found shape {arr.shape}"
        )
    if fields is None:
      fields = set(arrays)
    elif set(arrays) != fields:
      raise ValueError(
          f"packing: example {i} has fields {sorted(arrays)}, expected the same "
          f"fields as example 0: {sorted(fields)}"
      )
    if length[0] == 0:
      raise ValueError(f"packing: example {i} is empty (0 tokens)")
    checked.append(arrays)
  return checked


def _fit_length(i: int, length: int, row_length: int, overlong: str) -> int | None:
  """Length the example occupies, or None to drop it."""
  if length <= row_length:
    return length
  if overlong == "truncate":
    return row_length
  if overlong == "drop":
    return None
  raise ValueError(
      f"packing: example {i} has {length} tokens, longer than row_length={row_length} "
      f"(pass overlong='truncate' or 'drop' to accept it)"
  )


def _layout(
    examples: list[dict[str, np.ndarray]],
    placements: list[Placement],
    num_rows: int,
    row_length: int,
) -> dict[str, np.ndarray]:
  rows = {
      "tokens": np.zeros((num_rows, row_length), np.int32),
      "loss_mask": np.zeros((num_rows, row_length), np.int32),
      "segment_ids": np.zeros((num_rows, row_length), np.int32),
      "positions": np.zeros((num_rows, row_length), np.int32),
  }
  if examples:
    for name, arr in examples[0].items():
      if name not in rows:
        rows[name] = np.zeros((num_rows, row_length), arr.dtype)
  for p in placements:
    cols = slice(p.start, p.start + p.length)
    for name, arr in examples[p.index].items():
      rows[name][p.row, cols] = arr[: p.length]
    rows["segment_ids"][p.row, cols] = p.segment
    rows["positions"][p.row, cols] = np.arange(p.length, dtype=np.int32)
  return rows


def _validate_policy(row_length: int, overlong: str) -> None:
  if row_length <= 0:
    raise ValueError(f"packing: row_length must be positive, found {row_length}")
  if overlong not in OVERLONG_POLICIES:
    raise ValueError(f"packing: overlong must be one of {OVERLONG_POLICIES}, found {overlong!r}")


def _pad_rows(num_rows: int, multiple: int) -> int:
  if multiple <= 0:
    raise ValueError(f"packing: rows_multiple_of must be positive, found {multiple}")
  return max(multiple, -(-num_rows // multiple) * multiple)


def pack_examples(
    examples: Sequence[Mapping[str, Any]],
    row_length: int,
    *,
    overlong: str = "error",
    rows_multiple_of: int = 1,
) -> PackedRows:
  """Greedy first-fit packing in input order into rows of `row_length` tokens.

  Each example goes into the first existing row with enough free space, else opens a new row;
  the result depends only on the input order and lengths. Examples longer than `row_length` are
  truncated to its first `row_length` tokens, dropped, or rejected (ValueError naming the example)
  per `overlong`. The row count is padded with empty rows up to a multiple of `rows_multiple_of`
  (e.g. the global batch size).
  """
  _validate_policy(row_length, overlong)
  checked = _check_examples(examples)
  free: list[int] = []  # free columns per row
  used_segments: list[int] = []
  placements, dropped = [], []
  for i, arrays in enumerate(checked):
    length = _fit_length(i, len(arrays["tokens"]), row_length, overlong)
    if length is None:
      dropped.append(i)
      continue
    row = next((r for r, f in enumerate(free) if f >= length), None)
    if row is None:
      free.append(row_length)
      used_segments.append(0)
      row = len(free) - 1
    start = row_length - free[row]
    free[row] -= length
    used_segments[row] += 1
    placements.append(Placement(i, row, start, length, used_segments[row]))
  num_rows = _pad_rows(len(free), rows_multiple_of)
  return PackedRows(_layout(checked, placements, num_rows, row_length), placements, dropped)


def unpacked_examples(
    examples: Sequence[Mapping[str, Any]],
    row_length: int,
    *,
    overlong: str = "error",
    rows_multiple_of: int = 1,
) -> PackedRows:
  """One example per row, right-padded to `row_length`: the same fields as `pack_examples`."""
  _validate_policy(row_length, overlong)
  checked = _check_examples(examples)
  placements, dropped = [], []
  for i, arrays in enumerate(checked):
    length = _fit_length(i, len(arrays["tokens"]), row_length, overlong)
    if length is None:
      dropped.append(i)
    else:
      placements.append(Placement(i, len(placements), 0, length, 1))
  num_rows = _pad_rows(len(placements), rows_multiple_of)
  return PackedRows(_layout(checked, placements, num_rows, row_length), placements, dropped)


def shift_left_within_segments(
    values: np.ndarray, segment_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
  """(values[:, t+1], valid[t]) with valid[t] = segment_ids[t] > 0 and segment_ids[t+1] == segment_ids[t].

  values, segment_ids: [N, L]. Returns the shifted values (0 where not valid) and valid as int32
  [N, L]; the last column and the last token of every segment are never valid.
  """
  values = np.asarray(values)
  segment_ids = np.asarray(segment_ids)
  if values.shape != segment_ids.shape or values.ndim != 2:
    raise ValueError(
        f"shift_left_within_segments: expected values and segment_ids of equal shape "
        f"[N, L], found {values.shape} and {segment_ids.shape}"
    )
  valid = np.zeros(segment_ids.shape, np.int32)
  valid[:, :-1] = (segment_ids[:, :-1] > 0) & (segment_ids[:, 1:] == segment_ids[:, :-1])
  shifted = np.zeros_like(values)
  shifted[:, :-1] = values[:, 1:]
  return np.where(valid > 0, shifted, np.zeros_like(shifted)), valid


def add_next_token_targets(rows: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Rows + `targets` (int32 [N, L]) and `target_mask` (int32 [N, L]); see the module docstring."""
  targets, valid = shift_left_within_segments(rows["tokens"], rows["segment_ids"])
  shifted_mask, _ = shift_left_within_segments(rows["loss_mask"], rows["segment_ids"])
  out = dict(rows)
  out["targets"] = targets.astype(np.int32)
  out["target_mask"] = (shifted_mask * valid).astype(np.int32)
  return out


def count_target_tokens(examples: Iterable[Mapping[str, Any]]) -> int:
  """Number of trained targets of unpacked examples: sum of loss_mask[1:] per example."""
  return int(sum(np.asarray(e["loss_mask"])[1:].sum() for e in examples))
