"""release_memory frees the KV cache and weights of an idle engine (colocated RL's train step); a request
submitted meanwhile waits, and the next weights bring the engine back with the same greedy tokens.
"""

import time

import numpy as np

from biomni_jax.sampling import Engine, SamplingParams
from tests.sampling.conftest import random_ids, toy_detokenize


def test_release_then_new_weights_resume_with_the_same_tokens(tiny_checkpoint):
  _, config, params = tiny_checkpoint
  greedy = SamplingParams(temperature=0.0, max_new_tokens=12)
  prompt = random_ids(20, seed=3)
  with Engine(
      config, params, num_slots=2, max_len=128, max_prefill_chunk=32, detokenize=toy_detokenize
  ) as engine:
    session = engine.open_session()
    before = engine.submit(session, prompt, greedy).result(timeout=300)
    engine.release_memory().result(timeout=60)
    assert engine.stats["releases"] == 1 and engine.params is None
    waiting = engine.submit(session, [5, 6, 7], greedy)
    time.sleep(0.5)
    assert not waiting.done()  # no weights: the request waits instead of failing
    engine.update_params(params, version=1)
    after = waiting.result(timeout=300)
  with Engine(
      config, params, num_slots=2, max_len=128, max_prefill_chunk=32, detokenize=toy_detokenize
  ) as fresh:
    s = fresh.open_session()
    assert fresh.submit(s, prompt, greedy).result(timeout=300).token_ids == before.token_ids
    want = fresh.submit(s, [5, 6, 7], greedy).result(timeout=300)
  # The released session re-prefilled its whole history: same tokens as a session that kept its cache.
  assert after.token_ids == want.token_ids and set(after.token_versions) == {1}
  assert np.allclose(after.logprobs, want.logprobs, atol=1e-5)
