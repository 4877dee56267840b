"""Per-token log-probs (and entropies) without materializing [B, T, V] logits.

For targets y_t:  logp_t = z_t[y_t] / tau - logsumexp(z_t / tau),  z_t = h_t W  (W: [E, V]).
The T axis is cut into chunks of `config.logits_chunk`; each chunk's logits exist only inside a
rematerialized scan step, so forward and backward hold O(B * chunk * V) logits at a time.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from biomni_jax.model.api import hidden_states
from biomni_jax.model.config import ModelConfig
from biomni_jax.model.qwen3 import lm_head_weight, project_logits


def chunked_logprobs(
    config: ModelConfig,
    hidden,
    w_ev,
    targets,
    *,
    chunk: int | None = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
  """hidden [B, T, E], targets int32 [B, T] -> logp float32 [B, T] (and entropy [B, T] if asked)."""
  b, t, _ = hidden.shape
  chunk = min(chunk or config.logits_chunk, t)
  pad = (-t) % chunk
  h = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  y = jnp.pad(jnp.asarray(targets, jnp.int32), ((0, 0), (0, pad)))
  n = (t + pad) // chunk
  h = h.reshape(b, n, chunk, -1).swapaxes(0, 1)  # [n, B, c, E]
  y = y.reshape(b, n, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(w, h_c, y_c):
    logits = project_logits(config, h_c, w) / temperature  # [B, c, V] float32
    lse = jax.nn.logsumexp(logits, axis=-1)
    logp = jnp.take_along_axis(logits, y_c[..., None], axis=-1)[..., 0] - lse
    if not with_entropy:
      return logp, jnp.zeros_like(logp)
    probs = jnp.exp(logits - lse[..., None])
    return logp, lse - jnp.sum(probs * logits, axis=-1)

  def step(carry, xs):
    return carry, one_chunk(w_ev, *xs)

  _, (logp, ent) = jax.lax.scan(step, None, (h, y))
  logp = logp.swapaxes(0, 1).reshape(b, -1)[:, :t]
  ent = ent.swapaxes(0, 1).reshape(b, -1)[:, :t]
  return (logp, ent) if with_entropy else logp


def token_logprobs(
    config: ModelConfig,
    params,
    tokens,
    targets,
    *,
    positions=None,
    segment_ids=None,
    sharding=None,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
  """log p(targets[b, t] | tokens[b, :t+1]) float32 [B, T] (targets are usually tokens shifted left)."""
  hidden = hidden_states(
      config, params, tokens, positions=positions, segment_ids=segment_ids, sharding=sharding
  )
  return chunked_logprobs(
      config,
      hidden,
      lm_head_weight(config, params),
      targets,
      temperature=temperature,
      with_entropy=with_entropy,
  )
