"""Ahead-of-time proof that a config's train step compiles and fits on a TPU topology, from a CPU machine.

  python -m biomni_jax.tools.aot --config=configs/qwen3_8b_sft.py [--topology=v5p:2x2x4] [--config.x=y]

Lowers the step at the config's full sequence length for the topology's devices with libtpu
(`pip install -e .[tpu]`), compiles it, and prints per-chip argument / temporary / peak bytes against the
chip's HBM and the step's FLOPs. Exits 1 when the program does not fit (XLA's RESOURCE_EXHAUSTED at compile
time, or a peak above HBM), 2 on a bad config.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time

os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")  # silences libtpu's host lookup off-TPU
os.environ.setdefault(
    "ALLOW_MULTIPLE_LIBTPU_LOAD", "1"
)  # compile-only: no chip is claimed, so no lock needed

from absl import app, flags
from ml_collections import config_flags

import jax
import jax.numpy as jnp

from biomni_jax import model as M
from biomni_jax import config_utils
from biomni_jax.config_utils import ConfigError, mesh_shape
from biomni_jax.sharding import ShardingRules, make_mesh

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=False
)
_TOPOLOGY = flags.DEFINE_string(
    "topology", None, "TPU topology, e.g. v5p:2x2x4 (default: config.aot.topology)"
)

# HBM per chip, bytes.
HBM_BYTES = {
    "v4": 32 << 30,
    "v5e": 16 << 30,
    "v5litepod": 16 << 30,
    "v5p": 95 << 30,
    "v6e": 32 << 30,
}
# Peak dense bf16 FLOP/s per chip, for the step-time estimate.
PEAK_FLOPS = {"v4": 275e12, "v5e": 197e12, "v5litepod": 197e12, "v5p": 459e12, "v6e": 918e12}


@dataclasses.dataclass
class AotReport:
  topology: str
  chips: int
  mesh: dict
  seq_len: int
  global_batch: int
  argument_bytes: int
  temp_bytes: int
  output_bytes: int
  alias_bytes: int
  peak_bytes: int
  hbm_bytes: int
  flops_per_chip: float
  compile_seconds: float
  pallas_kernels: bool  # the compiled program contains Pallas (splash attention) kernels

  @property
  def fits(self) -> bool:
    return self.peak_bytes <= self.hbm_bytes

  def __str__(self) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    gen = self.topology.split(":")[0]
    step_s = self.flops_per_chip / PEAK_FLOPS.get(gen, float("nan"))
    return "\n".join(
        [
            f"topology {self.topology}: {self.chips} chips, mesh {self.mesh}",
            f"step: {self.global_batch} sequences x {self.seq_len} tokens",
            f"per chip: arguments {gib(self.argument_bytes)}, temporaries {gib(self.temp_bytes)}, "
            f"outputs {gib(self.output_bytes)} (aliased {gib(self.alias_bytes)})",
            f"per chip peak {gib(self.peak_bytes)} of {gib(self.hbm_bytes)} HBM "
            f"({100 * self.peak_bytes / self.hbm_bytes:.0f}%): {'FITS' if self.fits else 'DOES NOT FIT'}",
            f"model FLOPs per chip per step {self.flops_per_chip:.3e} (6N + attention; >= {step_s:.3f} s at "
            f"peak bf16 throughput)",
            f"attention: {'Pallas splash kernels' if self.pallas_kernels else 'blockwise (pure JAX)'}; "
            f"compiled in {self.compile_seconds:.0f} s",
        ]
    )


def tpu_devices(topology: str):
  from jax.experimental import topologies

  return topologies.get_topology_desc(topology_name=topology, platform="tpu").devices


def _step_shapes(cfg):
  """(seq_len, global batch, micro-batches) of the config's train step."""
  if cfg.mode == "rl":
    return int(cfg.rl.seq_len), rl_rows_per_step(cfg.rl), int(cfg.rl.get("micro_batches", 1))
  section = cfg.sft
  return int(section.seq_len), int(section.batch_size), int(section.get("micro_batches", 1))


def rl_rows_per_step(rl) -> int:
  """Rows of one RL optimizer step in the worst case: every trajectory of a mini-batch fills a row
  (num_groups x group_size / num_minibatches, rounded up to rl.rows_multiple_of)."""
  trajectories = -(-int(rl.num_groups) * int(rl.group_size) // int(rl.num_minibatches))
  multiple = int(rl.get("rows_multiple_of", 1))
  return -(-trajectories // multiple) * multiple


def compile_rl_step(cfg, model_config, optimizer, sharding: ShardingRules, seq_len: int, rows: int):
  """The real RL train step (train/rl.py: policy loss on recomputed old log-probs, micro-batch scan, AdamW)
  lowered for [rows, seq_len] batches and compiled."""
  from biomni_jax.train.rl import STEP_FIELDS, RLSettings, RLTrainer
  from biomni_jax.train.step import abstract_train_state

  trainer = RLTrainer(model_config, RLSettings.from_config(cfg), optimizer, sharding)
  row = sharding.sharding(("batch", "length"))
  floats = ("sampler_logprobs", "advantages", "old_logprobs")
  batch = {
      name: jax.ShapeDtypeStruct(
          (rows, seq_len), jnp.float32 if name in floats else jnp.int32, sharding=row
      )
      for name in STEP_FIELDS
  }
  return trainer.step_fn.lower(
      abstract_train_state(model_config, optimizer, sharding), batch
  ).compile()


def compile_sft_step(
    cfg,
    model_config,
    optimizer,
    sharding: ShardingRules,
    seq_len: int,
    rows: int,
    micro_batches: int,
):
  """The real SFT train step (train/sft.py's loss through train/step.py: micro-batch scan, one global
  division, AdamW) lowered for packed [rows, seq_len] batches and compiled."""
  from biomni_jax.train.sft import make_sft_loss
  from biomni_jax.train.step import abstract_train_state, make_train_step

  loss_fn = make_sft_loss(
      model_config, sharding, str(cfg.sft.get("loss_aggregation", "token-mean"))
  )
  step = make_train_step(
      model_config, loss_fn, optimizer, sharding=sharding, micro_batches=micro_batches
  )
  row = sharding.sharding(("batch", "length"))
  batch = {
      name: jax.ShapeDtypeStruct((rows, seq_len), jnp.int32, sharding=row)
      for name in ("tokens", "targets", "target_mask", "segment_ids", "positions")
  }
  return step.lower(abstract_train_state(model_config, optimizer, sharding), batch).compile()


def compile_config(cfg, topology: str) -> AotReport:
  from biomni_jax.train.optimizer import make_optimizer

  devices = tpu_devices(topology)
  mesh = make_mesh(**mesh_shape(cfg), devices=devices)
  sharding = ShardingRules(mesh)
  model_config = config_utils.model_config(cfg)
  seq_len, batch, micro_batches = _step_shapes(cfg)
  if seq_len > model_config.max_position_embeddings:
    raise ValueError(
        f"seq_len {seq_len} exceeds the model's max_position_embeddings "
        f"{model_config.max_position_embeddings}"
    )
  opt_cfg = cfg.optimizer.copy_and_resolve_references()
  if (
      opt_cfg.get("total_steps", 0) == 0
  ):  # "the run's length" is unknown here; the schedule's shape is irrelevant
    opt_cfg.total_steps = int(opt_cfg.get("warmup_steps", 0)) + 1000
  optimizer = make_optimizer(opt_cfg)
  start = time.time()
  if cfg.mode == "rl":
    compiled = compile_rl_step(cfg, model_config, optimizer, sharding, seq_len, batch)
  else:
    compiled = compile_sft_step(
        cfg, model_config, optimizer, sharding, seq_len, batch, micro_batches
    )
  seconds = time.time() - start
  mem = compiled.memory_analysis()
  # XLA's cost analysis counts a scanned layer once, so the model FLOPs come from the architecture.
  flops = 3 * model_config.flops_per_token(seq_len) * seq_len * batch / len(devices)
  peak = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      + mem.temp_size_in_bytes
      - mem.alias_size_in_bytes
  )
  generation = topology.split(":")[0]
  return AotReport(
      topology=topology,
      chips=len(devices),
      mesh=dict(mesh.shape),
      seq_len=seq_len,
      global_batch=batch,
      argument_bytes=mem.argument_size_in_bytes,
      temp_bytes=mem.temp_size_in_bytes,
      output_bytes=mem.output_size_in_bytes,
      alias_bytes=mem.alias_size_in_bytes,
      peak_bytes=peak,
      hbm_bytes=HBM_BYTES.get(generation, 0),
      flops_per_chip=flops,
      compile_seconds=seconds,
      pallas_kernels="tpu_custom_call" in compiled.as_text(),
  )


def main(argv):
  del argv
  cfg = _CONFIG.value
  if cfg is None:
    print("error: --config is required (e.g. --config=configs/qwen3_8b_sft.py)", file=sys.stderr)
    sys.exit(2)
  topology = _TOPOLOGY.value or cfg.get("aot", {}).get("topology")
  if not topology:
    print("error: no --topology and no config.aot.topology", file=sys.stderr)
    sys.exit(2)
  try:
    report = compile_config(cfg, topology)
  except (ConfigError, ValueError, KeyError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except Exception as e:  # XLA reports an over-HBM program as RESOURCE_EXHAUSTED at compile time
    if "RESOURCE_EXHAUSTED" in str(e) or "Ran out of memory" in str(e):
      print(f"DOES NOT FIT on {topology}: {str(e).splitlines()[0][:500]}")
      sys.exit(1)
    raise
  print(report)
  sys.exit(0 if report.fits else 1)


if __name__ == "__main__":
  app.run(main)
