"""Run as a script with 8 simulated CPU devices (or in each of 2 processes with --multiprocess).

Computes the masked next-token loss and its gradients on one device and on several meshes; prints the
largest relative differences as JSON for tests/model/test_sharding.py to assert on.
"""

import argparse
import json
import os
import sys


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--multiprocess", action="store_true")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()

  import jax

  if args.multiprocess:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(
        coordinator_address=f"127.0.0.1:{args.port}",
        num_processes=2,
        process_id=args.process_id,
        local_device_ids=list(range(4)),
    )
  import jax.numpy as jnp
  import numpy as np

  from biomni_jax import model as M
  from biomni_jax.sharding import ShardingRules, make_mesh

  config = M.get_preset(
      "tiny",
      num_attention_heads=4,
      num_key_value_heads=2,
      attention_block_q=16,
      attention_block_kv=16,
      logits_chunk=32,
      remat_policy="full",
  )
  rng = np.random.default_rng(0)
  batch, length = 4, 64
  tokens = rng.integers(0, config.vocab_size, (batch, length)).astype(np.int32)
  segments = np.sort(rng.integers(1, 3, (batch, length)), axis=1).astype(np.int32)
  mask = (rng.random((batch, length)) < 0.7).astype(np.float32)

  def loss_fn(params, tokens, segments, mask, sharding=None):
    targets = jnp.concatenate([tokens[:, 1:], tokens[:, :1]], axis=1)
    same = jnp.concatenate(
        [segments[:, 1:] == segments[:, :-1], jnp.zeros((tokens.shape[0], 1), bool)], axis=1
    )
    m = mask * same
    logp = M.token_logprobs(
        config, params, tokens, targets, segment_ids=segments, sharding=sharding
    )
    return -jnp.sum(logp * m) / jnp.sum(m)

  params_host = jax.device_get(M.init_params(config, jax.random.key(0)))
  local = jax.local_devices()[0]
  with jax.default_device(local):
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(loss_fn))(
        jax.device_put(params_host, local),
        *(jax.device_put(x, local) for x in (tokens, segments, mask)),
    )
  ref_loss, ref_grads = float(ref_loss), jax.device_get(ref_grads)

  results = {}
  layouts = {
      "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
      "fsdp2_tensor2_sequence2": dict(fsdp=2, tensor=2, sequence=2),
      "data2_sequence4": dict(data=2, sequence=4),
  }
  if args.multiprocess:
    layouts = {"multiprocess_data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}
  for name, shape in layouts.items():
    rules = ShardingRules(make_mesh(**shape))
    p_shard = M.param_shardings(config, rules)
    tok_shard = rules.sharding(("batch", "length"))
    from biomni_jax.sharding import shard_pytree

    params = shard_pytree(params_host, p_shard)
    inputs = shard_pytree((tokens, segments, mask), (tok_shard,) * 3)
    step = jax.jit(
        jax.value_and_grad(lambda p, t, s, m: loss_fn(p, t, s, m, sharding=rules)),
        in_shardings=(p_shard, tok_shard, tok_shard, tok_shard),
        out_shardings=(rules.sharding(()), p_shard),
    )
    loss, grads = step(params, *inputs)
    # gather to every host (works across processes) before comparing
    from jax.experimental import multihost_utils

    grads = multihost_utils.process_allgather(grads, tiled=True)
    loss = float(np.asarray(multihost_utils.process_allgather(loss, tiled=True)).reshape(-1)[0])
    rel = max(
        float(np.max(np.abs(np.asarray(g) - r)) / (np.max(np.abs(r)) + 1e-30))
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads))
    )
    # proof that the parameters really were sharded
    sharded = sum(1 for x in jax.tree.leaves(params) if not x.sharding.is_fully_replicated)
    results[name] = {
        "loss_rel": abs(loss - ref_loss) / abs(ref_loss),
        "grad_rel": rel,
        "sharded_params": sharded,
        "devices": len(jax.devices()),
        "processes": jax.process_count(),
    }
  print("RESULT " + json.dumps(results))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
