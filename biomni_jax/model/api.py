"""The model's functional surface: init, forward, forward with a KV cache, logical axes of the params.

All functions take `(config, params, ...)`; `params` is the plain pytree produced by `init_params` or
`hf_io.load_hf_checkpoint`. Pass `sharding` (a `ShardingRules`) to place activations and attention on a mesh.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax.model.config import ModelConfig
from biomni_jax.model.qwen3 import Qwen3, lm_head_weight, project_logits
from biomni_jax.sharding import ShardingRules, logical_shardings


def default_positions(tokens, segment_ids=None):
  """Positions 0..T-1, restarting at every segment start when packed. [B, T] int32."""
  b, t = tokens.shape
  idx = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  if segment_ids is None:
    return idx
  starts = jnp.concatenate(
      [jnp.ones((b, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1
  )
  start_idx = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
  return idx - start_idx


def _module(config: ModelConfig, sharding: ShardingRules | None) -> Qwen3:
  return Qwen3(config, sharding)


def _dummy_inputs():
  tokens = jnp.zeros((1, 1), jnp.int32)
  return tokens, tokens, tokens, jnp.ones((1, 1), jnp.int32)


def param_logical_axes(config: ModelConfig):
  """A pytree (same structure as params) of logical-axis tuples, e.g. ('layers', 'embed', 'mlp')."""
  boxed = jax.eval_shape(lambda: _module(config, None).init(jax.random.key(0), *_dummy_inputs()))[
      "params"
  ]
  specs = nn.get_partition_spec(boxed)
  return jax.tree.map(
      lambda s: tuple(s), specs, is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec)
  )


def abstract_params(config: ModelConfig, sharding: ShardingRules | None = None):
  """ShapeDtypeStructs of the params (with shardings when given): sizes without allocating."""
  shapes = jax.eval_shape(
      lambda: nn.unbox(_module(config, None).init(jax.random.key(0), *_dummy_inputs()))
  )
  shapes = shapes["params"]
  if sharding is None:
    return shapes
  shardings = param_shardings(config, sharding)
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def param_shardings(config: ModelConfig, sharding: ShardingRules):
  return logical_shardings(param_logical_axes(config), sharding)


def init_params(config: ModelConfig, rng, sharding: ShardingRules | None = None):
  """Random params (normal(0.02) matrices, unit norms), created directly in their sharding."""

  def init(rng):
    return nn.unbox(_module(config, None).init(rng, *_dummy_inputs()))["params"]

  if sharding is None:
    return jax.jit(init)(rng)
  return jax.jit(init, out_shardings=param_shardings(config, sharding))(rng)


def hidden_states(
    config: ModelConfig,
    params,
    tokens,
    *,
    positions=None,
    segment_ids=None,
    sharding: ShardingRules | None = None,
):
  """tokens int32 [B, T] -> final-norm hidden states [B, T, E] in the compute dtype."""
  tokens = jnp.asarray(tokens, jnp.int32)
  if segment_ids is None:
    segment_ids = jnp.ones_like(tokens)
  if positions is None:
    positions = default_positions(tokens, segment_ids)
  q_index = jnp.broadcast_to(jnp.arange(tokens.shape[1], dtype=jnp.int32), tokens.shape)
  hidden, _ = _module(config, sharding).apply(
      {"params": params}, tokens, positions, q_index, segment_ids
  )
  return hidden


def forward(config: ModelConfig, params, tokens, **inputs):
  """tokens int32 [B, T] -> logits float32 [B, T, V]. `inputs`: hidden_states' keywords (positions,
  segment_ids, sharding); packed rows pass segment_ids (positions then reset at each segment start
  unless given). Materializes all logits; training uses `logprobs.token_logprobs`.
  """
  hidden = hidden_states(config, params, tokens, **inputs)
  return project_logits(config, hidden, lm_head_weight(config, params))[..., : config.vocab_size]


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None):
  """Empty KV cache: (keys, values), each [layers, B, S, K, D] (compute dtype by default)."""
  shape = (config.num_hidden_layers, batch, max_len, config.num_key_value_heads, config.head_dim)
  dtype = dtype or config.compute_dtype
  return jnp.zeros(shape, dtype), jnp.zeros(shape, dtype)


def cache_logical_axes():
  return ("layers", "cache_slots", "kv_length", "act_kv_heads", None)


def forward_with_cache(
    config: ModelConfig,
    params,
    tokens,
    cache,
    cache_lengths,
    *,
    positions=None,
    sharding: ShardingRules | None = None,
    logits_index=None,
):
  """Appends `tokens` [B, T] to each row's cache at `cache_lengths` [B] and returns (logits, new_cache).

  Requires cache_lengths + T <= S (a dynamic_update_slice would otherwise clamp and corrupt the cache).
  Positions default to cache_lengths + t. Rows may carry padding after their real tokens: padding writes
  K/V beyond the row's new length, where the next call overwrites it, and no real query ever sees it.
  `logits_index` [B] (each row's last real token) returns logits [B, Vp] there only, as prefill needs;
  otherwise logits [B, T, Vp]. Vp = config.padded_vocab_size, padded columns masked (`project_logits`):
  the sampler works on them as they are, which keeps the vocabulary axis shardable.
  """
  tokens = jnp.asarray(tokens, jnp.int32)
  cache_lengths = jnp.asarray(cache_lengths, jnp.int32)
  q_index = cache_lengths[:, None] + jnp.arange(tokens.shape[1], dtype=jnp.int32)[None, :]
  if positions is None:
    positions = q_index
  hidden, new_cache = _module(config, sharding).apply(
      {"params": params}, tokens, positions, q_index, jnp.ones_like(tokens), cache_lengths, cache
  )
  if logits_index is not None:
    hidden = jnp.take_along_axis(
        hidden, jnp.asarray(logits_index, jnp.int32)[:, None, None], axis=1
    )[:, 0]
  return project_logits(config, hidden, lm_head_weight(config, params)), new_cache


def num_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
