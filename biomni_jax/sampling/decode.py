"""One decode step of the Qwen3 params pytree against a slot-major KV cache, cost following used length.

Same math as `model.qwen3` (see its docstring) for one new token per slot, written for decoding:
  * layers are unrolled and each new K/V row is scattered into the donated cache in place
    (the scanned model path copies the whole cache per call, which dominates decode on CPU);
  * attention runs over fixed-size kv blocks 0..max(lengths) // block with an online softmax
        m' = max(m, rowmax(s)),  l' = l e^{m-m'} + rowsum(e^{s-m'}),  o' = o e^{m-m'} + e^{s-m'} v
    so its cost follows the longest used slot, and a row's result is bit-identical whatever other rows
    need (blocks past a row's length add exact zeros with correction e^0 = 1).
Shapes: tokens/lengths int32 [N]; cache (k, v) each [L, N, S, K, D]; returns logits float32 [N, V].
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from biomni_jax.model.config import ModelConfig
from biomni_jax.model.qwen3 import lm_head_weight, project_logits
from biomni_jax.model.rope import apply_rope, rope_cos_sin

_NEG = -1e30


def _rms_norm(x, scale, eps, dtype):
  """As model.qwen3.RMSNorm: statistics in float32, scale applied in the compute dtype."""
  xf = x.astype(jnp.float32)
  y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + eps)
  return scale.astype(dtype) * y.astype(dtype)


def cached_attention(cache_k, cache_v, layer: int, q, lengths, block: int, num_blocks):
  """q [N, K, G, D] (already scaled) against cache rows 0..lengths[n] of `layer` -> [N, K*G, D] float32,
  over kv blocks 0..num_blocks-1 (rows longer than that get a truncated result: only idle rows are).
  """
  n, kh, g, d = q.shape

  def body(j, carry):
    o, m, l = carry
    k_blk = jax.lax.dynamic_slice(cache_k, (layer, 0, j * block, 0, 0), (1, n, block, kh, d))[0]
    v_blk = jax.lax.dynamic_slice(cache_v, (layer, 0, j * block, 0, 0), (1, n, block, kh, d))[0]
    s = jnp.einsum("nkgd,nskd->nkgs", q, k_blk.astype(q.dtype), preferred_element_type=jnp.float32)
    visible = (j * block + jnp.arange(block))[None, None, None, :] <= lengths[:, None, None, None]
    s = jnp.where(visible, s, _NEG)
    m_new = jnp.maximum(m, s.max(-1))
    p = jnp.exp(s - m_new[..., None]) * visible
    correction = jnp.exp(m - m_new)
    pv = jnp.einsum(
        "nkgs,nskd->nkgd", p.astype(v_blk.dtype), v_blk, preferred_element_type=jnp.float32
    )
    return o * correction[..., None] + pv, m_new, l * correction + p.sum(-1)

  init = (
      jnp.zeros((n, kh, g, d), jnp.float32),
      jnp.full((n, kh, g), _NEG, jnp.float32),
      jnp.zeros((n, kh, g), jnp.float32),
  )
  o, _, l = jax.lax.fori_loop(0, num_blocks, body, init)
  return (o / l[..., None]).reshape(n, kh * g, d)


def unstack_layers(params):
  """The params with `layers` as a tuple of per-layer trees (leading axis removed), built once per weight
  version: slicing the stacked [L, ...] weights inside the step makes XLA copy every weight each token.
  """
  stacked = params["layers"]
  num_layers = jax.tree.leaves(stacked)[0].shape[0]
  out = dict(params)
  out["layers"] = tuple(jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(num_layers))
  return out


def decode_forward(
    config: ModelConfig, params, cache, tokens, lengths, *, block: int = 128, active=None
):
  """Feeds tokens [N] at positions lengths [N]; returns (logits [N, V] float32, new cache).

  `params` as `unstack_layers` returns (stacked params work too, slower). Requires lengths < S. Rows of
  idle slots may carry any length < S: they write K/V at that index only. `active` [N] bool (default all)
  marks the rows whose logits matter: attention runs over max(lengths[active]) // block + 1 kv blocks, so
  an idle slot holding a long session does not make every row attend over its length (the active rows'
  results are unchanged: blocks past a row's length add exact zeros).
  """
  c, dt = config, config.compute_dtype
  kh, g, d = c.num_key_value_heads, c.num_groups, c.head_dim
  cache_k, cache_v = cache
  n = tokens.shape[0]
  rows = jnp.arange(n)
  attended = lengths if active is None else jnp.where(active, lengths, 0)
  num_blocks = jnp.max(attended) // block + 1
  x = params["embed_tokens"]["embedding"].astype(dt)[tokens]  # [N, E]
  cos, sin = rope_cos_sin(c, lengths[:, None])  # [N, 1, D]
  for layer in range(c.num_hidden_layers):
    layers = params["layers"]
    p = (
        layers[layer]
        if isinstance(layers, tuple)
        else jax.tree.map(lambda a, i=layer: a[i], layers)
    )
    attn = p["self_attn"]
    h = _rms_norm(x, p["input_layernorm"]["scale"], c.rms_norm_eps, dt)
    q = jnp.einsum("ne,ehd->nhd", h, attn["q_proj"]["kernel"].astype(dt))
    k = jnp.einsum("ne,ehd->nhd", h, attn["k_proj"]["kernel"].astype(dt))
    v = jnp.einsum("ne,ehd->nhd", h, attn["v_proj"]["kernel"].astype(dt))
    q = apply_rope(_rms_norm(q, attn["q_norm"]["scale"], c.rms_norm_eps, dt)[:, None], cos, sin)[
        :, 0
    ]
    k = apply_rope(_rms_norm(k, attn["k_norm"]["scale"], c.rms_norm_eps, dt)[:, None], cos, sin)[
        :, 0
    ]
    cache_k = cache_k.at[layer, rows, lengths].set(k.astype(cache_k.dtype))
    cache_v = cache_v.at[layer, rows, lengths].set(v.astype(cache_v.dtype))
    out = cached_attention(
        cache_k, cache_v, layer, q.reshape(n, kh, g, d) * (d**-0.5), lengths, block, num_blocks
    )
    x = x + jnp.einsum("nhd,hde->ne", out.astype(dt), attn["o_proj"]["kernel"].astype(dt))
    mlp = p["mlp"]
    h = _rms_norm(x, p["post_attention_layernorm"]["scale"], c.rms_norm_eps, dt)
    gate = h @ mlp["gate_proj"]["kernel"].astype(dt)
    up = h @ mlp["up_proj"]["kernel"].astype(dt)
    x = x + (jax.nn.silu(gate) * up) @ mlp["down_proj"]["kernel"].astype(dt)
  x = _rms_norm(x, params["norm"]["scale"], c.rms_norm_eps, dt)
  return project_logits(c, x, lm_head_weight(c, params)), (cache_k, cache_v)
