"""Pallas splash attention (TPU) behind the common attention signature.

Grouped-query attention maps onto splash's multi-query kernel vmapped over kv heads: for kv head k the
G query heads [k*G, (k+1)*G) share one K/V. Splash applies no softmax scale, so q is pre-scaled.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm

# One block size for the forward and both backward kernels (square tiles of the causal mask).
_BLOCK_SIZE_FIELDS = (
    "block_q",
    "block_kv_compute",
    "block_kv",
    "block_q_dkv",
    "block_kv_dkv",
    "block_kv_dkv_compute",
    "block_q_dq",
    "block_kv_dq",
)


@functools.lru_cache(maxsize=16)
def _kernel(num_q_heads: int, seq_len: int, block: int):
  mask = sm.MultiHeadMask([sm.CausalMask((seq_len, seq_len)) for _ in range(num_q_heads)])
  sizes = sk.BlockSizes(**dict.fromkeys(_BLOCK_SIZE_FIELDS, block))
  return sk.make_splash_mqa_single_device(mask=mask, block_sizes=sizes)


def splash_attention(q, k, v, *, q_segment, kv_segment, scale: float, block: int = 512):
  """q [B, T, H, D], k/v [B, T, K, D] (same T, causal from 0) -> [B, T, H, D]."""
  b, t, h, d = q.shape
  kh = k.shape[2]
  block = min(block, t)
  kernel = _kernel(h // kh, t, block)
  qg = (q * scale).reshape(b, t, kh, h // kh, d).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, D]
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, K, T, D]

  def one(qg, kt, vt, qs, ks):
    segments = sk.SegmentIds(q=qs, kv=ks)
    return jax.vmap(lambda qq, kk, vv: kernel(qq, kk, vv, segment_ids=segments))(qg, kt, vt)

  out = jax.vmap(one)(qg, kt, vt, q_segment, kv_segment)  # [B, K, G, T, D]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, d).astype(q.dtype)
