"""Peak memory of forward + backward vs sequence length: linear with blockwise attention.

For each length, compiles the masked next-token loss + gradients of the tiny model on one sequence and
reads XLA's memory analysis (temporaries + arguments + outputs). Prints bytes per token and the growth
ratio per doubling (2.0 = linear, 4.0 = quadratic). `--run` also executes the longest step once.

  python benchmarks/long_context_memory.py --lengths 8192,16384,32768,65536 --run
"""

from __future__ import annotations

import argparse
import resource
import time

import jax
import jax.numpy as jnp

from biomni_jax import model as M


def loss_fn(config, params, tokens):
  targets = jnp.roll(tokens, -1, axis=1)
  logp = M.token_logprobs(config, params, tokens, targets)
  return -jnp.mean(logp[:, :-1])


def compiled_step(config, length: int):
  params = M.abstract_params(config)
  tokens = jax.ShapeDtypeStruct((1, length), jnp.int32)
  step = jax.jit(jax.value_and_grad(lambda p, t: loss_fn(config, p, t)))
  return step, step.lower(params, tokens).compile()


def peak_bytes(compiled) -> int:
  m = compiled.memory_analysis()
  return int(m.temp_size_in_bytes + m.argument_size_in_bytes + m.output_size_in_bytes)


def long_context_config(dense: bool = False):
  return M.get_preset(
      "tiny",
      attention_block_q=512,
      attention_block_kv=512,
      logits_chunk=1024,
      max_position_embeddings=131_072,
      attention_impl="reference" if dense else "blockwise",
  )


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--lengths", default="8192,16384,32768,65536")
  parser.add_argument("--run", action="store_true", help="also run the longest step and time it")
  args = parser.parse_args()
  config = long_context_config()
  lengths = [int(x) for x in args.lengths.split(",")]
  previous = None
  print(f"{'tokens':>8} {'peak MiB':>10} {'bytes/token':>12} {'x per doubling':>15}")
  for length in lengths:
    _, compiled = compiled_step(config, length)
    peak = peak_bytes(compiled)
    growth = "" if previous is None else f"{peak / previous:.2f}"
    print(f"{length:>8} {peak / 2**20:>10.1f} {peak / length:>12.0f} {growth:>15}")
    previous = peak
  dense_peak = peak_bytes(compiled_step(long_context_config(dense=True), 8192)[1])
  print(f"dense reference attention at 8192 tokens for comparison: {dense_peak / 2**20:.1f} MiB")
  if args.run:
    length = lengths[-1]
    step, _ = compiled_step(config, length)
    params = M.init_params(config, jax.random.key(0))
    tokens = jax.random.randint(jax.random.key(1), (1, length), 0, config.vocab_size)
    start = time.perf_counter()
    loss, grads = step(params, tokens)
    jax.block_until_ready(grads)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    print(
        f"ran forward+backward on {length} tokens: loss {float(loss):.4f}, {time.perf_counter() - start:.1f} s, "
        f"process max RSS {rss:.0f} MiB"
    )


if __name__ == "__main__":
  main()
