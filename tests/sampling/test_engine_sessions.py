"""Per-request determinism under batching, multi-turn sessions, weight updates."""

import time

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax.sampling import Engine, SamplingParams
from tests.sampling.conftest import random_ids

TIMEOUT = 120


def test_request_is_identical_alone_and_among_15_others_arriving_at_different_times(engine):
  target_prompt = random_ids(30, seed=10)
  target = SamplingParams(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=1234)
  alone = engine.generate(target_prompt, target).result(TIMEOUT)

  futures = []
  for i in range(15):  # others: different lengths, budgets, temperatures, seeds
    p = SamplingParams(
        temperature=0.5 + 0.1 * (i % 5), top_k=(i % 3) * 20, max_new_tokens=5 + 3 * i, seed=i
    )
    futures.append(engine.generate(random_ids(5 + 7 * i, seed=100 + i), p))
    if i == 7:
      crowded = engine.generate(target_prompt, target)
    time.sleep(0.01 * (i % 4))
  crowded = crowded.result(TIMEOUT)
  assert all(f.result(TIMEOUT).finish_reason == "length" for f in futures)
  assert crowded.token_ids == alone.token_ids
  np.testing.assert_array_equal(crowded.logprobs, alone.logprobs)


def test_five_turn_session_equals_reprefilling_the_whole_history(engine):
  params = [
      SamplingParams(temperature=0.8, max_new_tokens=6 + turn, seed=50 + turn) for turn in range(5)
  ]
  turns_input = [random_ids(40, seed=20)] + [random_ids(9 + 5 * t, seed=21 + t) for t in range(4)]
  session = engine.open_session()
  history, reused, fresh = [], [], []
  for turn in range(5):
    c = engine.submit(session, turns_input[turn], params[turn]).result(TIMEOUT)
    # prefilled only the new tokens (+ the previous turn's last sampled token, whose K/V was never computed)
    assert c.prompt_tokens_prefilled == len(turns_input[turn]) + (1 if turn else 0)
    reused.append(c.token_ids)
    history += turns_input[turn]
    f = engine.generate(history, params[turn]).result(TIMEOUT)
    fresh.append(f.token_ids)
    history += list(f.token_ids)
  engine.close_session(session)
  assert reused == fresh


def test_more_sessions_than_slots_evict_and_reprefill(tiny_checkpoint):
  from biomni_jax.sampling import Engine

  _, config, params = tiny_checkpoint
  with Engine(
      config, params, num_slots=2, max_len=128, max_prefill_chunk=32, decode_block=32
  ) as eng:
    sp = SamplingParams(temperature=0, max_new_tokens=4)
    sessions = [eng.open_session() for _ in range(4)]
    first = [eng.submit(s, random_ids(10, seed=60 + i), sp) for i, s in enumerate(sessions)]
    first = [f.result(TIMEOUT) for f in first]
    second = [eng.submit(s, [7, 8, 9], sp).result(TIMEOUT) for s in sessions]
    assert eng.stats["evictions"] >= 2
    for i in range(4):
      ref = eng.generate(
          random_ids(10, seed=60 + i) + list(first[i].token_ids) + [7, 8, 9], sp
      ).result(TIMEOUT)
      assert second[i].token_ids == ref.token_ids


def test_update_params_applies_from_the_next_step_and_tags_tokens(engine, tiny_checkpoint):
  _, config, params = tiny_checkpoint
  compiled_before = len(engine.compilations)
  silent = jax.tree.map(jnp.copy, params)
  silent["lm_head"] = jnp.zeros_like(params["lm_head"])  # v1: all logits 0 -> greedy picks token 0
  future = engine.generate(
      random_ids(10, seed=30), SamplingParams(temperature=0, max_new_tokens=200)
  )
  start = engine.stats["decoded_tokens"]
  while engine.stats["decoded_tokens"] < start + 5:
    time.sleep(0.002)
  engine.update_params(silent, version=1)
  c = future.result(TIMEOUT)
  engine.update_params(params, version=2)
  versions = np.asarray(c.token_versions)
  switch = int(np.argmax(versions == 1))
  assert 0 < switch < 200 and set(versions[:switch]) == {0} and set(versions[switch:]) == {1}
  assert c.policy_version == 0
  tokens, logprobs = np.asarray(c.token_ids), np.asarray(c.logprobs)
  assert (tokens[switch:] == 0).all() and not (tokens[:switch] == 0).all()
  np.testing.assert_allclose(logprobs[switch:], -np.log(config.vocab_size), atol=1e-5)
  after = engine.generate(
      random_ids(10, seed=30), SamplingParams(temperature=0, max_new_tokens=3)
  ).result(TIMEOUT)
  assert after.token_versions == (2, 2, 2)
  assert len(engine.compilations) == compiled_before


def test_waiting_requests_get_a_slot_lowest_priority_first_and_sample_the_same(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  sp = lambda priority: SamplingParams(temperature=0.8, max_new_tokens=4, seed=9, priority=priority)  # noqa: E731
  order, alone = [], {}
  with Engine(
      config, params, num_slots=1, max_len=128, max_prefill_chunk=32, decode_block=32
  ) as eng:
    for p in (5, 1, 3):
      alone[p] = eng.generate(random_ids(12, seed=p), sp(p)).result(TIMEOUT)
    blocker = eng.generate(random_ids(8, seed=0), SamplingParams(temperature=0, max_new_tokens=60))
    while eng.stats["decoded_tokens"] < 1:  # the blocker holds the only slot
      time.sleep(0.001)
    futures = {p: eng.generate(random_ids(12, seed=p), sp(p)) for p in (5, 1, 3)}
    for p, f in futures.items():
      f.add_done_callback(lambda _, p=p: order.append(p))
    blocker.result(TIMEOUT)
    crowded = {p: f.result(TIMEOUT) for p, f in futures.items()}
  assert order == [1, 3, 5]
  assert all(crowded[p].token_ids == alone[p].token_ids for p in (5, 1, 3))
