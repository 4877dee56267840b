"""Sampler math against numpy, stop strings across token boundaries, prefill chunking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from biomni_jax.sampling.kv_cache import prefill_buckets, split_into_chunks
from biomni_jax.sampling.sampler import sample_tokens, seed_key_data, truncation_mask
from biomni_jax.sampling.stop import StopMatcher


def _np_keep(scaled, top_p, top_k):
  order = np.argsort(-scaled)
  probs = np.exp(scaled[order] - scaled.max())
  probs /= probs.sum()
  keep = np.zeros(len(scaled), bool)
  mass = 0.0
  for rank, idx in enumerate(order):
    if (top_k > 0 and rank >= top_k) or mass >= top_p:
      break
    keep[idx] = True
    mass += probs[rank]
  return keep


@pytest.mark.parametrize("top_p,top_k", [(0.5, 0), (0.9, 0), (1.0, 3), (0.8, 5), (0.01, 0)])
def test_truncation_mask_matches_numpy(top_p, top_k):
  scaled = np.random.default_rng(0).normal(size=(4, 40)).astype(np.float32) * 2
  mask = np.asarray(
      truncation_mask(jnp.asarray(scaled), jnp.full((4,), top_p), jnp.full((4,), top_k))
  )
  for row in range(4):
    np.testing.assert_array_equal(mask[row], _np_keep(scaled[row], top_p, top_k))


@pytest.mark.parametrize(
    "seed", [0, 1, 7, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**40 + 5, 2**63 - 1, -1, -5, -(2**63)]
)
def test_host_key_data_equals_jax_random_key(seed):
  expected = np.asarray(jax.random.key_data(jax.random.key(seed, impl="threefry2x32")), np.uint32)
  np.testing.assert_array_equal(seed_key_data(seed), expected)


def test_sampled_logprobs_and_empirical_frequencies():
  logits = np.log(np.array([[0.5, 0.3, 0.15, 0.05]], np.float32))
  n = 4000
  keys = np.stack([seed_key_data(7)] * n)
  tokens, logprobs = sample_tokens(
      jnp.repeat(jnp.asarray(logits), n, 0),
      jnp.asarray(keys),
      jnp.arange(n, dtype=jnp.int32),
      jnp.full((n,), 1.0),
      jnp.full((n,), 0.8),
      jnp.zeros((n,), jnp.int32),
  )
  tokens, logprobs = np.asarray(tokens), np.asarray(logprobs)
  # top_p 0.8 keeps {0, 1} (mass before token 2 is 0.8); renormalized 0.625 / 0.375
  assert set(tokens) == {0, 1}
  assert abs((tokens == 0).mean() - 0.625) < 0.03
  # reported log-probs are the untruncated law's
  np.testing.assert_allclose(logprobs, np.log([0.5, 0.3])[tokens], atol=1e-6)


def test_row_draw_depends_only_on_its_key_and_counter():
  v = 50
  logits = jnp.asarray(np.random.default_rng(1).normal(size=(3, v)), jnp.float32)
  keys = jnp.asarray(np.stack([seed_key_data(s) for s in (1, 2, 3)]))
  a, _ = sample_tokens(
      logits, keys, jnp.array([0, 5, 9]), jnp.ones(3), jnp.ones(3), jnp.zeros(3, jnp.int32)
  )
  other = logits.at[0].set(0.0).at[2].set(5.0)
  b, _ = sample_tokens(
      other, keys, jnp.array([3, 5, 1]), jnp.ones(3), jnp.ones(3), jnp.zeros(3, jnp.int32)
  )
  assert int(a[1]) == int(b[1])
  greedy, lp = sample_tokens(
      logits, keys, jnp.zeros(3, jnp.int32), jnp.zeros(3), jnp.ones(3), jnp.zeros(3, jnp.int32)
  )
  np.testing.assert_array_equal(greedy, np.argmax(np.asarray(logits), -1))


def test_stop_string_across_token_boundaries():
  pieces = {0: "ab", 1: "</ex", 2: "ec", 3: "ute>", 4: "zz"}
  matcher = StopMatcher(("</execute>", "</solution>"), lambda ids: "".join(pieces[i] for i in ids))
  assert [matcher.push(t) for t in (0, 4, 1, 2)] == [None] * 4
  assert matcher.push(3) == "</execute>"


def test_stop_string_with_multibyte_characters_split_across_byte_tokens():
  data = "ok → done".encode()
  byte_tokens = list(data)  # one byte per token: the arrow's 3 bytes straddle 3 tokens
  matcher = StopMatcher(("→",), lambda ids: bytes(ids).decode("utf-8", errors="replace"))
  hits = [matcher.push(t) for t in byte_tokens]
  assert hits.index("→") == data.index("→".encode()) + 2


def test_stop_strings_need_a_detokenizer():
  with pytest.raises(ValueError, match="detokenize"):
    StopMatcher(("x",), None)


def test_prefill_buckets_and_chunks():
  assert prefill_buckets(16, 64) == (16, 32, 64)
  assert prefill_buckets(16, 48) == (16, 32, 48)
  assert split_into_chunks(150, (16, 32, 64)) == [(64, 64), (64, 64), (22, 32)]
  assert split_into_chunks(1, (16, 32, 64)) == [(1, 16)]
  with pytest.raises(ValueError):
    prefill_buckets(32, 16)
