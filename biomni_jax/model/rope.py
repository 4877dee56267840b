"""Rotary position embeddings, plain and YaRN-scaled, exactly as transformers computes them.

RoPE rotates each (x_i, x_{i + D/2}) pair of a head by angle `position * inv_freq_i`:
    rope(x) = x * cos + rotate_half(x) * sin,   rotate_half([a, b]) = [-b, a]
with cos/sin of shape [..., D] built from `concat(freqs, freqs)`.

YaRN (https://arxiv.org/abs/2309.00071) blends interpolated (1 / (factor * base^(2i/D))) and original
frequencies with a linear ramp between the correction dims of `beta_fast` and `beta_slow` rotations, and
scales cos/sin by `attention_factor = 0.1 * ln(factor) + 1`.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from biomni_jax.model.config import ModelConfig


def inverse_frequencies(config: ModelConfig) -> tuple[np.ndarray, float]:
  """Returns (inv_freq float32 [D/2], attention_factor) for the config's RoPE variant."""
  dim, base = config.head_dim, config.rope_theta
  pos_freqs = base ** (np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim))
  if config.rope_scaling_factor is None:
    return (1.0 / pos_freqs).astype(np.float32), 1.0

  factor = config.rope_scaling_factor
  original_max = config.rope_original_max_position_embeddings or config.max_position_embeddings
  attention_factor = config.rope_attention_factor
  if attention_factor is None:
    attention_factor = 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0

  def correction_dim(num_rotations: float) -> float:
    return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

  low, high = correction_dim(config.rope_beta_fast), correction_dim(config.rope_beta_slow)
  if config.rope_truncate:
    low, high = math.floor(low), math.ceil(high)
  low, high = max(low, 0), min(high, dim - 1)
  if low == high:
    high += 0.001  # avoid a zero-width ramp
  ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(
      np.float32
  )
  extrapolation_weight = 1 - ramp
  inv_freq = (1.0 / (factor * pos_freqs)) * (1 - extrapolation_weight) + (
      1.0 / pos_freqs
  ) * extrapolation_weight
  return inv_freq.astype(np.float32), float(attention_factor)


def rope_cos_sin(config: ModelConfig, positions: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """positions int32 [B, T] -> (cos, sin) float32 [B, T, D]."""
  inv_freq, attention_factor = inverse_frequencies(config)
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq)  # [B, T, D/2]
  emb = jnp.concatenate([freqs, freqs], axis=-1)
  return jnp.cos(emb) * attention_factor, jnp.sin(emb) * attention_factor


def apply_rope(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """x [B, T, N, D], cos/sin [B, T, D] -> rotated x in x.dtype (the rotation itself in float32)."""
  half = x.shape[-1] // 2
  xf = x.astype(jnp.float32)
  rotated = jnp.concatenate([-xf[..., half:], xf[..., :half]], axis=-1)
  out = xf * cos[:, :, None, :] + rotated * sin[:, :, None, :]
  return out.astype(x.dtype)
