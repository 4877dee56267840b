"""Qwen3 decoder in Flax linen, used pure-functionally: `params` is a plain pytree.

Layout (HF-like names, stacked over layers by `nn.scan`; logical axes in brackets):
  embed_tokens/embedding                [vocab, embed]   (vocab = config.padded_vocab_size rows)
  layers/input_layernorm/scale          [layers, norm]
  layers/self_attn/{q,k,v}_proj/kernel  [layers, embed, heads|kv_heads, head_dim]
  layers/self_attn/{q,k}_norm/scale     [layers, norm]
  layers/self_attn/o_proj/kernel        [layers, heads, head_dim, embed]
  layers/post_attention_layernorm/scale [layers, norm]
  layers/mlp/{gate,up}_proj/kernel      [layers, embed, mlp];  layers/mlp/down_proj/kernel [layers, mlp, embed]
  norm/scale                            [norm]
  lm_head                               [embed, vocab]   (absent when embeddings are tied)

One decoder layer:  h = x + o_proj(attn(rope(q_norm(q_proj(n1))), rope(k_norm(k_proj(n1))), v_proj(n1)))
                    y = h + down_proj(silu(gate_proj(n2)) * up_proj(n2)),  n1 = rms(x), n2 = rms(h).
With a KV cache ([layers, B, S, K, D] keys and values), the new tokens' K/V are written at
`cache_lengths[b] + t` and the queries attend to the whole cache (causally by index).
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from biomni_jax.model import attention as attention_lib
from biomni_jax.model.config import ModelConfig
from biomni_jax.model.rope import apply_rope, rope_cos_sin
from biomni_jax.sharding import ShardingRules, platform_of

_INIT = nn.initializers.normal(stddev=0.02)

_REMAT = {
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
}


def _zero_padded_vocab(init, vocab_size: int, axis: int):
  """`init` with the padded vocabulary entries (index >= vocab_size along `axis`) set to 0, as a Hugging
  Face import leaves them: they are never looked up and their logits are masked, so they stay 0."""

  def padded_init(key, shape, dtype=jnp.float32):
    w = init(key, shape, dtype)
    keep = jnp.arange(shape[axis]) < vocab_size
    return jnp.where(keep.reshape([-1 if a == axis else 1 for a in range(len(shape))]), w, 0)

  return padded_init


def _constrain(sharding: ShardingRules | None, x, axes):
  return x if sharding is None else sharding.constrain(x, axes)


class RMSNorm(nn.Module):
  """y = x / sqrt(mean(x^2) + eps) * scale, statistics in float32 (as transformers)."""

  eps: float
  dtype: jnp.dtype

  @nn.compact
  def __call__(self, x):
    scale = self.param(
        "scale",
        nn.with_logical_partitioning(nn.initializers.ones, ("norm",)),
        (x.shape[-1],),
        jnp.float32,
    )
    xf = x.astype(jnp.float32)
    y = xf * jax.lax.rsqrt(jnp.mean(xf * xf, axis=-1, keepdims=True) + self.eps)
    return (scale.astype(self.dtype) * y.astype(self.dtype)).astype(self.dtype)


def _dense(features, axes, name, dtype, sharding: ShardingRules | None, axis=-1):
  """A bias-free projection of x's trailing `axis` dims. On CPU the token dims [B, T] are merged first:
  XLA:CPU lowers the weight gradient's contraction over two token dims through a transposing copy that
  made the demo model's training step ~16% slower; on TPU the shapes stay as the sharding rules name them.
  """
  dense = nn.DenseGeneral(
      features,
      axis=axis,
      use_bias=False,
      dtype=dtype,
      param_dtype=jnp.float32,
      kernel_init=nn.with_logical_partitioning(_INIT, axes),
      name=name,
  )
  if platform_of(sharding) != "cpu":
    return dense
  n_in = 1 if isinstance(axis, int) else len(axis)

  def apply(x):
    lead = x.shape[: x.ndim - n_in]
    y = dense(x.reshape((-1,) + x.shape[x.ndim - n_in :]))
    return y.reshape(lead + y.shape[1:])

  return apply


class Attention(nn.Module):
  config: ModelConfig
  sharding: ShardingRules | None = None

  @nn.compact
  def __call__(
      self, x, cos, sin, q_index, q_segment, kv_segment, cache_lengths=None, cache_kv=None
  ):
    c, dt = self.config, self.config.compute_dtype
    h, k, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    q = _dense((h, d), ("embed", "heads", "head_dim"), "q_proj", dt, self.sharding)(x)
    key = _dense((k, d), ("embed", "kv_heads", "head_dim"), "k_proj", dt, self.sharding)(x)
    value = _dense((k, d), ("embed", "kv_heads", "head_dim"), "v_proj", dt, self.sharding)(x)
    q = apply_rope(RMSNorm(c.rms_norm_eps, dt, name="q_norm")(q), cos, sin)
    key = apply_rope(RMSNorm(c.rms_norm_eps, dt, name="k_norm")(key), cos, sin)
    q = _constrain(self.sharding, q, ("batch", "length", "act_heads", None))
    kwargs = dict(
        scale=d**-0.5,
        impl=c.attention_impl,
        block_q=c.attention_block_q,
        block_kv=c.attention_block_kv,
        sharding=self.sharding,
    )
    new_cache = None
    if cache_kv is None:
      key = _constrain(self.sharding, key, ("batch", "length", "act_kv_heads", None))
      value = _constrain(self.sharding, value, ("batch", "length", "act_kv_heads", None))
      out = attention_lib.attend(
          q, key, value, q_index=q_index, q_segment=q_segment, kv_segment=kv_segment, **kwargs
      )
    else:
      cache_k, cache_v = cache_kv  # [B, S, K, D]; callers guarantee cache_lengths + T <= S
      write = jax.vmap(
          lambda buf, new, start: jax.lax.dynamic_update_slice_in_dim(buf, new, start, axis=0)
      )
      cache_k = write(cache_k, key.astype(cache_k.dtype), cache_lengths)
      cache_v = write(cache_v, value.astype(cache_v.dtype), cache_lengths)
      kv_segment = jnp.zeros(cache_k.shape[:2], jnp.int32)
      out = attention_lib.attend(
          q,
          cache_k.astype(dt),
          cache_v.astype(dt),
          q_index=q_index,
          q_segment=jnp.zeros_like(q_index),
          kv_segment=kv_segment,
          kv_is_sequence_sharded=False,
          **kwargs,
      )
      new_cache = (cache_k, cache_v)
    out = _dense(
        c.hidden_size, ("heads", "head_dim", "embed"), "o_proj", dt, self.sharding, axis=(-2, -1)
    )(out)
    return out, new_cache


class MLP(nn.Module):
  config: ModelConfig
  sharding: ShardingRules | None = None

  @nn.compact
  def __call__(self, x):
    c, dt = self.config, self.config.compute_dtype
    gate = _dense(c.intermediate_size, ("embed", "mlp"), "gate_proj", dt, self.sharding)(x)
    up = _dense(c.intermediate_size, ("embed", "mlp"), "up_proj", dt, self.sharding)(x)
    hidden = _constrain(self.sharding, nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return _dense(c.hidden_size, ("mlp", "embed"), "down_proj", dt, self.sharding)(hidden)


class DecoderLayer(nn.Module):
  config: ModelConfig
  sharding: ShardingRules | None = None

  @nn.compact
  def __call__(self, x, cos, sin, q_index, q_segment, kv_segment, cache_lengths, cache_kv):
    c, dt = self.config, self.config.compute_dtype
    attn_out, new_cache = Attention(c, self.sharding, name="self_attn")(
        RMSNorm(c.rms_norm_eps, dt, name="input_layernorm")(x),
        cos,
        sin,
        q_index,
        q_segment,
        kv_segment,
        cache_lengths,
        cache_kv,
    )
    x = x + attn_out
    x = x + MLP(c, self.sharding, name="mlp")(
        RMSNorm(c.rms_norm_eps, dt, name="post_attention_layernorm")(x)
    )
    return _constrain(self.sharding, x, ("batch", "length", "act_embed")), new_cache


class Qwen3(nn.Module):
  """tokens int32 [B, T] -> final hidden states [B, T, E] (compute dtype) and the updated KV cache."""

  config: ModelConfig
  sharding: ShardingRules | None = None

  @nn.compact
  def __call__(self, tokens, positions, q_index, segment_ids, cache_lengths=None, cache=None):
    c, dt = self.config, self.config.compute_dtype
    embed = nn.Embed(
        c.padded_vocab_size,
        c.hidden_size,
        dtype=dt,
        param_dtype=jnp.float32,
        embedding_init=nn.with_logical_partitioning(
            _zero_padded_vocab(_INIT, c.vocab_size, axis=0), ("vocab", "embed")
        ),
        name="embed_tokens",
    )
    x = _constrain(self.sharding, embed(tokens), ("batch", "length", "act_embed"))
    cos, sin = rope_cos_sin(c, positions)

    layer = DecoderLayer
    if c.remat_policy != "none":
      layer = nn.remat(layer, policy=_REMAT[c.remat_policy], prevent_cse=False)
    stack = nn.scan(
        layer,
        variable_axes={"params": 0},
        split_rngs={"params": True},
        in_axes=(nn.broadcast,) * 6 + (0,),
        length=c.num_hidden_layers,
        metadata_params={nn.PARTITION_NAME: "layers"},
    )
    x, new_cache = stack(c, self.sharding, name="layers")(
        x, cos, sin, q_index, segment_ids, segment_ids, cache_lengths, cache
    )
    x = RMSNorm(c.rms_norm_eps, dt, name="norm")(x)
    if not c.tie_word_embeddings:
      # Declared here so the parameter exists; logits are computed by `project_logits` (chunked or not).
      self.param(
          "lm_head",
          nn.with_logical_partitioning(
              _zero_padded_vocab(_INIT, c.vocab_size, axis=1), ("embed", "vocab")
          ),
          (c.hidden_size, c.padded_vocab_size),
          jnp.float32,
      )
    return x, new_cache


def lm_head_weight(config: ModelConfig, params) -> jax.Array:
  """The [E, V] output projection (the transposed input embedding when tied)."""
  if config.tie_word_embeddings:
    return params["embed_tokens"]["embedding"].T
  return params["lm_head"]


# The logit of a padded vocabulary row: exp() of it is exactly 0 after any max-subtraction, and 0 * it is
# 0 (an entropy term), which -inf would turn into NaN.
PADDED_LOGIT = -1e30


def project_logits(config: ModelConfig, hidden, w_ev) -> jax.Array:
  """hidden [..., E] @ w [E, Vp] -> float32 logits [..., Vp], multiplying in the compute dtype.

  Vp = config.padded_vocab_size; columns >= config.vocab_size are PADDED_LOGIT, so softmax, log-probs,
  entropies and sampling over Vp equal those over the real vocabulary."""
  dt = config.compute_dtype
  logits = jnp.einsum(
      "...e,ev->...v", hidden.astype(dt), w_ev.astype(dt), preferred_element_type=jnp.float32
  )
  if w_ev.shape[-1] > config.vocab_size:
    real = jnp.arange(w_ev.shape[-1]) < config.vocab_size
    logits = jnp.where(real, logits, PADDED_LOGIT)
  return logits
