"""One attention interface, several kernels, and its placement on the mesh.

`attend(q, k, v, ...)` computes causal, segment-masked grouped-query attention
    out[b, t, h] = softmax_s( q[b,t,h] . k[b,s,h//G] * scale  |  s <= q_index[b,t], seg_q == seg_kv ) . v
with q [B, T, H, D], k/v [B, S, K, D]. Kernels (a registry, chosen by `ModelConfig.attention_impl`):
  reference  dense scores, tests only
  blockwise  pure-JAX flash attention, O(T) memory, the default off TPU
  splash     Pallas splash attention, chosen automatically on TPU for full-sequence training shapes
With a mesh, the kernel runs under `shard_map`: batch over (data, fsdp), heads over tensor, queries over
sequence. Context parallelism all-gathers K/V (and their segment ids) over `sequence`, so each chip holds
T / sequence queries against the whole sequence; `q_index` carries each query's global position.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from biomni_jax.model.blockwise_attention import blockwise_attention, reference_attention
from biomni_jax.sharding import ShardingRules, platform_of

KERNELS: dict[str, Callable] = {
    "reference": reference_attention,
    "blockwise": blockwise_attention,
}


def register_kernel(name: str, fn: Callable) -> None:
  KERNELS[name] = fn


def _splash(q, k, v, *, q_index, q_segment, kv_segment, scale, **unused):
  from biomni_jax.model.splash import splash_attention  # imports Pallas TPU code only when used

  del q_index, unused
  return splash_attention(q, k, v, q_segment=q_segment, kv_segment=kv_segment, scale=scale)


KERNELS["splash"] = _splash


def choose_kernel(
    impl: str, *, platform: str, full_sequence: bool, seq_len: int, head_dim: int
) -> str:
  """'auto' -> splash on TPU when the shapes suit it (causal from position 0, tileable), else blockwise."""
  if impl != "auto":
    if impl not in KERNELS:
      raise KeyError(f"attention_impl={impl!r}; known kernels: {sorted(KERNELS)} or 'auto'")
    return impl
  if platform == "tpu" and full_sequence and seq_len % 512 == 0 and head_dim % 128 == 0:
    return "splash"
  return "blockwise"


def attend(
    q,
    k,
    v,
    *,
    q_index,
    q_segment,
    kv_segment,
    scale: float,
    impl: str = "auto",
    block_q: int = 512,
    block_kv: int = 512,
    sharding: ShardingRules | None = None,
    kv_is_sequence_sharded: bool = True,
):
  """Attention on the mesh. `kv_is_sequence_sharded`: K/V follow the queries' `length` axis (training,
  prefill without cache); False for a KV cache whose length axis is not sharded."""
  platform = platform_of(sharding)
  seq_shards = sharding.axis_size("length") if sharding is not None else 1
  full_sequence = kv_is_sequence_sharded and seq_shards == 1 and q.shape[1] == k.shape[1]
  name = choose_kernel(
      impl, platform=platform, full_sequence=full_sequence, seq_len=q.shape[1], head_dim=q.shape[-1]
  )
  if name == "splash" and not full_sequence:
    raise ValueError(
        "splash attention needs queries and keys over the same unsharded sequence; "
        "use attention_impl='blockwise' for caches and context parallelism"
    )
  kernel = KERNELS[name]
  kwargs = dict(scale=scale, block_q=block_q, block_kv=block_kv)
  if sharding is None:
    return kernel(q, k, v, q_index=q_index, q_segment=q_segment, kv_segment=kv_segment, **kwargs)

  q_spec = sharding.spec(("batch", "length", "act_heads", None))
  kv_axes = ("batch", "length" if kv_is_sequence_sharded else "kv_length", "act_kv_heads", None)
  kv_spec = sharding.spec(kv_axes)
  tok_spec = sharding.spec(("batch", "length"))
  kv_tok_spec = sharding.spec(kv_axes[:2])
  seq_axis = kv_tok_spec[1] if len(kv_tok_spec) > 1 else None

  def local(q, k, v, q_index, q_segment, kv_segment):
    if seq_axis is not None:  # context parallelism: every query shard sees the whole K/V
      k, v, kv_segment = (
          jax.lax.all_gather(x, seq_axis, axis=1, tiled=True) for x in (k, v, kv_segment)
      )
    return kernel(q, k, v, q_index=q_index, q_segment=q_segment, kv_segment=kv_segment, **kwargs)

  return jax.shard_map(
      local,
      mesh=sharding.mesh,
      in_specs=(q_spec, kv_spec, kv_spec, tok_spec, tok_spec, kv_tok_spec),
      out_specs=q_spec,
      check_vma=False,
  )(q, k, v, q_index, q_segment, kv_segment)
