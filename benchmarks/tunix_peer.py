"""Tunix's sampler as a benchmark peer: a worker that runs in Tunix's own virtual environment.

    <tunix venv>/bin/python benchmarks/tunix_peer.py    # driven by benchmarks/tunix_env.py

It imports neither biomni_jax nor torch (google-tunix 0.1.7 pins its own transformers and jax).
Protocol: one JSON object per line on stdin, one JSON reply per line on stdout (logs go to stderr):

  {"cmd": "setup", "checkpoint": DIR, "prompts": [[id, ...], ...], "new_tokens": N}
      loads DIR (config.json + model.safetensors, as biomni_jax's hf_io.save_hf_checkpoint writes)
      into tunix.models.qwen3 (float32), builds a tunix.generate.sampler.Sampler with a KV cache of
      prompt + N positions, and compiles both shapes timed below by running each once.
      -> {"ok": true, "versions": {...}}
  {"cmd": "run"}
      greedy generation of N new tokens, then of 1, each timed in this process (perf_counter and
      process_time); the caller takes the difference, so prefill is excluded.
      -> {"ok": true, "long": {"wall", "cpu"}, "short": {"wall", "cpu"}, "ids": [[N ids], ...]}
  Any failure -> {"ok": false, "error": "..."}.

Token ids are fed through a tokenizer that maps the string "12 7 99" to [12, 7, 99] and back. Its
pad and end-of-sequence ids are vocab_size (never a prompt id and never sampled, since logits cover
[0, vocab_size)), so no position is masked as padding and generation never stops early.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

os.environ.setdefault("JAX_PLATFORMS", "cpu")


class IdTokenizer:
  """encode/decode between space-separated decimal ids and lists of ids (Tunix's tokenizer API)."""

  def __init__(self, vocab_size: int):
    self.vocab_size = vocab_size

  def encode(self, text, **kwargs):
    return [int(t) for t in text.split()]

  def decode(self, ids, **kwargs):
    return " ".join(str(int(i)) for i in ids)

  def bos_id(self):
    return 0  # falsy: Tunix prepends no BOS

  def eos_id(self):
    return self.vocab_size

  def pad_id(self):
    return self.vocab_size


def tunix_config(hf: dict):
  """Tunix's Qwen3 ModelConfig of a Qwen3 config.json; refuses what Tunix 0.1.7 cannot run."""
  from tunix.models.qwen3 import model as qwen3

  # Tunix 0.1.7 applies RoPE with its default theta (1e6) whatever the config says.
  theta = float(hf.get("rope_theta", 1_000_000))
  if theta != 1_000_000:
    raise ValueError(
        f"Tunix 0.1.7's Qwen3 ignores rope_theta (uses 1e6); this checkpoint has {theta:g}"
    )
  if hf.get("rope_scaling"):
    raise ValueError(
        f"Tunix 0.1.7's Qwen3 has no RoPE scaling; checkpoint has {hf['rope_scaling']}"
    )
  return qwen3.ModelConfig(
      num_layers=hf["num_hidden_layers"],
      vocab_size=hf["vocab_size"],
      embed_dim=hf["hidden_size"],
      hidden_dim=hf["intermediate_size"],
      num_heads=hf["num_attention_heads"],
      head_dim=hf["head_dim"],
      num_kv_heads=hf["num_key_value_heads"],
      rope_theta=int(theta),
      norm_eps=hf["rms_norm_eps"],
      use_tied_embedding=bool(hf.get("tie_word_embeddings", False)),
  )


class Worker:

  def __init__(self):
    self.loaded = None  # (checkpoint dir, config, model): one load serves every batch size

  def setup(self, checkpoint: str, prompts: list, new_tokens: int) -> dict:
    import flax
    import jax
    import jax.numpy as jnp
    import tunix
    from tunix.generate import sampler as sampler_lib
    from tunix.models.qwen3 import params as qwen3_params

    with open(os.path.join(checkpoint, "config.json")) as f:
      hf = json.load(f)
    if self.loaded is None or self.loaded[0] != checkpoint:
      config = tunix_config(hf)
      model = qwen3_params.create_model_from_safe_tensors(checkpoint, config, dtype=jnp.float32)
      self.loaded = (checkpoint, config, model)
    _, config, model = self.loaded
    self.prompt_len = len(prompts[0])
    if any(len(p) != self.prompt_len for p in prompts):
      raise ValueError("tunix peer: prompts must all have the same length (no padding)")
    self.prompts = [" ".join(str(int(t)) for t in p) for p in prompts]
    self.new_tokens = int(new_tokens)
    self.eos = [config.vocab_size]
    cache = sampler_lib.CacheConfig(
        cache_size=self.prompt_len + self.new_tokens,
        num_layers=config.num_layers,
        num_kv_heads=config.num_kv_heads,
        head_dim=config.head_dim,
    )
    self.sampler = sampler_lib.Sampler(model, IdTokenizer(config.vocab_size), cache)
    self._generate(self.new_tokens)  # compile both shapes
    self._generate(1)
    versions = {"jax": jax.__version__, "flax": flax.__version__}
    versions["tunix"] = getattr(tunix, "__version__", "")
    try:
      from importlib.metadata import version

      versions["google-tunix"] = version("google-tunix")
    except Exception:  # noqa: BLE001 - the version is informative only
      pass
    return {"ok": True, "versions": versions}

  def _generate(self, steps: int):
    import jax

    out = self.sampler(
        self.prompts,
        max_generation_steps=steps,
        max_prompt_length=self.prompt_len,
        temperature=0.0,
        eos_tokens=self.eos,
    )
    return [jax.device_get(t).tolist() for t in out.tokens]

  def run(self) -> dict:
    timings = {}
    for name, steps in (("long", self.new_tokens), ("short", 1)):
      cpu0, wall0 = time.process_time(), time.perf_counter()
      ids = self._generate(steps)
      timings[name] = {
          "wall": time.perf_counter() - wall0,
          "cpu": time.process_time() - cpu0,
      }
      if name == "long":
        long_ids = ids
    return {"ok": True, **timings, "ids": long_ids}


def main():
  worker = Worker()
  for line in sys.stdin:
    if not line.strip():
      continue
    try:
      msg = json.loads(line)
      if msg["cmd"] == "setup":
        reply = worker.setup(msg["checkpoint"], msg["prompts"], msg["new_tokens"])
      elif msg["cmd"] == "run":
        reply = worker.run()
      else:
        reply = {"ok": False, "error": f"unknown command {msg['cmd']!r}"}
    except Exception as exc:  # noqa: BLE001 - every failure goes back to the caller as a reply
      traceback.print_exc(file=sys.stderr)
      reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()


if __name__ == "__main__":
  main()
