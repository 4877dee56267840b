"""Token sampling with per-request randomness: temperature, top-k, top-p, and the sampled log-probs.

For a row with logits z [V] and temperature tau > 0:
    logp = log_softmax(z / tau)                                     (reported: the untruncated law)
    keep = top-k ranks of z/tau, then the smallest prefix (by prob) whose mass reaches top_p
    token = argmax(z / tau + g) over kept tokens, g ~ Gumbel(0, 1)  (a draw from softmax restricted to keep)
tau == 0 is greedy: token = argmax z, logp = log_softmax(z). The Gumbel noise of request r's i-th token
comes from fold_in(key(seed_r), i), so a row's draw depends only on its seed and position.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e30


def seed_key_data(seed: int) -> np.ndarray:
  """Raw key data (uint32 [2], threefry) for a seed: what the jitted steps take per row.

  Without 64-bit mode jax.random.key(seed) is [0, seed mod 2^32]; computed on the host, because the engine
  thread calls this for every request and a device dispatch per request competes with the rollout pool
  for the interpreter."""
  if not jax.config.jax_enable_x64:
    return np.array([0, int(seed) & 0xFFFFFFFF], np.uint32)
  return np.asarray(jax.random.key_data(jax.random.key(int(seed), impl="threefry2x32")), np.uint32)


def truncation_mask(scaled, top_p, top_k):
  """scaled [N, V], top_p [N] float, top_k [N] int (<= 0: off) -> keep bool [N, V].

  A token is kept when its rank is < top_k and the probability mass of strictly higher-ranked tokens is
  < top_p (so the top token is always kept). Ties at the threshold value are kept together.
  """
  v = scaled.shape[-1]
  sorted_desc = -jnp.sort(-scaled, axis=-1)
  probs = jax.nn.softmax(sorted_desc, axis=-1)
  mass_before = jnp.cumsum(probs, axis=-1) - probs
  rank = jnp.arange(v)[None, :]
  k = jnp.where(top_k > 0, top_k, v)[:, None]
  keep_sorted = (rank < k) & (mass_before < top_p[:, None])
  threshold = jnp.min(jnp.where(keep_sorted, sorted_desc, jnp.inf), axis=-1, keepdims=True)
  return scaled >= threshold


def sample_tokens(logits, key_data, counters, temperature, top_p, top_k):
  """logits float32 [N, V]; key_data uint32 [N, 2]; counters int32 [N] (index of the token in its
  request); temperature/top_p float32 [N]; top_k int32 [N] -> (tokens int32 [N], logprobs float32 [N]).
  """
  logits = logits.astype(jnp.float32)
  greedy = temperature <= 0
  tau = jnp.where(greedy, 1.0, temperature)
  scaled = logits / tau[:, None]
  logp_all = jax.nn.log_softmax(scaled, axis=-1)
  wants_truncation = (~greedy) & ((top_p < 1.0) | (top_k > 0))
  # The sort costs O(V log V) per row; skip it when no row truncates.
  keep = jax.lax.cond(
      jnp.any(wants_truncation),
      lambda: truncation_mask(scaled, top_p, top_k) | ~wants_truncation[:, None],
      lambda: jnp.ones(scaled.shape, bool),
  )

  def gumbel(kd, counter):
    key = jax.random.fold_in(jax.random.wrap_key_data(kd, impl="threefry2x32"), counter)
    return jax.random.gumbel(key, scaled.shape[-1:], jnp.float32)

  def draw():
    noise = jax.vmap(gumbel)(key_data, counters)
    return jnp.argmax(jnp.where(keep, scaled + noise, _NEG), axis=-1).astype(jnp.int32)

  # V Gumbel variates per row are a visible cost on CPU; an all-greedy batch skips them.
  drawn = jax.lax.cond(jnp.all(greedy), lambda: jnp.zeros(logits.shape[:1], jnp.int32), draw)
  tokens = jnp.where(greedy, jnp.argmax(logits, axis=-1).astype(jnp.int32), drawn)
  logprobs = jnp.take_along_axis(logp_all, tokens[:, None], axis=-1)[:, 0]
  return tokens, logprobs
