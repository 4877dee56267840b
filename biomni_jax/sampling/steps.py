"""The engine's jitted programs: chunked prefill of R slots at once, one decode step over all slots, both in
one program, and the copies of one slot's K/V prefix to and from the host (sessions evicted from their slot).

Prefill and decode sample in the same program (see `sampler.py`) and donate the cache, so XLA updates it
in place. Their per-row inputs travel as pytrees (numpy on the host, one transfer per call):
  SamplingRows  key_data uint32 [R, 2], counters int32 [R] (index of the row's token in its request),
                temperature float32 [R], top_p float32 [R], top_k int32 [R]
  PrefillRows   num_rows int32 [], slots [R], tokens [R, T], starts [R], lasts [R] (int32), sampling
  DecodeRows    tokens int32 [N], lengths int32 [N], active bool [N], sampling

  prefill(params, cache, PrefillRows) -> (tokens [R], logprobs [R], cache)
      for r < num_rows, appends tokens[r, :lasts[r] + 1] (the rest is padding up to the bucket T) to cache
      slot slots[r] at starts[r] via `model.forward_with_cache` on that slot's rows and samples from its
      logits at index lasts[r]. Rows run one after another inside the program, so a row's result is
      bit-identical alone or with others; the call saves the per-row dispatch and host round trip.
  decode(params, cache, DecodeRows) -> (tokens [N], logprobs [N], cache)
      active marks the rows being sampled; attention spans only their lengths (decode.decode_forward).
  prefill_decode(params, decode_params, cache, PrefillRows, from_prefill [N], DecodeRows)
      -> (prefill tokens [R], prefill logprobs [R], decode tokens [N], decode logprobs [N], cache)
      prefill, then decode on the cache it wrote, in one dispatch. Decode row n with from_prefill[n] = r >= 0
      feeds the token prefill row r just sampled (a request whose last prompt chunk was prefilled decodes
      in the same step, as with two calls). One device call and one host sync per engine iteration instead
      of two: on a busy engine a turn arrives every few steps, and a separate prefill call costs about
      as much dispatch and synchronisation as a whole decode step. Each half is the same computation as
      the separate program's, so results do not depend on which program a step ran in (tested bit for bit).
  read_slot(cache, slot, P) -> (k, v) each [L, P, K, D]: positions 0..P-1 of one slot.
  write_slot(cache, slot, k, v) -> cache with those positions of `slot` replaced.
One prefill and one prefill_decode compilation per chunk bucket T (R is fixed per engine), one decode
compilation, one read/write per prefix bucket P; `StepCompiler` logs them.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.sampling.decode import decode_forward
from biomni_jax.sampling.kv_cache import cache_sharding
from biomni_jax.sampling.sampler import sample_tokens
from biomni_jax.sharding import ShardingRules

log = logging.getLogger(__name__)


class SamplingRows(NamedTuple):
  """How each of R rows samples its next token (see the module docstring for shapes)."""

  key_data: np.ndarray
  counters: np.ndarray
  temperature: np.ndarray
  top_p: np.ndarray
  top_k: np.ndarray

  @classmethod
  def zeros(cls, rows: int) -> "SamplingRows":
    """Greedy, untruncated rows (what padding rows carry)."""
    return cls(
        np.zeros((rows, 2), np.uint32),
        np.zeros(rows, np.int32),
        np.zeros(rows, np.float32),
        np.ones(rows, np.float32),
        np.zeros(rows, np.int32),
    )

  def set_row(self, i: int, params, key_data, counter: int = 0) -> None:
    """Row i samples as `params` (a SamplingParams) from the request key `key_data`."""
    self.key_data[i], self.counters[i] = key_data, counter
    self.temperature[i], self.top_p[i], self.top_k[i] = (
        params.temperature,
        params.top_p,
        params.top_k,
    )

  def sample(self, logits):
    """logits float32 [R, V] -> (tokens int32 [R], logprobs float32 [R])."""
    return sample_tokens(logits, *self)


class PrefillRows(NamedTuple):
  num_rows: np.ndarray
  slots: np.ndarray
  tokens: np.ndarray
  starts: np.ndarray
  lasts: np.ndarray
  sampling: SamplingRows

  @classmethod
  def zeros(cls, rows: int, width: int) -> "PrefillRows":
    i32 = lambda *shape: np.zeros(shape, np.int32)  # noqa: E731
    return cls(i32(), i32(rows), i32(rows, width), i32(rows), i32(rows), SamplingRows.zeros(rows))


class DecodeRows(NamedTuple):
  tokens: np.ndarray
  lengths: np.ndarray
  active: np.ndarray
  sampling: SamplingRows

  @classmethod
  def zeros(cls, rows: int) -> "DecodeRows":
    return cls(
        np.zeros(rows, np.int32),
        np.zeros(rows, np.int32),
        np.zeros(rows, bool),
        SamplingRows.zeros(rows),
    )


def prefill_one(config, rules, params, cache, slot, tokens, start, last, sampling: SamplingRows):
  """One slot: tokens [1, T] at `start`; samples from the logits at `last` with the one-row `sampling`
  -> (token [1], logprob [1], cache)."""
  cache_k, cache_v = cache
  rows = tuple(jax.lax.dynamic_slice_in_dim(c, slot, 1, axis=1) for c in (cache_k, cache_v))
  logits, (new_k, new_v) = M.forward_with_cache(
      config, params, tokens, rows, start[None], logits_index=last[None], sharding=rules
  )
  cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, new_k, slot, axis=1)
  cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, new_v, slot, axis=1)
  token, logprob = sampling.sample(logits)
  return token, logprob, (cache_k, cache_v)


def prefill_rows(config, rules, params, cache, rows: PrefillRows):
  """Rows 0..num_rows-1 one after another, each as `prefill_one` with shapes [1, T]: a row's K/V, token and
  log-prob are bit-identical to prefilling it alone (XLA picks matmul kernels by shape, so stacking rows
  into [R * T, E] products would change the last bits). One dispatch for all rows; rows past num_rows
  cost nothing (a while loop) and return zeros."""
  R = rows.tokens.shape[0]

  def body(i, carry):
    out_tokens, out_logprobs, cache = carry
    row = lambda x: jax.lax.dynamic_slice_in_dim(x, i, 1, axis=0)  # noqa: E731
    token, logprob, cache = prefill_one(
        config,
        rules,
        params,
        cache,
        rows.slots[i],
        row(rows.tokens),
        rows.starts[i],
        rows.lasts[i],
        jax.tree.map(row, rows.sampling),
    )
    return (
        jax.lax.dynamic_update_slice_in_dim(out_tokens, token, i, axis=0),
        jax.lax.dynamic_update_slice_in_dim(out_logprobs, logprob, i, axis=0),
        cache,
    )

  init = (jnp.zeros((R,), jnp.int32), jnp.zeros((R,), jnp.float32), cache)
  return jax.lax.fori_loop(0, rows.num_rows, body, init)


def read_slot(cache, slot, length: int):
  """Positions [0, length) of one slot: (k, v) each [L, length, K, D]."""
  return tuple(jax.lax.dynamic_slice_in_dim(c, slot, 1, axis=1)[:, 0, :length] for c in cache)


def write_slot(cache, slot, k, v):
  """`cache` with positions [0, P) of `slot` replaced by k, v [L, P, K, D]."""
  zero = jnp.zeros((), jnp.int32)
  return tuple(
      jax.lax.dynamic_update_slice(c, x[:, None].astype(c.dtype), (zero, slot, zero, zero, zero))
      for c, x in zip(cache, (k, v))
  )


def decode_all(config, block, params, cache, rows: DecodeRows):
  logits, cache = decode_forward(
      config, params, cache, rows.tokens, rows.lengths, block=block, active=rows.active
  )
  token, logprob = rows.sampling.sample(logits)
  return token, logprob, cache


def prefill_decode(
    config, rules, block, params, decode_params, cache, prefill: PrefillRows, from_prefill, decode
):
  """prefill_rows, then decode_all on the cache it wrote; decode rows with from_prefill >= 0 feed that prefill
  row's sampled token."""
  p_tok, p_lp, cache = prefill_rows(config, rules, params, cache, prefill)
  fed = jnp.where(from_prefill >= 0, p_tok[jnp.maximum(from_prefill, 0)], decode.tokens)
  d_tok, d_lp, cache = decode_all(config, block, decode_params, cache, decode._replace(tokens=fed))
  return p_tok, p_lp, d_tok, d_lp, cache


class StepCompiler:
  """Holds the jitted steps for one (config, mesh) and records each new compilation shape."""

  def __init__(self, config: M.ModelConfig, rules: ShardingRules | None, decode_block: int):
    self.config, self.rules = config, rules
    self.compiled: list[tuple[str, tuple]] = []
    cs = cache_sharding(rules)
    out = None if cs is None else (None, None, (cs, cs))
    out5 = None if cs is None else (None, None, None, None, (cs, cs))
    self._prefill = jax.jit(
        lambda *a: prefill_rows(config, rules, *a), donate_argnums=(1,), out_shardings=out
    )
    self._decode = jax.jit(
        lambda *a: decode_all(config, decode_block, *a), donate_argnums=(1,), out_shardings=out
    )
    self._prefill_decode = jax.jit(
        lambda *a: prefill_decode(config, rules, decode_block, *a),
        donate_argnums=(2,),
        out_shardings=out5,
    )
    self._read = jax.jit(read_slot, static_argnums=(2,))
    self._write = jax.jit(
        write_slot, donate_argnums=(0,), out_shardings=None if cs is None else (cs, cs)
    )

  def _note(self, kind: str, shape: tuple) -> None:
    if (kind, shape) not in self.compiled:
      self.compiled.append((kind, shape))
      log.info(
          "sampling: compiling %s for shape %s (%d programs so far)",
          kind,
          shape,
          len(self.compiled),
      )

  def prefill(self, params, cache, rows: PrefillRows):
    self._note("prefill", rows.tokens.shape)
    return self._prefill(params, cache, rows)

  def decode(self, params, cache, rows: DecodeRows):
    self._note("decode", rows.tokens.shape)
    return self._decode(params, cache, rows)

  def prefill_decode(
      self, params, decode_params, cache, prefill: PrefillRows, from_prefill, decode
  ):
    self._note("prefill_decode", prefill.tokens.shape)
    return self._prefill_decode(
        params, decode_params, cache, prefill, np.asarray(from_prefill, np.int32), decode
    )

  def lowered(self, params, decode_params, cache, rows: int, width: int):
    """The (prefill, decode, prefill_decode) programs lowered for `rows` x `width` chunks over the
    cache's slots, not compiled; arguments may be ShapeDtypeStructs (ahead-of-time compilation)."""
    n = cache[0].shape[1]
    prefill, decode = PrefillRows.zeros(rows, width), DecodeRows.zeros(n)
    return (
        self._prefill.lower(params, cache, prefill),
        self._decode.lower(decode_params, cache, decode),
        self._prefill_decode.lower(
            params, decode_params, cache, prefill, np.zeros(n, np.int32), decode
        ),
    )

  def precompile(self, params, decode_params, cache, rows: int, buckets) -> None:
    """Compiles prefill and prefill_decode for every chunk bucket, and decode, without running them (the
    cache is not donated). Calls made later with the same shapes reuse these executables."""
    n = cache[0].shape[1]
    for i, width in enumerate(buckets):
      prefill, decode, fused = self.lowered(params, decode_params, cache, rows, width)
      if i == 0:
        self._note("decode", (n,))
        decode.compile()
      self._note("prefill", (rows, width))
      prefill.compile()
      self._note("prefill_decode", (rows, width))
      fused.compile()

  def read_slot(self, cache, slot: int, length: int):
    self._note("read_slot", (length,))
    return self._read(cache, np.int32(slot), int(length))

  def write_slot(self, cache, slot: int, k, v):
    self._note("write_slot", (k.shape[1],))
    return self._write(cache, np.int32(slot), k, v)
