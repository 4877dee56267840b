"""The engine's KV cache: allocation on the mesh and the shape buckets that bound compilations.

Layout: (keys, values), each [layers, slots, S, kv_heads, head_dim] with logical axes
`model.cache_logical_axes()` (slots over data/fsdp, kv heads over tensor). S = max_len + max_prefill_chunk
because a padded prefill chunk starting below max_len may write up to a whole chunk past it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from biomni_jax import model as M
from biomni_jax.sharding import ShardingRules


def cache_length(max_len: int, max_prefill_chunk: int, block: int) -> int:
  """S: room for max_len tokens plus one padded prefill chunk, rounded up to the decode kv block."""
  s = max_len + max_prefill_chunk
  return -(-s // block) * block


def cache_sharding(rules: ShardingRules | None):
  return None if rules is None else rules.sharding(M.cache_logical_axes())


def allocate_cache(config: M.ModelConfig, num_slots: int, length: int, rules: ShardingRules | None):
  """Zeroed (keys, values) created directly in their sharding."""
  sharding = cache_sharding(rules)

  def make():
    return M.init_cache(config, num_slots, length)

  if sharding is None:
    return jax.jit(make)()
  return jax.jit(make, out_shardings=(sharding, sharding))()


def prefill_buckets(min_bucket: int, max_chunk: int) -> tuple[int, ...]:
  """Chunk lengths min_bucket, 2*min_bucket, ... up to max_chunk (which is always included)."""
  if min_bucket < 1 or max_chunk < min_bucket:
    raise ValueError(
        f"prefill buckets need 1 <= min_bucket <= max_chunk, found {min_bucket}, {max_chunk}"
    )
  out, b = [], min_bucket
  while b < max_chunk:
    out.append(b)
    b *= 2
  return tuple(out) + (max_chunk,)


def split_into_chunks(num_tokens: int, buckets: tuple[int, ...]) -> list[tuple[int, int]]:
  """[(real_tokens, bucket)]: full chunks of the largest bucket, then the remainder padded to the
  smallest bucket that holds it."""
  chunks, left, largest = [], num_tokens, buckets[-1]
  while left > 0:
    real = min(left, largest)
    chunks.append((real, next(b for b in buckets if b >= real)))
    left -= real
  return chunks
