"""Prefill of several slots in one call, and evicted sessions restored from host copies of their K/V."""

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.sampling import Engine, SamplingParams
from biomni_jax.sampling.decode import unstack_layers
from biomni_jax.sampling.steps import DecodeRows, PrefillRows, SamplingRows, StepCompiler
from tests.sampling.conftest import random_ids

TIMEOUT = 120


def test_prefill_rows_equal_one_row_at_a_time_bit_for_bit(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  steps = StepCompiler(config, None, decode_block=32)
  R, T, S = 4, 32, 128
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (R, T)).astype(np.int32)
  slots, starts, lasts = np.array([3, 0, 2, 1]), np.array([0, 7, 40, 90]), np.array([31, 4, 17, 0])
  key_data = rng.integers(0, 2**31, (R, 2)).astype(np.uint32)
  temperature, top_p, top_k = (
      np.array([0.0, 1.0, 0.7, 1.3]),
      np.array([1.0, 0.9, 1.0, 0.5]),
      np.array([0, 0, 5, 0]),
  )
  counters = np.zeros(R, np.int32)
  prefix = rng.standard_normal(
      (config.num_hidden_layers, 4, S, config.num_key_value_heads, config.head_dim)
  ).astype(np.float32)
  fresh_cache = lambda: (jnp.asarray(prefix), jnp.asarray(prefix * 2))  # noqa: E731 - calls donate the cache
  sampling = SamplingRows(
      key_data,
      counters,
      *(
          np.asarray(a, t)
          for a, t in [(temperature, np.float32), (top_p, np.float32), (top_k, np.int32)]
      ),
  )
  rows = PrefillRows(
      np.int32(R),
      slots.astype(np.int32),
      tokens,
      starts.astype(np.int32),
      lasts.astype(np.int32),
      sampling,
  )

  together_tok, together_lp, (k_all, v_all) = steps.prefill(params, fresh_cache(), rows)
  cache = fresh_cache()
  for r in range(R):  # each row alone, in a call whose other rows are skipped (num_rows = 1)
    row = lambda x: np.concatenate([x[r : r + 1], np.zeros_like(x[: R - 1])])  # noqa: E731
    alone = jax.tree.map(row, rows._replace(num_rows=None))._replace(num_rows=np.int32(1))
    tok, lp, cache = steps.prefill(params, cache, alone)
    assert int(tok[0]) == int(together_tok[r])
    assert np.asarray(lp)[0] == np.asarray(together_lp)[r]  # bit-identical
  np.testing.assert_array_equal(np.asarray(cache[0]), np.asarray(k_all))
  np.testing.assert_array_equal(np.asarray(cache[1]), np.asarray(v_all))
  # Against the model's own forward: the chunk's logits at `last` give the greedy row's token.
  full = np.asarray(
      M.forward_with_cache(
          config,
          params,
          tokens[:1],
          tuple(c[:, 3:4] for c in fresh_cache()),
          starts[:1],
          logits_index=lasts[:1],
      )[0]
  )
  assert int(together_tok[0]) == int(np.argmax(full[0]))


def test_more_sessions_than_slots_restore_offloaded_kv_instead_of_reprefilling(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  sp = SamplingParams(temperature=0.9, max_new_tokens=5, seed=3)
  prompts = [random_ids(20 + 3 * i, seed=80 + i) for i in range(4)]
  results = {}
  for budget in (0, 1 << 30):  # no host copies (re-prefill) vs host copies
    with Engine(
        config,
        params,
        num_slots=2,
        max_len=128,
        max_prefill_chunk=32,
        decode_block=32,
        host_offload_bytes=budget,
    ) as eng:
      sessions = [eng.open_session() for _ in prompts]
      first = [eng.submit(s, p, sp) for s, p in zip(sessions, prompts)]
      first = [f.result(TIMEOUT) for f in first]
      second = [eng.submit(s, [7, 8, 9], sp).result(TIMEOUT) for s in sessions]
      results[budget] = (first, second, dict(eng.stats))
  (first0, second0, stats0), (first1, second1, stats1) = results[0], results[1 << 30]
  assert stats0["evictions"] >= 2 and stats0["offloads"] == 0 and stats0["restored_tokens"] == 0
  assert stats1["offloads"] >= 2 and stats1["restored_tokens"] > 0
  assert stats1["prefilled_tokens"] < stats0["prefilled_tokens"]
  for a, b in zip(first0 + second0, first1 + second1):
    assert a.token_ids == b.token_ids
    np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-5)
  # A restored turn prefilled only its new tokens (+ the last sampled token of the turn before).
  assert [c.prompt_tokens_prefilled for c in second1].count(4) >= 2


def test_host_offload_budget_drops_oldest_copies(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  sp = SamplingParams(temperature=0, max_new_tokens=3)
  one_copy = (
      2 * config.num_hidden_layers * 32 * config.num_key_value_heads * config.head_dim * 4
  )  # P = 32, f32
  with Engine(
      config,
      params,
      num_slots=1,
      max_len=128,
      max_prefill_chunk=32,
      decode_block=32,
      host_offload_bytes=one_copy,
  ) as eng:
    sessions = [eng.open_session() for _ in range(3)]
    for i, s in enumerate(sessions):
      eng.submit(s, random_ids(10, seed=90 + i), sp).result(TIMEOUT)
    # s0 and s1 were evicted in turn; only s1's copy fits.
    assert sessions[0].offloaded is None and sessions[1].offloaded is not None
    again = eng.submit(sessions[1], [5], sp).result(TIMEOUT)
    assert again.prompt_tokens_prefilled == 2


def test_prefill_decode_in_one_program_equals_the_two_programs_bit_for_bit(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  steps = StepCompiler(config, None, decode_block=32)
  dparams = unstack_layers(params)
  N, R, T, S = 6, 6, 16, 128
  rng = np.random.default_rng(1)
  prefix = rng.standard_normal(
      (config.num_hidden_layers, N, S, config.num_key_value_heads, config.head_dim)
  ).astype(np.float32)
  fresh_cache = lambda: (jnp.asarray(prefix), jnp.asarray(prefix * 2))  # noqa: E731 - calls donate the cache
  # Prefill rows 0..2 into slots 4, 1, 5; slots 1 and 4 complete their prompt and decode at once.
  slots, starts, lasts = (
      np.array([4, 1, 5, 0, 0, 0]),
      np.array([9, 60, 0, 0, 0, 0]),
      np.array([15, 3, 10, 0, 0, 0]),
  )
  prefill = PrefillRows(
      np.int32(3),
      slots.astype(np.int32),
      rng.integers(0, config.vocab_size, (R, T)).astype(np.int32),
      starts.astype(np.int32),
      lasts.astype(np.int32),
      SamplingRows(
          rng.integers(0, 2**31, (R, 2)).astype(np.uint32),
          np.zeros(R, np.int32),
          np.full(R, 0.9, np.float32),
          np.ones(R, np.float32),
          np.zeros(R, np.int32),
      ),
  )
  from_prefill = np.array([-1, 1, -1, -1, 0, -1])
  d_tokens = rng.integers(0, config.vocab_size, N).astype(np.int32)
  lengths = np.array(
      [70, 64, 3, 30, 25, 11]
  )  # slot 5 is idle mid-prompt: written past its 11 valid positions
  active = np.array([True, True, False, True, True, False])
  decode = DecodeRows(
      d_tokens,
      lengths.astype(np.int32),
      active,
      SamplingRows(
          rng.integers(0, 2**31, (N, 2)).astype(np.uint32),
          np.array([3, 1, 0, 7, 1, 0], np.int32),
          np.full(N, 1.1, np.float32),
          np.full(N, 0.95, np.float32),
          np.array([0, 5, 0, 0, 0, 0], np.int32),
      ),
  )

  p_tok, p_lp, cache = steps.prefill(params, fresh_cache(), prefill)
  fed = np.where(from_prefill >= 0, np.asarray(p_tok)[np.maximum(from_prefill, 0)], d_tokens)
  d_tok, d_lp, (k_two, v_two) = steps.decode(dparams, cache, decode._replace(tokens=fed))
  p_tok1, p_lp1, d_tok1, d_lp1, (k_one, v_one) = steps.prefill_decode(
      params, dparams, fresh_cache(), prefill, from_prefill, decode
  )
  np.testing.assert_array_equal(np.asarray(p_tok1), np.asarray(p_tok))
  np.testing.assert_array_equal(np.asarray(p_lp1), np.asarray(p_lp))
  np.testing.assert_array_equal(np.asarray(d_tok1)[active], np.asarray(d_tok)[active])
  np.testing.assert_array_equal(np.asarray(d_lp1)[active], np.asarray(d_lp)[active])
  np.testing.assert_array_equal(np.asarray(k_one), np.asarray(k_two))
  np.testing.assert_array_equal(np.asarray(v_one), np.asarray(v_two))


def test_decode_attends_over_active_rows_only_and_their_results_do_not_change(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  steps = StepCompiler(config, None, decode_block=16)
  dparams = unstack_layers(params)
  N, S = 4, 128
  rng = np.random.default_rng(2)
  prefix = rng.standard_normal(
      (config.num_hidden_layers, N, S, config.num_key_value_heads, config.head_dim)
  ).astype(np.float32)
  tokens, lengths = np.array([3, 4, 5, 6]), np.array(
      [10, 120, 20, 0]
  )  # slot 1: an idle session of 120 tokens
  sampling = SamplingRows.zeros(N)._replace(
      key_data=rng.integers(0, 2**31, (N, 2)).astype(np.uint32)
  )
  outs = [
      steps.decode(
          dparams,
          (jnp.asarray(prefix), jnp.asarray(prefix)),
          DecodeRows(tokens.astype(np.int32), lengths.astype(np.int32), active, sampling),
      )
      for active in (np.ones(N, bool), np.array([True, False, True, False]))
  ]
  for row in (0, 2):
    assert np.asarray(outs[0][1])[row] == np.asarray(outs[1][1])[row]  # bit-identical log-probs
  # The idle row wrote (garbage) K/V at its own position only: its valid prefix is untouched.
  k_idle = np.asarray(outs[1][2][0])[:, 1]
  np.testing.assert_array_equal(k_idle[:, :120], prefix[:, 1, :120])
  np.testing.assert_array_equal(k_idle[:, 121:], prefix[:, 1, 121:])


def test_precompile_covers_every_program_the_engine_runs(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  with Engine(
      config, params, num_slots=3, max_len=128, max_prefill_chunk=32, decode_block=32
  ) as eng:
    eng.precompile()
    compiled = set(eng.compilations)
    sp = SamplingParams(temperature=0.7, max_new_tokens=6, seed=1)
    futures = [eng.generate(random_ids(n, seed=n), sp) for n in (5, 20, 40, 70)]
    assert all(len(f.result(TIMEOUT).token_ids) == 6 for f in futures)
    assert eng.stats["fused_prefills"] >= 1
    assert {c for c in eng.compilations if c[0] != "read_slot" and c[0] != "write_slot"} <= compiled
