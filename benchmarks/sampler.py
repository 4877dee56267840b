"""Decode throughput of the JAX engine against transformers `generate`, and session reuse across turns.

    /work/venv/bin/python benchmarks/sampler.py [--preset bench_100m] [--new-tokens 64] [--prompt-len 64]

1. Decode tokens/s at batch 1, 8, 32: the same random weights (saved with hf_io.save_hf_checkpoint, read by
   transformers.AutoModelForCausalLM in float32, torch.set_num_threads(2)), greedy, same prompt and
   new-token counts. Decode time = time(prompt + N new tokens) - time(prompt + 1 new token) on both sides,
   so prefill is excluded from both.
2. 8 sessions x 6 turns with 200-token observations: session reuse (each turn prefills only the new
   tokens) against re-prefilling the whole history every turn (fresh session per turn).
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import numpy as np
import torch
import transformers

from biomni_jax import model as M
from biomni_jax.model import hf_io
from biomni_jax.sampling import Engine, SamplingParams


def _prompts(batch, length, vocab, seed=0):
  return np.random.default_rng(seed).integers(0, vocab, (batch, length)).tolist()


def engine_time(engine, prompts, new_tokens):
  sp = SamplingParams(temperature=0, max_new_tokens=new_tokens)
  t = time.perf_counter()
  futures = [engine.generate(p, sp) for p in prompts]
  for f in futures:
    f.result()
  return time.perf_counter() - t


def hf_time(model, prompts, new_tokens):
  ids = torch.tensor(prompts)
  t = time.perf_counter()
  with torch.no_grad():
    model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        eos_token_id=None,
        pad_token_id=0,
    )
  return time.perf_counter() - t


def decode_throughput(config, params, hf_model, batch, prompt_len, new_tokens):
  prompts = _prompts(batch, prompt_len, config.vocab_size)
  with Engine(
      config,
      params,
      num_slots=batch,
      max_len=prompt_len + new_tokens + 8,
      max_prefill_chunk=prompt_len,
  ) as engine:
    engine_time(engine, prompts, 2)  # compile prefill + decode
    ours = engine_time(engine, prompts, new_tokens) - engine_time(engine, prompts, 1)
  hf_time(hf_model, prompts, 2)
  theirs = hf_time(hf_model, prompts, new_tokens) - hf_time(hf_model, prompts, 1)
  steps = new_tokens - 1
  return batch * steps / ours, batch * steps / theirs


def sessions_benchmark(config, params, sessions=8, turns=6, prompt_len=200, obs_len=200, reply=32):
  rng = np.random.default_rng(1)
  inputs = [
      [
          rng.integers(0, config.vocab_size, prompt_len if t == 0 else obs_len).tolist()
          for t in range(turns)
      ]
      for _ in range(sessions)
  ]
  sp = SamplingParams(temperature=0, max_new_tokens=reply)
  max_len = prompt_len + (turns - 1) * obs_len + turns * reply + 8
  with Engine(config, params, num_slots=sessions, max_len=max_len, max_prefill_chunk=256) as engine:

    def run(reuse):
      handles = [engine.open_session() for _ in range(sessions)]
      histories = [[] for _ in range(sessions)]
      t = time.perf_counter()
      for turn in range(turns):
        futures = []
        for i in range(sessions):
          histories[i] += inputs[i][turn]
          if reuse:
            futures.append(engine.submit(handles[i], inputs[i][turn], sp))
          else:
            futures.append(engine.generate(histories[i], sp))
        for i, f in enumerate(futures):
          histories[i] += list(f.result().token_ids)
      elapsed = time.perf_counter() - t
      for h in handles:
        engine.close_session(h)
      return elapsed, histories

    run(True)  # compile every bucket
    run(False)
    reuse_time, h1 = run(True)
    fresh_time, h2 = run(False)
    print(f"  compiled programs: {engine.compilations}")
  return reuse_time, fresh_time, h1 == h2


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--preset", default="bench_100m")
  parser.add_argument("--prompt-len", type=int, default=64)
  parser.add_argument("--new-tokens", type=int, default=64)
  parser.add_argument("--batches", default="1,8,32")
  args = parser.parse_args()
  torch.set_num_threads(2)
  config = M.get_preset(args.preset)
  params = M.init_params(config, jax.random.key(0))
  with tempfile.TemporaryDirectory() as tmp:
    hf_io.save_hf_checkpoint(config, params, tmp)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
  print(
      f"{args.preset}: {M.num_params(params) / 1e6:.1f}M params, jax {jax.__version__} on "
      f"{jax.devices()[0].platform}, torch {torch.__version__} threads {torch.get_num_threads()}"
  )
  print(f"decode throughput, greedy, prompt {args.prompt_len}, {args.new_tokens} new tokens")
  for batch in [int(b) for b in args.batches.split(",")]:
    ours, theirs = decode_throughput(
        config, params, hf_model, batch, args.prompt_len, args.new_tokens
    )
    print(
        f"  batch {batch:3d}: engine {ours:8.1f} tok/s   transformers {theirs:8.1f} tok/s   "
        f"ratio {ours / theirs:5.2f}x",
        flush=True,
    )
  print("8 sessions x 6 turns, 200-token observations, 32-token replies")
  reuse, fresh, same = sessions_benchmark(config, params)
  print(
      f"  session reuse {reuse:6.2f} s   re-prefill every turn {fresh:6.2f} s   ratio {fresh / reuse:5.2f}x"
      f"   same tokens: {same}"
  )


if __name__ == "__main__":
  main()
