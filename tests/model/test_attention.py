"""Blockwise flash attention equals dense reference attention: values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomni_jax.model.blockwise_attention import blockwise_attention, reference_attention


def _inputs(b, t, h, k, d, seed=0, segments=1):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
  key = jnp.asarray(rng.normal(size=(b, t, k, d)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, k, d)), jnp.float32)
  seg = (
      np.sort(rng.integers(0, segments, size=(b, t)), axis=1) + 1
      if segments > 1
      else np.ones((b, t))
  )
  return q, key, v, jnp.asarray(seg, jnp.int32)


def _loss(fn, q, k, v, **kw):
  out = fn(q, k, v, **kw)
  return jnp.sum(out * jnp.cos(out))  # a non-trivial cotangent


@pytest.mark.parametrize(
    "t,segments,bq,bk",
    [
        (64, 1, 16, 16),  # causal, exact multiple of blocks
        (57, 1, 16, 32),  # ragged: length not a multiple of either block
        (70, 4, 32, 16),  # packed segments, ragged
        (33, 3, 64, 64),  # one block larger than the sequence
    ],
)
def test_values_and_gradients_match_reference(t, segments, bq, bk):
  q, k, v, seg = _inputs(2, t, 4, 2, 8, seed=t, segments=segments)
  idx = jnp.broadcast_to(jnp.arange(t), (2, t))
  kw = dict(q_index=idx, q_segment=seg, kv_segment=seg, scale=8**-0.5)
  ref = reference_attention(q, k, v, **kw)
  out = blockwise_attention(q, k, v, block_q=bq, block_kv=bk, **kw)
  np.testing.assert_allclose(np.asarray(out), np.asarray(ref), atol=1e-5)
  g_ref = jax.grad(lambda *a: _loss(reference_attention, *a, **kw), argnums=(0, 1, 2))(q, k, v)
  g_out = jax.grad(
      lambda *a: _loss(blockwise_attention, *a, block_q=bq, block_kv=bk, **kw), argnums=(0, 1, 2)
  )(q, k, v)
  for name, a, b in zip("qkv", g_out, g_ref):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-4, err_msg=f"d{name}")


def test_packed_segments_do_not_attend_across():
  q, k, v, _ = _inputs(1, 32, 2, 1, 8)
  seg = jnp.asarray([[1] * 16 + [2] * 16], jnp.int32)
  idx = jnp.arange(32)[None]
  out = blockwise_attention(
      q, k, v, q_index=idx, q_segment=seg, kv_segment=seg, scale=1.0, block_q=8, block_kv=8
  )
  # Changing the first segment's values must not change the second segment's outputs.
  v2 = v.at[:, :16].set(100.0)
  out2 = blockwise_attention(
      q, k, v2, q_index=idx, q_segment=seg, kv_segment=seg, scale=1.0, block_q=8, block_kv=8
  )
  np.testing.assert_array_equal(np.asarray(out[:, 16:]), np.asarray(out2[:, 16:]))
  assert not np.allclose(np.asarray(out[:, :16]), np.asarray(out2[:, :16]))


def test_cache_style_query_offsets():
  """Queries at buffer positions L..L+T-1 against a longer kv buffer (KV-cache prefill)."""
  rng = np.random.default_rng(1)
  b, s, t, h, kh, d = 2, 48, 5, 4, 2, 8
  q = jnp.asarray(rng.normal(size=(b, t, h, d)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, s, kh, d)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, s, kh, d)), jnp.float32)
  lengths = jnp.asarray([3, 30])
  idx = lengths[:, None] + jnp.arange(t)[None]
  zeros_q, zeros_kv = jnp.zeros((b, t), jnp.int32), jnp.zeros((b, s), jnp.int32)
  kw = dict(q_index=idx, q_segment=zeros_q, kv_segment=zeros_kv, scale=0.3)
  np.testing.assert_allclose(
      np.asarray(blockwise_attention(q, k, v, block_q=4, block_kv=8, **kw)),
      np.asarray(reference_attention(q, k, v, **kw)),
      atol=1e-5,
  )


def test_bfloat16_close_to_float32():
  q, k, v, seg = _inputs(1, 40, 4, 2, 16)
  idx = jnp.arange(40)[None]
  kw = dict(q_index=idx, q_segment=seg, kv_segment=seg, scale=0.25, block_q=16, block_kv=16)
  f32 = blockwise_attention(q, k, v, **kw)
  bf16 = blockwise_attention(
      q.astype(jnp.bfloat16), k.astype(jnp.bfloat16), v.astype(jnp.bfloat16), **kw
  )
  assert bf16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(bf16, np.float32), np.asarray(f32), atol=5e-2)
