"""Forward + backward throughput of a ~110M-parameter Qwen3 on this CPU, against two peers measured in the
same run: the machine's matmul peak (a large float32 matmul in JAX) and transformers/PyTorch doing the same
step (same weights, same batch, float32, all threads).

  python benchmarks/train_step.py [--batch 4 --seq 512 --steps 5]
  python benchmarks/train_step.py --config configs/demo.py --batch 8 --seq 1024    # the demo's SFT step shape

Prints tokens/s, achieved FLOP/s (6 * matmul params * tokens + causal attention, per model.flops_per_token),
the fraction of the matmul peak, and the JAX / PyTorch speed ratio.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.model import hf_io


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()
  start = time.perf_counter()
  for _ in range(reps):
    out = f(a)
  out.block_until_ready()
  return 2 * n**3 * reps / (time.perf_counter() - start)


def jax_step_seconds(config, params, tokens, steps: int) -> float:
  def loss(p, t):
    logp = M.token_logprobs(config, p, t[:, :-1], t[:, 1:])
    return -jnp.mean(logp)

  step = jax.jit(jax.value_and_grad(loss))
  jax.block_until_ready(step(params, tokens))
  start = time.perf_counter()
  for _ in range(steps):
    out = step(params, tokens)
  jax.block_until_ready(out)
  return (time.perf_counter() - start) / steps


def torch_step_seconds(path: str, tokens: np.ndarray, steps: int) -> float:
  import torch
  import transformers

  torch.set_num_threads(os.cpu_count())
  model = transformers.AutoModelForCausalLM.from_pretrained(
      path, dtype=torch.float32, attn_implementation="sdpa"
  )
  model.train()
  t = torch.as_tensor(tokens, dtype=torch.long)

  def step():
    model.zero_grad(set_to_none=True)
    logits = model(t[:, :-1]).logits
    loss = torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), t[:, 1:].reshape(-1)
    )
    loss.backward()
    return loss

  step()
  start = time.perf_counter()
  for _ in range(steps):
    step()
  return (time.perf_counter() - start) / steps


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="bench_100m")
  parser.add_argument("--batch", type=int, default=4)
  parser.add_argument("--seq", type=int, default=512)
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--remat", default="none")
  parser.add_argument(
      "--config",
      default="",
      help="take the model from this config file's `model` section "
      "(vocabulary: its tokenizer.vocab_size) instead of --preset, e.g. configs/demo.py",
  )
  args = parser.parse_args()

  if args.config:
    from biomni_jax.config_utils import load_config_file, model_config

    file_config = load_config_file(args.config)
    config = model_config(file_config, vocab_size=file_config.tokenizer.vocab_size)
  else:
    config = M.get_preset(
        args.preset,
        remat_policy=args.remat,
        attention_block_q=256,
        attention_block_kv=256,
        logits_chunk=512,
    )
  params = M.init_params(config, jax.random.key(0))
  tokens = (
      np.random.default_rng(0)
      .integers(0, config.vocab_size, (args.batch, args.seq + 1))
      .astype(np.int32)
  )
  n_tokens = args.batch * args.seq
  flops = 3 * config.flops_per_token(args.seq) * n_tokens  # forward + backward = 3x forward

  peak = matmul_peak()
  jax_s = jax_step_seconds(config, params, jnp.asarray(tokens), args.steps)
  with tempfile.TemporaryDirectory() as tmp:
    hf_io.save_hf_checkpoint(config, params, tmp)
    torch_s = torch_step_seconds(tmp, tokens, args.steps)

  print(
      f"model {args.config or args.preset}: {config.num_params() / 1e6:.1f}M params; step = {args.batch} x {args.seq} tokens, "
      f"forward + backward, float32, {os.cpu_count()} CPU cores"
  )
  print(f"matmul peak (JAX, 2048^3 float32): {peak / 1e9:.1f} GFLOP/s")
  for name, s in (("biomni_jax (JAX)", jax_s), ("transformers (PyTorch)", torch_s)):
    print(
        f"{name:>24}: {s * 1e3:8.0f} ms/step  {n_tokens / s:8.0f} tokens/s  {flops / s / 1e9:6.1f} GFLOP/s  "
        f"= {flops / s / peak:.2f} of matmul peak"
    )
  print(f"ratio JAX / PyTorch throughput: {torch_s / jax_s:.2f}x")


if __name__ == "__main__":
  main()
