"""Does the demo model learn in-context copying (induction) within a CPU budget? A diagnostic.

    python experiments/induction_probe.py [--steps=600] [--lr=3e-3] [--token_range=300,2048] [--peer=torch]
        [--pattern=spans|periodic] [--period=32] [--batch=8] [--seq_len=512]

--pattern=spans (content-based copying): rows of random tokens in which spans of 3-15 tokens repeat an
earlier span of the same row (about half of each row), loss on every token. A span's first token is
unpredictable; the rest are predictable only by copying (find the earlier occurrence of the previous
token, emit what followed it). --pattern=periodic (positional copying, the control): each row is one
random segment of --period tokens repeated, so every token after the first segment equals the token
--period positions back; one attention head with a fixed relative offset solves it. Copy accuracy =
greedy accuracy on the copyable tokens; chance = 1 / (number of distinct tokens). The model is configs/demo.py's
(4 layers, hidden 128, Qwen3). `--peer=torch` trains transformers' Qwen3ForCausalLM of the same shape on
the same rows instead, to tell an implementation fault from a property of the model size and budget.
This is why the demo agent copies a multiple-choice letter (a distinctive previous token) but not ids.
"""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
from absl import app, flags

_STEPS = flags.DEFINE_integer("steps", 600, "optimizer steps")
_LR = flags.DEFINE_float("lr", 3e-3, "peak learning rate (warmup, then cosine to lr/10)")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 512, "tokens per row")
_RANGE = flags.DEFINE_list("token_range", ["300", "2048"], "random tokens are drawn from [lo, hi)")
_PEER = flags.DEFINE_enum("peer", "jax", ["jax", "torch"], "which implementation trains")
_EVERY = flags.DEFINE_integer("log_every", 25, "steps between log lines")
_PATTERN = flags.DEFINE_enum(
    "pattern", "spans", ["spans", "periodic"], "content-based or positional copying"
)
_PERIOD = flags.DEFINE_integer("period", 32, "segment length of --pattern=periodic")

VOCAB = 2048
WARMUP = 20
DEMO_SHAPE = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    tie_word_embeddings=True,
)


def repeated_span_rows(rng, batch: int, seq_len: int, lo: int, hi: int):
  """tokens int32 [B, T] and copy_mask float32 [B, T] (1 on span tokens after the first)."""
  rows, masks = [], []
  for _ in range(batch):
    row, mask = list(rng.integers(lo, hi, 24)), [0] * 24
    while len(row) < seq_len:
      if len(row) > 40 and rng.random() < 0.5:
        n = int(rng.integers(3, 16))
        start = int(rng.integers(0, len(row) - n))
        row += row[start : start + n]
        mask += [0] + [1] * (n - 1)
      else:
        n = int(rng.integers(4, 30))
        row += list(rng.integers(lo, hi, n))
        mask += [0] * n
    rows.append(row[:seq_len])
    masks.append(mask[:seq_len])
  return np.array(rows, np.int32), np.array(masks, np.float32)


def periodic_rows(rng, batch: int, seq_len: int, lo: int, hi: int, period: int):
  """tokens int32 [B, T]: a random segment of `period` tokens repeated; copy_mask 1 after the first segment."""
  segment = rng.integers(lo, hi, (batch, period))
  tokens = np.tile(segment, (1, -(-seq_len // period)))[:, :seq_len]
  mask = np.zeros(tokens.shape, np.float32)
  mask[:, period:] = 1
  return tokens.astype(np.int32), mask


def jax_trainer(lr: float, steps: int):
  import jax
  import jax.numpy as jnp
  import optax

  from biomni_jax.model import api
  from biomni_jax.model.config import PRESETS

  cfg = dataclasses.replace(
      PRESETS["tiny"],
      vocab_size=VOCAB,
      dtype="float32",
      remat_policy="none",
      attention_block_q=128,
      attention_block_kv=128,
      logits_chunk=256,
      **DEMO_SHAPE,
  )
  opt = optax.adamw(
      optax.warmup_cosine_decay_schedule(0.0, lr, WARMUP, steps, lr / 10), weight_decay=0.01
  )
  params = api.init_params(cfg, jax.random.key(0))
  state = opt.init(params)

  def loss_fn(p, tokens, mask):
    logits = api.forward(cfg, p, tokens)[:, :-1]
    target, m = tokens[:, 1:], mask[:, 1:]
    nll = -jnp.take_along_axis(jax.nn.log_softmax(logits), target[..., None], -1)[..., 0]
    return nll.mean(), ((jnp.argmax(logits, -1) == target) * m).sum() / m.sum()

  @jax.jit
  def step(p, s, tokens, mask):
    (loss, acc), g = jax.value_and_grad(loss_fn, has_aux=True)(p, tokens, mask)
    updates, s = opt.update(g, s, p)
    return optax.apply_updates(p, updates), s, loss, acc

  def run(tokens, mask):
    nonlocal params, state
    params, state, loss, acc = step(params, state, jnp.asarray(tokens), jnp.asarray(mask))
    return float(loss), float(acc)

  return run


def torch_trainer(lr: float, steps: int):
  import math

  import torch
  from transformers import Qwen3Config, Qwen3ForCausalLM

  torch.manual_seed(0)
  model = Qwen3ForCausalLM(
      Qwen3Config(vocab_size=VOCAB, max_position_embeddings=4096, **DEMO_SHAPE)
  )
  opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

  def schedule(i):
    if i < WARMUP:
      return (i + 1) / WARMUP
    frac = min(1.0, (i - WARMUP) / (steps - WARMUP))
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac))

  sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)

  def run(tokens, mask):
    tokens, mask = torch.as_tensor(tokens, dtype=torch.long), torch.as_tensor(mask)
    logits = model(tokens).logits[:, :-1]
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), tokens[:, 1:].reshape(-1))
    acc = ((logits.argmax(-1) == tokens[:, 1:]).float() * mask[:, 1:]).sum() / mask[:, 1:].sum()
    opt.zero_grad()
    loss.backward()
    opt.step()
    sched.step()
    return loss.item(), acc.item()

  return run


def main(argv):
  del argv
  lo, hi = (int(x) for x in _RANGE.value)
  if not 0 <= lo < hi <= VOCAB:
    raise SystemExit(f"--token_range: expected 0 <= lo < hi <= {VOCAB}, found {lo},{hi}")
  if _PATTERN.value == "periodic" and not 1 <= _PERIOD.value < _SEQ.value:
    raise SystemExit(
        f"--period: expected 1 <= period < seq_len ({_SEQ.value}), found {_PERIOD.value}"
    )
  if _STEPS.value <= WARMUP:
    raise SystemExit(f"--steps: expected more than the {WARMUP} warmup steps, found {_STEPS.value}")
  rng = np.random.default_rng(0)
  run = (jax_trainer if _PEER.value == "jax" else torch_trainer)(_LR.value, _STEPS.value)
  t0, accs = time.time(), []
  for i in range(_STEPS.value + 1):
    if _PATTERN.value == "spans":
      loss, acc = run(*repeated_span_rows(rng, _BATCH.value, _SEQ.value, lo, hi))
    else:
      loss, acc = run(*periodic_rows(rng, _BATCH.value, _SEQ.value, lo, hi, _PERIOD.value))
    accs.append(acc)
    if i % _EVERY.value == 0:
      print(
          f"step {i:4d}  loss {loss:.3f}  copy acc {acc:.3f}  {time.time() - t0:.0f}s", flush=True
      )
  print(
      "RESULT",
      json.dumps(
          {
              "peer": _PEER.value,
              "pattern": _PATTERN.value,
              "steps": _STEPS.value,
              "lr": _LR.value,
              "distinct_tokens": hi - lo,
              "chance": round(1 / (hi - lo), 4),
              "unigram_loss": round(float(np.log(hi - lo)), 3),
              "final_loss": round(loss, 3),
              "copy_acc_last50": round(float(np.mean(accs[-50:])), 4),
          }
      ),
  )


if __name__ == "__main__":
  app.run(main)
