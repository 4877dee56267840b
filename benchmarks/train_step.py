"""The JAX train step against PyTorch (transformers' Qwen3) doing the same step on the same weights
and batch, interleaved with medians (benchmarks/harness.py), at the 112M shape and at the demo's
shape in one run.

    python benchmarks/train_step.py                             # both shapes, 3 repetitions each
    python benchmarks/train_step.py --config configs/demo.py    # one config file's shape
    python benchmarks/train_step.py --shapes demo --batch 2 --seq 128 --allow-load   # quick check

Shapes: "112m" = preset bench_100m (111.7M params; no remat, attention blocks 256, log-prob chunks
of 512) with 4 rows of 512 tokens; "demo" = configs/demo.py's model (vocabulary = its
tokenizer.vocab_size) with its SFT batch (8 rows of 1024 tokens); --config FILE: that config file's
model and batch instead. --batch / --seq override the shapes' rows and lengths.

One step on each side, float32, both on os.cpu_count() threads:
- JAX: biomni_jax.train.step.make_train_step with the SFT token-mean cross-entropy
  (train.sft.make_sft_loss) and the optimizer of train.optimizer.make_optimizer (global-norm
  clipping + AdamW; the demo's optimizer section for "demo", the default section for "112m"); every
  row one segment, positions 0..L-1.
- PyTorch: AutoModelForCausalLM(sdpa) read from the same weights (hf_io.save_hf_checkpoint), mean
  cross-entropy over the same targets, clip_grad_norm_ with the same norm, torch.optim.AdamW with
  the same lr, betas, eps and weight decay (none on 1-D params, as in JAX).
A repetition times --steps steps; units = tokens trained (batch x seq x steps). Before timing, the
gradients of the first batch at the initial weights are compared, in Hugging Face layout: the max
over tensors of max|g_jax - g_torch| / max|g_torch|; above --grad-tolerance the run fails.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness
from biomni_jax import model as M
from biomni_jax.model import hf_io
from biomni_jax.model.safetensors_io import SafetensorsFile
from biomni_jax.sharding import ShardingRules, make_mesh
from biomni_jax.train.optimizer import default_optimizer_config, make_optimizer
from biomni_jax.train.sft import make_sft_loss, place_batch
from biomni_jax.train.step import init_train_state, make_train_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = ("112m", "demo")


def shape_spec(name: str, args) -> tuple[str, M.ModelConfig, int, int, dict]:
  """(label, model config, batch, seq, optimizer section) of a named shape."""
  if name == "112m":
    config = M.get_preset(
        "bench_100m",
        remat_policy="none",
        attention_block_q=256,
        attention_block_kv=256,
        logits_chunk=512,
    )
    batch, seq, opt = 4, 512, default_optimizer_config()
  else:  # "demo" or a config file: its model, SFT batch and optimizer
    from biomni_jax.config_utils import load_config_file, model_config

    path = os.path.join(REPO, "configs", "demo.py") if name == "demo" else name
    file_config = load_config_file(path)
    config = model_config(file_config, vocab_size=file_config.tokenizer.vocab_size)
    batch, seq, opt = file_config.sft.batch_size, file_config.sft.seq_len, file_config.optimizer
  opt = dict(opt)
  # A run fills total_steps from its data; any horizon past the warmup gives the same step program.
  if int(opt.get("total_steps") or 0) <= int(opt.get("warmup_steps") or 0):
    opt["total_steps"] = int(opt.get("warmup_steps") or 0) + 1000
  return name, config, args.batch or batch, args.seq or seq, opt


def sft_rows(tokens: np.ndarray) -> dict[str, np.ndarray]:
  """[B, L + 1] ids -> the SFT step's rows (sft.ROW_FIELDS): all tokens learned, one segment."""
  b, l = tokens.shape[0], tokens.shape[1] - 1
  ones = np.ones((b, l), np.int32)
  return {
      "tokens": tokens[:, :-1],
      "targets": tokens[:, 1:],
      "target_mask": ones,
      "segment_ids": ones,
      "positions": np.broadcast_to(np.arange(l, dtype=np.int32), (b, l)).copy(),
  }


class JaxStep:
  """The project's jitted SFT train step; state is donated and replaced on every call."""

  def __init__(self, config, params, rows, opt_cfg):
    self.sharding = ShardingRules(make_mesh())
    optimizer = make_optimizer(opt_cfg)
    self.loss_fn = make_sft_loss(config, self.sharding, "token-mean")
    self.step = make_train_step(config, self.loss_fn, optimizer, sharding=self.sharding)
    self.batch = place_batch(rows, self.sharding)
    self.state = init_train_state(config, optimizer, 0, self.sharding, params=params)

  def gradients(self, params):
    """d(token-mean loss)/d params at `params` (the first step's gradient, before clipping)."""

    def loss(p):
      loss_sum, denom, _ = self.loss_fn(p, self.batch)
      return loss_sum / denom

    return jax.jit(jax.grad(loss))(params)

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


class TorchStep:
  """transformers' Qwen3, same weights: forward, mean cross-entropy, backward, clip, AdamW."""

  def __init__(self, checkpoint: str, rows, opt_cfg):
    import torch
    import transformers

    self.torch = torch
    torch.set_num_threads(os.cpu_count())
    self.model = transformers.AutoModelForCausalLM.from_pretrained(
        checkpoint, dtype=torch.float32, attn_implementation="sdpa"
    ).train()
    self.inputs = torch.as_tensor(rows["tokens"], dtype=torch.long)
    self.targets = torch.as_tensor(rows["targets"], dtype=torch.long)
    params = [p for p in self.model.parameters() if p.requires_grad]
    decay = params if opt_cfg.get("decay_1d_params", False) else [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if all(p is not q for q in decay)]
    self.clip = float(opt_cfg.get("grad_clip") or 0.0)
    self.optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": float(opt_cfg["weight_decay"])},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=float(opt_cfg["lr"]),
        betas=(float(opt_cfg["b1"]), float(opt_cfg["b2"])),
        eps=float(opt_cfg["eps"]),
    )

  def _loss_backward(self) -> None:
    self.model.zero_grad(set_to_none=True)
    logits = self.model(self.inputs).logits
    loss = self.torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]), self.targets.reshape(-1)
    )
    loss.backward()

  def gradients(self) -> dict[str, np.ndarray]:
    """HF name -> d(mean loss)/d weight at the current weights (no update)."""
    self._loss_backward()
    grads = {
        name: p.grad.detach().numpy().copy()
        for name, p in self.model.named_parameters()
        if p.grad is not None
    }
    self.model.zero_grad(set_to_none=True)
    return grads

  def run(self, steps: int) -> None:
    for _ in range(steps):
      self._loss_backward()
      if self.clip:
        self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip)
      self.optimizer.step()


def max_relative_difference(config, jax_grads, torch_grads) -> tuple[float, str]:
  """max over tensors of max|g_jax - g_torch| / max|g_torch|, with the JAX gradients written in
  Hugging Face layout by the same code that writes checkpoints; and the worst tensor's name."""
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "grads")
    hf_io.save_hf_checkpoint(config, jax_grads, path)
    ours = SafetensorsFile(os.path.join(path, "model.safetensors"))
    worst, worst_name = 0.0, ""
    for name, theirs in torch_grads.items():
      if name == "lm_head.weight" and config.tie_word_embeddings:
        continue  # the same tensor as the embedding in a tied model
      diff = float(np.max(np.abs(ours.get(name) - theirs)) / max(np.max(np.abs(theirs)), 1e-30))
      if diff > worst:
        worst, worst_name = diff, name
  return worst, worst_name


def matmul_peak(n: int = 2048, reps: int = 10) -> float:
  """FLOP/s of a large float32 matmul in JAX: the machine's practical ceiling for these steps."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  f = jax.jit(lambda a: a @ a)
  f(a).block_until_ready()

  def run():
    out = None
    for _ in range(reps):
      out = f(a)
    out.block_until_ready()

  return 2 * n**3 * reps / harness.measure(run).wall


def benchmark_shape(name, args) -> tuple[harness.Run, float]:
  label, config, batch, seq, opt_cfg = shape_spec(name, args)
  params = M.init_params(config, jax.random.key(0))
  tokens = (
      np.random.default_rng(0).integers(0, config.vocab_size, (batch, seq + 1)).astype(np.int32)
  )
  rows = sft_rows(tokens)
  ours = JaxStep(config, params, rows, opt_cfg)
  with tempfile.TemporaryDirectory() as tmp:
    hf_io.save_hf_checkpoint(config, params, tmp)
    theirs = TorchStep(tmp, rows, opt_cfg)
  diff, where = max_relative_difference(config, ours.gradients(params), theirs.gradients())
  n_tokens = batch * seq
  flops = 3 * config.flops_per_token(seq) * n_tokens  # forward + backward = 3x forward
  peak = matmul_peak()
  print(
      f"{label}: {config.num_params() / 1e6:.1f}M params, step = {batch} x {seq} tokens, float32, "
      f"{os.cpu_count()} CPU cores; matmul peak (JAX 2048^3) {peak / 1e9:.1f} GFLOP/s",
      flush=True,
  )
  print(f"  gradients, max relative difference JAX vs PyTorch: {diff:.2e} ({where})")
  steps = args.steps
  run = harness.run_interleaved(
      f"train step, {label}: {batch} x {seq} tokens, {steps} step(s) per repetition",
      [
          ("jax", lambda: harness.measure(lambda: ours.run(steps), units=n_tokens * steps)),
          ("pytorch", lambda: harness.measure(lambda: theirs.run(steps), units=n_tokens * steps)),
      ],
      args.repetitions,
      load_threshold=args.load_threshold,
  )
  print(harness.format_run(run, unit="tok", ours="jax"))
  for peer in run.peers:
    seconds = run.wall(peer)["median"] / steps
    print(
        f"  {peer}: {seconds * 1e3:.0f} ms/step, {flops / seconds / 1e9:.1f} GFLOP/s = "
        f"{flops / seconds / peak:.2f} of the matmul peak",
        flush=True,
    )
  del ours, theirs
  return run, diff


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--shapes", default="112m,demo", help="comma-separated: 112m, demo")
  parser.add_argument(
      "--config",
      default="",
      help="instead of --shapes: one config file's model, SFT batch, optimizer",
  )
  parser.add_argument("--batch", type=int, default=0, help="rows per step (default: the shape's)")
  parser.add_argument("--seq", type=int, default=0, help="tokens per row (default: the shape's)")
  parser.add_argument("--steps", type=int, default=1, help="train steps per timed repetition")
  parser.add_argument("--grad-tolerance", type=float, default=1e-3)
  harness.add_arguments(parser)
  args = parser.parse_args()
  if args.steps < 1 or args.batch < 0 or args.seq < 0:
    parser.error("--steps must be >= 1, --batch and --seq >= 0")
  shapes = (
      [args.config] if args.config else [s.strip() for s in args.shapes.split(",") if s.strip()]
  )
  unknown = [s for s in shapes if s not in SHAPES and not (s.endswith(".py") and os.path.isfile(s))]
  if unknown or not shapes:
    parser.error(
        f"--shapes/--config: unknown {unknown or 'empty'}; "
        f"known: {', '.join(SHAPES)} or a config file"
    )
  runs, diffs = [], {}
  for name in shapes:
    run, diff = benchmark_shape(name, args)
    runs.append(run)
    diffs[run.title] = diff
  code = harness.finish("train_step", runs, args, {"grad_max_relative_difference": diffs})
  bad = {t: d for t, d in diffs.items() if d > args.grad_tolerance}
  if bad:
    print(f"GRADIENTS DIFFER beyond {args.grad_tolerance:g}: {bad}")
    code = code or 2
  return code


if __name__ == "__main__":
  sys.exit(main())
