"""Prefill of several slots in one call, and evicted sessions restored from host copies of their K/V."""
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.sampling import Engine, SamplingParams
from biomni_jax.sampling.steps import StepCompiler
from tests.sampling.conftest import random_ids

TIMEOUT = 120


def test_prefill_rows_equal_one_row_at_a_time_bit_for_bit(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  steps = StepCompiler(config, None, decode_block=32)
  R, T, S = 4, 32, 128
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, config.vocab_size, (R, T)).astype(np.int32)
  slots, starts, lasts = np.array([3, 0, 2, 1]), np.array([0, 7, 40, 90]), np.array([31, 4, 17, 0])
  key_data = rng.integers(0, 2 ** 31, (R, 2)).astype(np.uint32)
  temperature, top_p, top_k = np.array([0.0, 1.0, 0.7, 1.3]), np.array([1.0, 0.9, 1.0, 0.5]), np.array([0, 0, 5, 0])
  counters = np.zeros(R, np.int32)
  prefix = rng.standard_normal((config.num_hidden_layers, 4, S, config.num_key_value_heads,
                                 config.head_dim)).astype(np.float32)
  fresh_cache = lambda: (jnp.asarray(prefix), jnp.asarray(prefix * 2))  # noqa: E731 - calls donate the cache
  args = (key_data, counters, temperature, top_p, top_k)

  together_tok, together_lp, (k_all, v_all) = steps.prefill(params, fresh_cache(), R, slots, tokens, starts,
                                                           lasts, *args)
  cache = fresh_cache()
  for r in range(R):  # each row alone, in a call whose other rows are skipped (num_rows = 1)
    row = lambda x: np.concatenate([x[r:r + 1], np.zeros_like(x[:R - 1])])  # noqa: E731
    tok, lp, cache = steps.prefill(params, cache, 1, row(slots), row(tokens), row(starts), row(lasts),
                                   *(row(a) for a in args))
    assert int(tok[0]) == int(together_tok[r])
    assert np.asarray(lp)[0] == np.asarray(together_lp)[r]  # bit-identical
  np.testing.assert_array_equal(np.asarray(cache[0]), np.asarray(k_all))
  np.testing.assert_array_equal(np.asarray(cache[1]), np.asarray(v_all))
  # Against the model's own forward: the chunk's logits at `last` give the greedy row's token.
  full = np.asarray(M.forward_with_cache(config, params, tokens[:1], tuple(c[:, 3:4] for c in fresh_cache()),
                                         starts[:1], logits_index=lasts[:1])[0])
  assert int(together_tok[0]) == int(np.argmax(full[0]))


def test_more_sessions_than_slots_restore_offloaded_kv_instead_of_reprefilling(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  sp = SamplingParams(temperature=0.9, max_new_tokens=5, seed=3)
  prompts = [random_ids(20 + 3 * i, seed=80 + i) for i in range(4)]
  results = {}
  for budget in (0, 1 << 30):  # no host copies (re-prefill) vs host copies
    with Engine(config, params, num_slots=2, max_len=128, max_prefill_chunk=32, decode_block=32,
                host_offload_bytes=budget) as eng:
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
  one_copy = 2 * config.num_hidden_layers * 32 * config.num_key_value_heads * config.head_dim * 4  # P = 32, f32
  with Engine(config, params, num_slots=1, max_len=128, max_prefill_chunk=32, decode_block=32,
              host_offload_bytes=one_copy) as eng:
    sessions = [eng.open_session() for _ in range(3)]
    for i, s in enumerate(sessions):
      eng.submit(s, random_ids(10, seed=90 + i), sp).result(TIMEOUT)
    # s0 and s1 were evicted in turn; only s1's copy fits.
    assert sessions[0].offloaded is None and sessions[1].offloaded is not None
    again = eng.submit(sessions[1], [5], sp).result(TIMEOUT)
    assert again.prompt_tokens_prefilled == 2
