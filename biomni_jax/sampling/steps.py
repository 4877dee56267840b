"""The engine's jitted programs: chunked prefill of R slots at once, one decode step over all slots, both in
one program, and the copies of one slot's K/V prefix to and from the host (sessions evicted from their slot).

Prefill and decode sample in the same program (see `sampler.py`) and donate the cache, so XLA updates it
in place.
  prefill(params, cache, num_rows, slots [R], tokens [R, T], starts [R], lasts [R], key_data [R, 2],
          counters [R], temperature [R], top_p [R], top_k [R]) -> (tokens [R], logprobs [R], cache)
      for r < num_rows, appends tokens[r, :lasts[r] + 1] (the rest is padding up to the bucket T) to cache
      slot slots[r] at starts[r] via `model.forward_with_cache` on that slot's rows and samples from its
      logits at index lasts[r]. Rows run one after another inside the program, so a row's result is
      bit-identical alone or with others; the call saves the per-row dispatch and host round trip.
  decode(params, cache, tokens [N], lengths [N], active [N], key_data [N, 2], counters [N], temperature [N],
         top_p [N], top_k [N]) -> (tokens [N], logprobs [N], cache)
      active marks the rows being sampled; attention spans only their lengths (decode.decode_forward).
  prefill_decode(params, decode_params, cache, <prefill's arguments>, from_prefill [N], <decode's arguments>)
      -> (prefill tokens [R], prefill logprobs [R], decode tokens [N], decode logprobs [N], cache)
      prefill, then decode on the cache it wrote, in one dispatch. Decode row n with from_prefill[n] = r >= 0
      feeds the token prefill row r just sampled (a request whose last prompt chunk was prefilled decodes
      in the same step, as with two calls). One device call and one host sync per engine iteration instead
      of two: on a busy engine a turn arrives every few steps, and a separate prefill call costs about
      as much dispatch and synchronisation as a whole decode step. Each half is the same computation as
      the separate program's, so results do not depend on which program a step ran in (tested bit for bit).
  read_slot(cache, slot, P) -> (k, v) each [L, P, K, D]: positions 0..P-1 of one slot.
  write_slot(cache, slot, k, v) -> cache with those positions of `slot` replaced.
One prefill and one prefill_decode compilation per chunk bucket T (R is fixed per engine), one decode compilation, one read/write per
prefix bucket P; `StepCompiler` logs them.
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.sampling.decode import decode_forward
from biomni_jax.sampling.kv_cache import cache_sharding
from biomni_jax.sampling.sampler import sample_tokens
from biomni_jax.sharding import ShardingRules

log = logging.getLogger(__name__)


def prefill_one(
    config,
    rules,
    params,
    cache,
    slot,
    tokens,
    start,
    last,
    key_data,
    counter,
    temperature,
    top_p,
    top_k,
):
  """One slot: tokens [1, T] at `start`; samples from the logits at `last` -> (token [1], logprob [1], cache)."""
  cache_k, cache_v = cache
  rows = tuple(jax.lax.dynamic_slice_in_dim(c, slot, 1, axis=1) for c in (cache_k, cache_v))
  logits, (new_k, new_v) = M.forward_with_cache(
      config, params, tokens, rows, start[None], logits_index=last[None], sharding=rules
  )
  cache_k = jax.lax.dynamic_update_slice_in_dim(cache_k, new_k, slot, axis=1)
  cache_v = jax.lax.dynamic_update_slice_in_dim(cache_v, new_v, slot, axis=1)
  token, logprob = sample_tokens(logits, key_data, counter, temperature, top_p, top_k)
  return token, logprob, (cache_k, cache_v)


def prefill_rows(
    config,
    rules,
    params,
    cache,
    num_rows,
    slots,
    tokens,
    starts,
    lasts,
    key_data,
    counters,
    temperature,
    top_p,
    top_k,
):
  """Rows 0..num_rows-1 one after another, each as `prefill_one` with shapes [1, T]: a row's K/V, token and
  log-prob are bit-identical to prefilling it alone (XLA picks matmul kernels by shape, so stacking rows
  into [R * T, E] products would change the last bits). One dispatch for all rows; rows past num_rows
  cost nothing (a while loop) and return zeros."""
  R = tokens.shape[0]

  def body(i, carry):
    out_tokens, out_logprobs, cache = carry
    row = lambda x: jax.lax.dynamic_slice_in_dim(x, i, 1, axis=0)
    token, logprob, cache = prefill_one(
        config,
        rules,
        params,
        cache,
        slots[i],
        row(tokens),
        starts[i],
        lasts[i],
        row(key_data),
        row(counters),
        row(temperature),
        row(top_p),
        row(top_k),
    )
    return (
        jax.lax.dynamic_update_slice_in_dim(out_tokens, token, i, axis=0),
        jax.lax.dynamic_update_slice_in_dim(out_logprobs, logprob, i, axis=0),
        cache,
    )

  init = (jnp.zeros((R,), jnp.int32), jnp.zeros((R,), jnp.float32), cache)
  return jax.lax.fori_loop(0, num_rows, body, init)


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


def decode_all(
    config,
    block,
    params,
    cache,
    tokens,
    lengths,
    active,
    key_data,
    counters,
    temperature,
    top_p,
    top_k,
):
  logits, cache = decode_forward(config, params, cache, tokens, lengths, block=block, active=active)
  token, logprob = sample_tokens(logits, key_data, counters, temperature, top_p, top_k)
  return token, logprob, cache


def prefill_decode(
    config,
    rules,
    block,
    params,
    decode_params,
    cache,
    num_rows,
    slots,
    tokens,
    starts,
    lasts,
    p_key_data,
    p_counters,
    p_temperature,
    p_top_p,
    p_top_k,
    from_prefill,
    d_tokens,
    lengths,
    active,
    key_data,
    counters,
    temperature,
    top_p,
    top_k,
):
  """prefill_rows, then decode_all on the cache it wrote; decode rows with from_prefill >= 0 feed that prefill
  row's sampled token."""
  p_tok, p_lp, cache = prefill_rows(
      config,
      rules,
      params,
      cache,
      num_rows,
      slots,
      tokens,
      starts,
      lasts,
      p_key_data,
      p_counters,
      p_temperature,
      p_top_p,
      p_top_k,
  )
  d_tokens = jnp.where(from_prefill >= 0, p_tok[jnp.maximum(from_prefill, 0)], d_tokens)
  d_tok, d_lp, cache = decode_all(
      config,
      block,
      decode_params,
      cache,
      d_tokens,
      lengths,
      active,
      key_data,
      counters,
      temperature,
      top_p,
      top_k,
  )
  return p_tok, p_lp, d_tok, d_lp, cache


# Host arrays go to the jitted calls as numpy: jit transfers them in one batch, while a jnp.asarray per
# argument costs tens of microseconds each (a visible share of a decode step on CPU).
def _i32(x):
  return np.asarray(x, np.int32)


def _u32(x):
  return np.asarray(x, np.uint32)


def _f32(x):
  return np.asarray(x, np.float32)


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

  def prefill(
      self,
      params,
      cache,
      num_rows,
      slots,
      tokens,
      starts,
      lasts,
      key_data,
      counters,
      temperature,
      top_p,
      top_k,
  ):
    self._note("prefill", tokens.shape)
    return self._prefill(
        params,
        cache,
        _i32(num_rows),
        _i32(slots),
        _i32(tokens),
        _i32(starts),
        _i32(lasts),
        _u32(key_data),
        _i32(counters),
        _f32(temperature),
        _f32(top_p),
        _i32(top_k),
    )

  def precompile(self, params, decode_params, cache, rows: int, buckets) -> None:
    """Compiles prefill and prefill_decode for every chunk bucket, and decode, without running them (the
    cache is not donated). Calls made later with the same shapes reuse these executables."""
    n = cache[0].shape[1]
    i, u, f, b = (
        (lambda *s: np.zeros(s, np.int32)),
        (lambda *s: np.zeros(s, np.uint32)),
        (lambda *s: np.zeros(s, np.float32)),
        (lambda *s: np.zeros(s, bool)),
    )
    decode = (i(n), i(n), b(n), u(n, 2), i(n), f(n), f(n), i(n))
    self._note("decode", (n,))
    self._decode.lower(decode_params, cache, *decode).compile()
    for width in buckets:
      prefill = (
          i(),
          i(rows),
          i(rows, width),
          i(rows),
          i(rows),
          u(rows, 2),
          i(rows),
          f(rows),
          f(rows),
          i(rows),
      )
      self._note("prefill", (rows, width))
      self._prefill.lower(params, cache, *prefill).compile()
      self._note("prefill_decode", (rows, width))
      self._prefill_decode.lower(params, decode_params, cache, *prefill, i(n), *decode).compile()

  def read_slot(self, cache, slot: int, length: int):
    self._note("read_slot", (length,))
    return self._read(cache, _i32(slot), int(length))

  def write_slot(self, cache, slot: int, k, v):
    self._note("write_slot", (k.shape[1],))
    return self._write(cache, _i32(slot), k, v)

  def decode(
      self, params, cache, tokens, lengths, active, key_data, counters, temperature, top_p, top_k
  ):
    self._note("decode", tokens.shape)
    return self._decode(
        params,
        cache,
        _i32(tokens),
        _i32(lengths),
        np.asarray(active, bool),
        _u32(key_data),
        _i32(counters),
        _f32(temperature),
        _f32(top_p),
        _i32(top_k),
    )

  def prefill_decode(
      self, params, decode_params, cache, prefill: tuple, from_prefill, decode: tuple
  ):
    """prefill: prefill's arguments after the cache; decode: decode's arguments after the cache."""
    num_rows, slots, tokens, starts, lasts, p_key, p_counters, p_temperature, p_top_p, p_top_k = (
        prefill
    )
    d_tokens, lengths, active, key_data, counters, temperature, top_p, top_k = decode
    self._note("prefill_decode", tokens.shape)
    return self._prefill_decode(
        params,
        decode_params,
        cache,
        _i32(num_rows),
        _i32(slots),
        _i32(tokens),
        _i32(starts),
        _i32(lasts),
        _u32(p_key),
        _i32(p_counters),
        _f32(p_temperature),
        _f32(p_top_p),
        _i32(p_top_k),
        _i32(from_prefill),
        _i32(d_tokens),
        _i32(lengths),
        np.asarray(active, bool),
        _u32(key_data),
        _i32(counters),
        _f32(temperature),
        _f32(top_p),
        _i32(top_k),
    )
