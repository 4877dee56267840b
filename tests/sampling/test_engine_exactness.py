"""Tokens and log-probs from the engine equal full recomputation and transformers' generate."""

import numpy as np
import torch

from biomni_jax.sampling import SamplingParams
from tests.sampling.conftest import full_logits, random_ids

TIMEOUT = 120


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_greedy_equals_argmax_of_full_recompute_every_step(engine, tiny_checkpoint):
  _, config, params = tiny_checkpoint
  prompt = random_ids(70, seed=1)  # two prefill chunks (64 + 6 padded to 16)
  c = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=24)).result(TIMEOUT)
  assert (
      len(c.token_ids) == 24 and c.finish_reason == "length" and c.stop_reason == "max_new_tokens"
  )
  seq = prompt + list(c.token_ids)
  logits = full_logits(config, params, seq)  # causal: row t is the recompute of step t
  expected = logits[len(prompt) - 1 : -1].argmax(-1)
  np.testing.assert_array_equal(np.asarray(c.token_ids), expected)
  # greedy log-probs are log_softmax(logits) (temperature 1)
  lp = _log_softmax(logits[len(prompt) - 1 : -1])[np.arange(24), expected]
  np.testing.assert_allclose(c.logprobs, lp, atol=1e-4)


def test_greedy_equals_transformers_generate_64_tokens(engine, tiny_checkpoint):
  hf_model, _, _ = tiny_checkpoint
  prompt = random_ids(12, seed=2)
  c = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=64)).result(TIMEOUT)
  with torch.no_grad():
    out = hf_model.generate(
        torch.tensor([prompt]),
        do_sample=False,
        max_new_tokens=64,
        min_new_tokens=64,
        eos_token_id=None,
        pad_token_id=0,
    )
  assert list(c.token_ids) == out[0, len(prompt) :].tolist()


def test_logprobs_are_log_softmax_of_logits_over_temperature(engine, tiny_checkpoint):
  _, config, params = tiny_checkpoint
  prompt = random_ids(20, seed=3)
  for temperature, top_p, top_k in ((0.7, 0.9, 0), (1.3, 1.0, 20), (0.6, 0.95, 50)):
    c = engine.generate(
        prompt,
        SamplingParams(
            temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=16, seed=11
        ),
    ).result(TIMEOUT)
    logits = full_logits(config, params, prompt + list(c.token_ids))[len(prompt) - 1 : -1]
    lp = _log_softmax(logits / temperature)[np.arange(16), np.asarray(c.token_ids)]
    np.testing.assert_allclose(c.logprobs, lp, atol=1e-4)
    if top_k:  # every sampled token lies inside the top-k of its step
      ranks = (logits > logits[np.arange(16), np.asarray(c.token_ids)][:, None]).sum(-1)
      assert ranks.max() < top_k


def test_stop_string_straddling_tokens_ends_the_turn(engine):
  prompt = random_ids(9, seed=4)
  free = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=12)).result(TIMEOUT)
  text = "".join(engine.detokenize([t]) for t in free.token_ids)
  stop = text[9:13]  # starts mid-token 4, ends mid-token 6
  c = engine.generate(
      prompt, SamplingParams(temperature=0, max_new_tokens=12, stop=(stop, "zzzzzzzz"))
  ).result(TIMEOUT)
  assert c.finish_reason == "stop" and c.stop_reason == "stop_string" and c.matched_stop == stop
  end = text.index(stop) + len(stop)
  n = -(-end // 2)  # tokens needed to complete the first occurrence (2 chars per token)
  assert list(c.token_ids) == list(free.token_ids[:n])


def test_stop_token_is_kept_and_ends_the_turn(engine):
  prompt = random_ids(9, seed=5)
  free = engine.generate(prompt, SamplingParams(temperature=0, max_new_tokens=10)).result(TIMEOUT)
  target = free.token_ids[5]
  c = engine.generate(
      prompt, SamplingParams(temperature=0, max_new_tokens=10, stop_token_ids=(target,))
  ).result(TIMEOUT)
  n = list(free.token_ids).index(target) + 1
  assert list(c.token_ids) == list(free.token_ids[:n])
  assert (c.finish_reason, c.stop_reason) == ("stop", "stop_token")
