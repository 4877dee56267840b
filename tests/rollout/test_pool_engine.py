"""The rollout pool on the real engine (a tiny random Qwen3): versions, exact ids, sampler log-probs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomni_jax import model as M
from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.pool import RolloutPool
from biomni_jax.sampling import Engine
from tests.rollout.conftest import TOY, FakeSandbox, toy_env, toy_tasks


@pytest.fixture(scope="module")
def tiny_engine(tokenizer):
  config = M.get_preset("tiny", vocab_size=len(tokenizer))
  params = M.init_params(config, jax.random.key(0))
  engine = Engine(
      config,
      params,
      num_slots=8,
      max_len=512,
      detokenize=tokenizer.decode,
      max_prefill_chunk=128,
      min_prefill_bucket=16,
      decode_block=32,
  )
  yield config, params, engine
  engine.shutdown()


def full_logprobs(config, params, ids):
  """log_softmax of a full forward: lp[t] = log p(ids[t] | ids[:t]) for t >= 1. float32 [T]."""
  logits = np.asarray(M.forward(config, params, jnp.asarray([ids], jnp.int32)))[0].astype(
      np.float64
  )
  logz = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  lp = np.zeros(len(ids))
  lp[1:] = logits[np.arange(len(ids) - 1), ids[1:]] - logz[:-1]
  return lp


def test_s0_real_engine_tokens_versions_and_logprobs(renderer, tiny_engine):
  config, params, engine = tiny_engine
  cfg = RolloutConfig(
      group_size=2,
      groups_per_batch=2,
      max_staleness=0,
      max_turns=3,
      max_new_tokens_per_turn=12,
      temperature=1.0,
      top_p=1.0,
      max_context_tokens=400,
      max_concurrent_episodes=4,
  )
  pool = RolloutPool(
      engine, FakeSandbox(), renderer, toy_tasks(10), cfg, environments={TOY: toy_env()}
  )
  versions_params = {0: params}
  rendered = 0
  with pool:
    for version in range(2):
      groups = pool.get_groups(2, timeout_s=120)
      for group in groups:
        assert len(group.trajectories) == 2
        for t in group.trajectories:
          sampled = t.loss_mask == 1
          assert sampled.sum() > 0 and (t.policy_versions[sampled] == version).all()
          assert t.termination in ("parse_errors", "max_turns", "solution", "context_limit")
          if all(m.get("token_ids", [0]) for m in t.messages):
            np.testing.assert_array_equal(t.token_ids, renderer.render(t.messages).ids)
            rendered += 1
          # The sampler's log-probs are the model's (temperature 1, no truncation).
          lp = full_logprobs(config, versions_params[version], t.token_ids)
          np.testing.assert_allclose(t.sampler_logprobs[sampled], lp[sampled], atol=2e-3)
      new = jax.tree.map(lambda x: x * 1.01, versions_params[version])
      versions_params[version + 1] = new
      engine.update_params(new, version + 1)
      pool.publish_version(version + 1)
    stats = pool.stats()
  assert stats["staleness_histogram"] == {0: 8} and rendered >= 6
  assert 0 < stats["engine_busy_fraction"] <= 1 and stats["engine_slot_utilization"] > 0
