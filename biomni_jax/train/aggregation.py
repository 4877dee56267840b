"""Loss aggregation modes: per-token values -> (sum, denominator).

Every mode returns a pair ``(loss_sum, denominator)`` of float32 scalars. The
train step adds the pairs of all micro-batches (and all data-parallel shards)
and divides ONCE: ``loss = sum_i loss_sum_i / sum_i denominator_i``. That is
exact under micro-batching, gradient accumulation and data parallelism because
each mode is written as a sum over independent units (tokens or sequences) over
a count of those units:

  token-mean
      loss_sum = sum_{b,t} m_bt * x_bt
      denom    = sum_{b,t} m_bt                       (global number of loss tokens)
  seq-mean-token-mean
      loss_sum = sum_s (sum_{t in s} m_t x_t) / (sum_{t in s} m_t)
      denom    = #{sequences s with at least one loss token}
      i.e. the mean over sequences of each sequence's own token mean; the
      per-sequence mean is local to the sequence, so only the sequence count
      has to be made global. (This is what the original Biomni-R0 run used.)
  seq-mean-token-sum-norm   (Dr.GRPO)
      loss_sum = sum_s (sum_{t in s} m_t x_t) / token_sum_norm
      denom    = #{sequences s with at least one loss token}
      token_sum_norm is a constant of the run (Dr.GRPO: the maximum response
      length; the trainers use their row length, rl.seq_len or sft.seq_len), so
      no sequence's length rescales its gradient. It is required: taking it
      from each call's padded length T would weight micro-batches or packed
      rows padded to different lengths differently and break the invariance
      above.

A "sequence" is a row of the batch, or, when ``segment_ids`` [B, T] int32 is
given (packed rows), a (row, segment id) pair; segment id 0 is padding and is
ignored. A trajectory whose loss mask is all zero (dropped from the loss, or a
padding row) contributes neither to the sum nor to the denominator.
"""

from __future__ import annotations

import functools
from typing import Callable, Optional

import jax
import jax.numpy as jnp

from biomni_jax.registry import Registry

Array = jax.Array
AggregationFn = Callable[..., tuple[Array, Array]]
# mode name (config fields `loss_aggregation`, `aggregation`) -> (values, mask, *, segment_ids,
# token_sum_norm) -> (loss_sum, denominator)
AGGREGATIONS: Registry[AggregationFn] = Registry("loss aggregation")


def _check_shapes(values_bt: Array, mask_bt: Array, where: str) -> None:
  if values_bt.ndim != 2 or values_bt.shape != mask_bt.shape:
    raise ValueError(
        f"{where}: expected values [B, T] and loss_mask [B, T] of equal shape, "
        f"found values {values_bt.shape} and loss_mask {mask_bt.shape}"
    )


def _per_sequence_sums(
    values_bt: Array, mask_bt: Array, segment_ids_bt: Optional[Array]
) -> tuple[Array, Array]:
  """Masked sums and token counts per sequence.

  Returns (value_sum_s, token_count_s), each float32 [S] with S = B (no packing)
  or S = B * (T + 1) (one slot per possible (row, segment) pair; unused slots are 0).
  """
  masked = values_bt * mask_bt
  if segment_ids_bt is None:
    return masked.sum(axis=1), mask_bt.sum(axis=1)
  batch, length = values_bt.shape
  # Padding (segment 0) is already excluded by its zero mask; segments are
  # kept apart per row by offsetting ids with row * T.
  keep = (segment_ids_bt > 0).astype(values_bt.dtype)
  # Segment ids lie in [0, T] (at most T one-token segments per row).
  slots = length + 1
  flat_ids = (jnp.arange(batch)[:, None] * slots + segment_ids_bt.clip(0, length)).reshape(-1)
  num = batch * slots
  value_sum = jax.ops.segment_sum((masked * keep).reshape(-1), flat_ids, num_segments=num)
  count = jax.ops.segment_sum((mask_bt * keep).reshape(-1), flat_ids, num_segments=num)
  return value_sum, count


def _mode(name: str) -> Callable[[Callable], AggregationFn]:
  """Decorator: register `fn(values, mask, segment_ids, token_sum_norm) -> (loss_sum, denominator)` as
  mode `name` behind the AggregationFn signature; fn receives float32 values and mask [B, T] whose shapes
  have been checked."""

  def register(fn: Callable) -> AggregationFn:
    @functools.wraps(fn)
    def aggregation_mode(
        values_bt: Array,
        mask_bt: Array,
        *,
        segment_ids: Optional[Array] = None,
        token_sum_norm: Optional[float] = None,
    ) -> tuple[Array, Array]:
      _check_shapes(values_bt, mask_bt, name)
      return fn(
          values_bt.astype(jnp.float32), mask_bt.astype(jnp.float32), segment_ids, token_sum_norm
      )

    return AGGREGATIONS.register(name)(aggregation_mode)

  return register


@_mode("token-mean")
def token_mean(values_bt, mask_bt, segment_ids, token_sum_norm):
  """sum_{b,t} m*x over sum_{b,t} m. token_sum_norm is unused."""
  del token_sum_norm
  mask = mask_bt
  if segment_ids is not None:
    mask = mask * (segment_ids > 0)
  return (values_bt * mask).sum(), mask.sum()


@_mode("seq-mean-token-mean")
def seq_mean_token_mean(values_bt, mask_bt, segment_ids, token_sum_norm):
  """sum over sequences of each sequence's masked token mean; denominator = #sequences."""
  del token_sum_norm
  value_sum, count = _per_sequence_sums(values_bt, mask_bt, segment_ids)
  has_tokens = count > 0
  per_seq_mean = jnp.where(has_tokens, value_sum / jnp.maximum(count, 1.0), 0.0)
  return per_seq_mean.sum(), has_tokens.sum().astype(jnp.float32)


@_mode("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(values_bt, mask_bt, segment_ids, token_sum_norm):
  """sum over sequences of (masked token sum / token_sum_norm); denominator = #sequences.

  token_sum_norm: the run's constant normaliser (> 0), the same in every call (see the module
  docstring); there is no default.
  """
  if token_sum_norm is None:
    raise ValueError(
        "seq-mean-token-sum-norm: token_sum_norm is required: a constant of the run, the same for "
        "every micro-batch (Dr.GRPO: the maximum response length, e.g. the training row length "
        "rl.seq_len or sft.seq_len); found None"
    )
  norm = float(token_sum_norm)
  if not norm > 0:
    raise ValueError(f"seq-mean-token-sum-norm: token_sum_norm must be > 0, found {norm}")
  value_sum, count = _per_sequence_sums(values_bt, mask_bt, segment_ids)
  return value_sum.sum() / norm, (count > 0).sum().astype(jnp.float32)


def aggregate(
    name: str,
    values_bt: Array,
    mask_bt: Array,
    *,
    segment_ids: Optional[Array] = None,
    token_sum_norm: Optional[float] = None,
) -> tuple[Array, Array]:
  """Aggregate per-token values [B, T] with loss mask [B, T] by mode ``name``."""
  return AGGREGATIONS[name](
      values_bt, mask_bt, segment_ids=segment_ids, token_sum_norm=token_sum_norm
  )
