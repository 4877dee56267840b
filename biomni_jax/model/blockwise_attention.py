"""Blockwise (flash-style) causal attention in pure JAX: O(T) memory forward and backward.

Shapes (G = query heads per kv head):
  q [B, T, K*G, D], k/v [B, S, K, D]
  q_index   int32 [B, T]  index in the kv buffer of each query (causality: kv position s is visible iff
                          s <= q_index); for training q_index = arange(T), for a KV-cache prefill it is
                          cache_length + arange(T), and under context parallelism it is the global index.
  q_segment int32 [B, T], kv_segment int32 [B, S]: attention only within equal segment ids (packing).

Forward, per query block: an online softmax over kv blocks 0..ceil((max q_index + 1) / block_kv) - 1, so
masked-out future blocks are never computed:
    m' = max(m, rowmax(s)),  l' = l e^{m - m'} + rowsum(e^{s - m'}),  o' = o e^{m - m'} + e^{s - m'} v
The backward (FlashAttention-2) recomputes scores per block from the saved log-sum-exp L = m + log l:
    p = e^{s - L},  dv = p^T do,  dp = do v^T,  ds = p * (dp - rowsum(do * o)),  dq = ds k,  dk = ds^T q.
Lengths that are not a multiple of the block are padded with segment ids that never match.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

_NEG = -1e30  # finite "minus infinity": keeps exp() and max() NaN-free on fully masked rows
_Q_PAD_SEGMENT, _KV_PAD_SEGMENT = -1, -2


def _pad_axis(x, multiple: int, axis: int, value):
  pad = (-x.shape[axis]) % multiple
  if pad == 0:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, pad)
  return jnp.pad(x, widths, constant_values=value)


def _block_scores(q_blk, kt_blk, qi_blk, qs_blk, ks_blk, kv_start, scale):
  """Scores and mask of one (query block, kv block) pair.

  q_blk [B, K, G, bq, D], kt_blk [B, K, D, bk] -> s float32 [B, K, G, bq, bk], mask bool [B, 1, 1, bq, bk].
  """
  s = jnp.einsum("bkgqd,bkds->bkgqs", q_blk, kt_blk, preferred_element_type=jnp.float32) * scale
  mask = _block_mask(qi_blk, qs_blk, ks_blk, kv_start, kt_blk.shape[-1])
  return jnp.where(mask[:, None, None], s, _NEG), mask[:, None, None]


def _block_mask(qi_blk, qs_blk, ks_blk, kv_start, block_kv):
  """bool [B, bq, bk]: kv position visible to the query (causal by index, same segment)."""
  kv_pos = kv_start + jnp.arange(block_kv, dtype=jnp.int32)
  return (kv_pos[None, None, :] <= qi_blk[:, :, None]) & (qs_blk[:, :, None] == ks_blk[:, None, :])


def _num_kv_blocks(qi_blk, block_kv: int, num_kv_blocks: int):
  """How many kv blocks a query block can see: those starting at or before its largest q_index."""
  return jnp.clip(jnp.max(qi_blk) // block_kv + 1, 0, num_kv_blocks)


def _split_q(x, block_q: int, kv_heads: int):
  """[B, T, K*G, D] -> [nq, B, K, G, bq, D] (zero-padded to a multiple of block_q)."""
  b, _, h, d = x.shape
  x = _pad_axis(x, block_q, 1, 0).reshape(b, -1, block_q, kv_heads, h // kv_heads, d)
  return x.transpose(1, 0, 3, 4, 2, 5)


def _split(q, k, v, q_index, q_segment, kv_segment, block_q, block_kv):
  """Pads and cuts into blocks, block index first and heads before tokens, so that a loop step slices one
  contiguous block and every block product is a plain batched matmul over (B, K) (XLA:CPU otherwise
  copies each score block into a transposed layout):
    q [nq, B, K, G, bq, D], k/v [nk, B, K, bk, D], q_index/q_segment [nq, B, bq], kv_segment [nk, B, bk].
  """
  b, kh = q.shape[0], k.shape[2]

  def kv_blocks(x):
    return (
        _pad_axis(x, block_kv, 1, 0)
        .reshape(b, -1, block_kv, kh, x.shape[-1])
        .transpose(1, 0, 3, 2, 4)
    )

  def token_blocks(x, block, pad_value):
    return _pad_axis(x, block, 1, pad_value).reshape(b, -1, block).transpose(1, 0, 2)

  return (
      _split_q(q, block_q, kh),
      kv_blocks(k),
      kv_blocks(v),
      token_blocks(q_index, block_q, -1),
      token_blocks(q_segment, block_q, _Q_PAD_SEGMENT),
      token_blocks(kv_segment, block_kv, _KV_PAD_SEGMENT),
  )


def _unsplit_q(x, b: int, t: int):
  """[nq, B, K, G, bq, D] -> [B, T, K*G, D] (drops the padding)."""
  nq, _, kh, g, bq, d = x.shape
  return jnp.transpose(x, (1, 0, 4, 2, 3, 5)).reshape(b, nq * bq, kh * g, d)[:, :t]


def _forward(q, k, v, q_index, q_segment, kv_segment, scale, block_q, block_kv):
  """Returns (out [B, T, H, D] in q.dtype, lse float32 [nq, B, K, G, bq])."""
  b, t, h, d = q.shape
  qb, kb, vb, qib, qsb, ksb = _split(q, k, v, q_index, q_segment, kv_segment, block_q, block_kv)
  ktb = jnp.swapaxes(kb, -1, -2)  # [nk, B, K, D, bk]
  nk = kb.shape[0]
  kh, g = qb.shape[2], qb.shape[3]

  def one_query_block(args):
    q_blk, qi_blk, qs_blk = args

    def body(j, carry):
      o, m, l = carry
      s, mask = _block_scores(q_blk, ktb[j], qi_blk, qs_blk, ksb[j], j * block_kv, scale)
      m_new = jnp.maximum(m, s.max(-1))
      p = jnp.exp(s - m_new[..., None]) * mask
      correction = jnp.exp(m - m_new)
      l = l * correction + p.sum(-1)
      pv = jnp.einsum(
          "bkgqs,bksd->bkgqd", p.astype(vb.dtype), vb[j], preferred_element_type=jnp.float32
      )
      o = o * correction[..., None] + pv
      return o, m_new, l

    init = (
        jnp.zeros((b, kh, g, block_q, d), jnp.float32),
        jnp.full((b, kh, g, block_q), _NEG, jnp.float32),
        jnp.zeros((b, kh, g, block_q), jnp.float32),
    )
    o, m, l = lax.fori_loop(0, _num_kv_blocks(qi_blk, block_kv, nk), body, init)
    safe_l = jnp.where(l > 0, l, 1.0)
    o = jnp.where((l > 0)[..., None], o / safe_l[..., None], 0.0)
    lse = jnp.where(
        l > 0, m + jnp.log(safe_l), -_NEG
    )  # +huge: exp(s - lse) = 0 for fully masked rows
    return o, lse

  # lax.map runs query blocks sequentially so only one block's scores exist at a time.
  o, lse = lax.map(one_query_block, (qb, qib, qsb))
  return _unsplit_q(o, b, t).astype(q.dtype), lse


def _backward(q, k, v, q_index, q_segment, kv_segment, out, lse, d_out, scale, block_q, block_kv):
  """FlashAttention-2 backward. dq loops over kv blocks per query block with scores [.., bq, bk]; dk/dv
  loop over query blocks per kv block with the transposed scores [.., bk, (G, bq)], so that each
  product contracts a minor dimension of one operand and a major one of the other."""
  b, t, h, d = q.shape
  s_len = k.shape[1]
  qb, kb, vb, qib, qsb, ksb = _split(q, k, v, q_index, q_segment, kv_segment, block_q, block_kv)
  dob = _split_q(d_out, block_q, k.shape[2])
  nq, nk = qb.shape[0], kb.shape[0]
  ktb, vtb = jnp.swapaxes(kb, -1, -2), jnp.swapaxes(vb, -1, -2)  # [nk, B, K, D, bk]
  qtb, dotb = (jnp.transpose(x, (0, 1, 2, 5, 3, 4)) for x in (qb, dob))  # [nq, B, K, D, G, bq]
  # delta_i = rowsum(do_i * o_i), blocked as lse: [nq, B, K, G, bq]
  delta = jnp.einsum(
      "nbkgqd,nbkgqd->nbkgq",
      dob.astype(jnp.float32),
      _split_q(out, block_q, k.shape[2]).astype(jnp.float32),
  )

  def dq_for_query_block(args):
    q_blk, qi_blk, qs_blk, do_blk, lse_blk, delta_blk = args

    def body(j, dq):
      s, mask = _block_scores(q_blk, ktb[j], qi_blk, qs_blk, ksb[j], j * block_kv, scale)
      p = jnp.exp(s - lse_blk[..., None]) * mask
      dp = jnp.einsum("bkgqd,bkds->bkgqs", do_blk, vtb[j], preferred_element_type=jnp.float32)
      ds = p * (dp - delta_blk[..., None])
      return (
          dq
          + jnp.einsum(
              "bkgqs,bksd->bkgqd", ds.astype(kb.dtype), kb[j], preferred_element_type=jnp.float32
          )
          * scale
      )

    dq = jnp.zeros(q_blk.shape, jnp.float32)
    return lax.fori_loop(0, _num_kv_blocks(qi_blk, block_kv, nk), body, dq)

  dq = lax.map(dq_for_query_block, (qb, qib, qsb, dob, lse, delta))
  dq = _unsplit_q(dq, b, t)

  q_block_max = jnp.max(qib, axis=(1, 2))  # [nq]: skip query blocks that cannot see this kv block

  def dkv_for_kv_block(args):
    j, k_blk, v_blk, ks_blk = args

    def body(i, acc):
      def accumulate(acc):
        dk, dv = acc
        # Transposed scores [B, K, bk, G, bq] of this (kv block, query block) pair.
        s_t = (
            jnp.einsum("bksd,bkdgq->bksgq", k_blk, qtb[i], preferred_element_type=jnp.float32)
            * scale
        )
        mask_t = jnp.swapaxes(_block_mask(qib[i], qsb[i], ks_blk, j * block_kv, block_kv), 1, 2)
        mask_t = mask_t[:, None, :, None, :]
        p_t = jnp.exp(jnp.where(mask_t, s_t, _NEG) - lse[i][:, :, None]) * mask_t
        dv = dv + jnp.einsum(
            "bksgq,bkgqd->bksd", p_t.astype(dob.dtype), dob[i], preferred_element_type=jnp.float32
        )
        dp_t = jnp.einsum("bksd,bkdgq->bksgq", v_blk, dotb[i], preferred_element_type=jnp.float32)
        ds_t = p_t * (dp_t - delta[i][:, :, None])
        dk = (
            dk
            + jnp.einsum(
                "bksgq,bkgqd->bksd",
                ds_t.astype(qb.dtype),
                qb[i],
                preferred_element_type=jnp.float32,
            )
            * scale
        )
        return dk, dv

      return lax.cond(q_block_max[i] >= j * block_kv, accumulate, lambda acc: acc, acc)

    zeros = jnp.zeros(k_blk.shape, jnp.float32)
    return lax.fori_loop(0, nq, body, (zeros, zeros))

  dk, dv = lax.map(dkv_for_kv_block, (jnp.arange(nk), kb, vb, ksb))
  # [nk, B, K, bk, D] -> [B, S, K, D]
  dk, dv = (
      jnp.transpose(x, (1, 0, 3, 2, 4)).reshape(b, nk * block_kv, x.shape[2], d)[:, :s_len]
      for x in (dk, dv)
  )
  return dq.astype(q.dtype), dk.astype(k.dtype), dv.astype(v.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7, 8))
def _attention(q, k, v, q_index, q_segment, kv_segment, scale, block_q, block_kv):
  return _forward(q, k, v, q_index, q_segment, kv_segment, scale, block_q, block_kv)[0]


def _attention_fwd(q, k, v, q_index, q_segment, kv_segment, scale, block_q, block_kv):
  out, lse = _forward(q, k, v, q_index, q_segment, kv_segment, scale, block_q, block_kv)
  return out, (q, k, v, q_index, q_segment, kv_segment, out, lse)


def _attention_bwd(scale, block_q, block_kv, residuals, d_out):
  q, k, v, q_index, q_segment, kv_segment, out, lse = residuals
  dq, dk, dv = _backward(
      q, k, v, q_index, q_segment, kv_segment, out, lse, d_out, scale, block_q, block_kv
  )
  return dq, dk, dv, None, None, None


_attention.defvjp(_attention_fwd, _attention_bwd)


def blockwise_attention(
    q,
    k,
    v,
    *,
    q_index,
    q_segment,
    kv_segment,
    scale: float,
    block_q: int = 512,
    block_kv: int = 512,
):
  """Causal, segment-masked attention; see the module docstring for shapes. Returns [B, T, H, D]."""
  block_q = min(block_q, q.shape[1])
  block_kv = min(block_kv, k.shape[1])
  return _attention(
      q,
      k,
      v,
      q_index.astype(jnp.int32),
      q_segment.astype(jnp.int32),
      kv_segment.astype(jnp.int32),
      float(scale),
      int(block_q),
      int(block_kv),
  )


def reference_attention(q, k, v, *, q_index, q_segment, kv_segment, scale: float, **unused):
  """Dense [B, H, T, S] attention with the same masking; for tests and tiny shapes only."""
  del unused
  b, t, h, d = q.shape
  kh = k.shape[2]
  qg = q.reshape(b, t, kh, h // kh, d)
  s = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) * scale
  kv_pos = jnp.arange(k.shape[1])
  mask = (kv_pos[None, None, :] <= q_index[:, :, None]) & (
      q_segment[:, :, None] == kv_segment[:, None, :]
  )
  mask = mask[:, None, None]
  s = jnp.where(mask, s, _NEG)
  p = jnp.exp(s - s.max(-1, keepdims=True)) * mask
  denom = p.sum(-1, keepdims=True)
  p = p / jnp.where(denom > 0, denom, 1.0)
  o = jnp.einsum("bkgqs,bskd->bqkgd", p.astype(v.dtype), v, preferred_element_type=jnp.float32)
  return o.reshape(b, t, h, d).astype(q.dtype)
