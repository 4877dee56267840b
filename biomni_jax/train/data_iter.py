"""A deterministic, resumable iterator of training batches over fixed-length rows.

Rows are a dict of numpy arrays [N, L] (from data/packing.py). Epoch e visits the rows in the order
`permutation_e = default_rng([seed, e]).permutation(N)` (or 0..N-1 without shuffling) and yields
floor(N / batch_size) batches of `batch_size` rows; the last partial batch of an epoch is dropped (pack with
`rows_multiple_of=batch_size` to lose nothing). The state is three integers (epoch, position = index of the
next batch within the epoch, seed): JSON-able, saved with each checkpoint, and `set_state` continues with
exactly the batch that would have come next.

Multi-host: each process passes its `process_index` / `process_count` and receives its contiguous share of
the rows of every global batch (rows [i * B / P, (i + 1) * B / P) of it), as `jax.make_array_from_process_
local_data` expects for a batch sharded by rows.
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

import numpy as np

STATE_KEYS = ("epoch", "position", "seed")


class BatchIterator:
  """Iterates global batches {field: [B / process_count, L]} forever (epochs repeat with new orders)."""

  def __init__(
      self,
      rows: Mapping[str, np.ndarray],
      batch_size: int,
      *,
      seed: int = 0,
      shuffle: bool = True,
      process_index: int = 0,
      process_count: int = 1,
  ):
    if not rows:
      raise ValueError("BatchIterator: expected at least one field of rows, found none")
    lengths = {name: np.asarray(x).shape[0] for name, x in rows.items()}
    if len(set(lengths.values())) != 1:
      raise ValueError(f"BatchIterator: fields have different row counts {lengths}")
    self.num_rows = next(iter(lengths.values()))
    if batch_size < 1 or batch_size % process_count:
      raise ValueError(
          f"BatchIterator: batch_size must be >= 1 and divisible by process_count="
          f"{process_count}, found {batch_size}"
      )
    if self.num_rows < batch_size:
      raise ValueError(f"BatchIterator: {self.num_rows} rows cannot fill one batch of {batch_size}")
    self.rows = {name: np.asarray(x) for name, x in rows.items()}
    self.batch_size, self.shuffle = int(batch_size), bool(shuffle)
    self.process_index, self.process_count = int(process_index), int(process_count)
    self.epoch, self.position, self.seed = 0, 0, int(seed)
    self._order_epoch, self._order = None, None

  @property
  def batches_per_epoch(self) -> int:
    return self.num_rows // self.batch_size

  def _epoch_order(self, epoch: int) -> np.ndarray:
    if self._order_epoch != epoch:
      self._order = (
          np.random.default_rng([self.seed, epoch]).permutation(self.num_rows)
          if self.shuffle
          else np.arange(self.num_rows)
      )
      self._order_epoch = epoch
    return self._order

  def get_state(self) -> dict[str, int]:
    return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

  def set_state(self, state: Mapping[str, Any]) -> None:
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
      raise ValueError(
          f"BatchIterator.set_state: missing keys {missing}; expected {STATE_KEYS}, "
          f"found {sorted(state)}"
      )
    epoch, position, seed = (int(state[k]) for k in STATE_KEYS)
    if epoch < 0 or not 0 <= position <= self.batches_per_epoch:
      raise ValueError(
          f"BatchIterator.set_state: expected epoch >= 0 and 0 <= position <= "
          f"{self.batches_per_epoch}, found epoch={epoch}, position={position}"
      )
    self.epoch, self.position, self.seed = epoch, position, seed
    self._order_epoch = None

  def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self.position >= self.batches_per_epoch:
      self.epoch, self.position = self.epoch + 1, 0
    order = self._epoch_order(self.epoch)
    start = self.position * self.batch_size
    local = self.batch_size // self.process_count
    idx = order[start + self.process_index * local : start + (self.process_index + 1) * local]
    self.position += 1
    return {name: x[idx] for name, x in self.rows.items()}
