"""Ahead-of-time proof that a config's train step compiles and fits on a TPU topology, from a CPU machine.

  python -m biomni_jax.tools.aot --config=configs/qwen3_8b_sft.py [--topology=v5p:2x2x4] [--config.x=y]

Lowers the step at the config's full sequence length for the topology's devices with libtpu
(`pip install -e .[tpu]`), compiles it, and prints per-chip argument / temporary / peak bytes against the
chip's HBM and the step's FLOPs. For an RL config it also compiles the engine's prefill and decode steps
on one host's chips (`--host_topology`, default the generation's 4-chip host) on the sampler mesh
`rl.engine.mesh` at `rl.engine.num_slots x max_len`, and reports what trainer and sampler hold per chip
when colocated: the sampler's weights (one copy in the compute dtype on TPU) and KV cache
stay resident through the train step, so colocated = train-step peak + sampler resident, and the sampler's
own peak = sampler resident + its larger step's temporaries + the trainer state. Exits 1 when a program
does not fit (XLA's RESOURCE_EXHAUSTED at compile time, or a peak above HBM), 2 on a bad config.
"""

from __future__ import annotations

import dataclasses
import math
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
_HOST_TOPOLOGY = flags.DEFINE_string(
    "host_topology", None, "one host's chips, for the sampler (default: HOST_TOPOLOGY[generation])"
)

# HBM per chip, bytes.
HBM_BYTES = {
    "v4": 32 << 30,
    "v5e": 16 << 30,
    "v5litepod": 16 << 30,
    "v5p": 95 << 30,
    "v6e": 32 << 30,
}
# The chips of one host (what one sampler mesh may span).
HOST_TOPOLOGY = {"v4": "v4:2x2x1", "v5p": "v5p:2x2x1", "v5e": "v5e:2x4", "v6e": "v6e:2x4"}
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


@dataclasses.dataclass
class SamplerReport:
  """Per chip of one engine replica: its resident bytes and its steps' temporaries."""

  host_topology: str
  mesh: dict
  num_slots: int
  cache_len: int
  prefill_shape: tuple
  params_bytes: int  # the weights (compute dtype) per chip: prefill and decode read the same copy
  cache_bytes: int
  prefill_temp_bytes: int
  decode_temp_bytes: int
  compile_seconds: float

  @property
  def resident_bytes(self) -> int:
    return self.params_bytes + self.cache_bytes

  @property
  def peak_bytes(self) -> int:
    return self.resident_bytes + max(self.prefill_temp_bytes, self.decode_temp_bytes)

  def __str__(self) -> str:
    gib = lambda b: f"{b / 2**30:.2f} GiB"
    return (
        f"sampler on {self.host_topology}, mesh {self.mesh}: {self.num_slots} slots x "
        f"{self.cache_len} positions, prefill {self.prefill_shape[0]} x {self.prefill_shape[1]}; "
        f"per chip: weights {gib(self.params_bytes)}, KV cache {gib(self.cache_bytes)}, "
        f"resident {gib(self.resident_bytes)}; temporaries prefill {gib(self.prefill_temp_bytes)}, "
        f"decode {gib(self.decode_temp_bytes)}; peak {gib(self.peak_bytes)} "
        f"(compiled in {self.compile_seconds:.0f} s)"
    )


def compile_sampler(cfg, model_config, host_topology: str) -> SamplerReport:
  """The engine's prefill (max rows x max chunk) and decode programs for one replica of the config's
  sampler mesh on `host_topology`'s chips, compiled at the config's num_slots and max_len."""
  from biomni_jax.sampling import kv_cache
  from biomni_jax.sampling.steps import StepCompiler
  from biomni_jax.sharding import SAMPLER_RULES

  engine = cfg.rl.engine
  sizes = dict(engine.get("mesh", {}) or {})
  tensor = int(sizes.get("tensor", 1))
  devices = tpu_devices(host_topology)
  if tensor == -1:
    tensor = len(devices) // max(1, int(sizes.get("data", 1)))
  rules = ShardingRules(make_mesh(tensor=tensor, devices=devices[:tensor]), SAMPLER_RULES)
  slots, max_len = int(engine.num_slots), int(engine.max_len)
  chunk = int(engine.get("max_prefill_chunk", 256))
  rows = min(int(engine.get("max_prefill_rows", 0) or slots), slots)
  cache_len = kv_cache.cache_length(max_len, chunk, 128)
  dtype = model_config.compute_dtype
  params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, dtype, sharding=x.sharding),
      M.abstract_params(model_config, rules),
  )
  cache_sh = kv_cache.cache_sharding(rules)
  shape = (
      model_config.num_hidden_layers,
      slots,
      cache_len,
      model_config.num_key_value_heads,
      model_config.head_dim,
  )
  cache = tuple(jax.ShapeDtypeStruct(shape, dtype, sharding=cache_sh) for _ in range(2))
  steps = StepCompiler(model_config, rules, 128)
  start = time.time()
  # On TPU the engine decodes from the stacked weights (Engine._for_decode): one copy.
  prefill, decode, _ = steps.lowered(params, params, cache, rows, chunk)
  p = prefill.compile().memory_analysis()
  d = decode.compile().memory_analysis()
  return SamplerReport(
      host_topology=host_topology,
      mesh={"tensor": tensor},
      num_slots=slots,
      cache_len=cache_len,
      prefill_shape=(rows, chunk),
      params_bytes=_bytes_per_chip(params),
      cache_bytes=_bytes_per_chip(cache),
      prefill_temp_bytes=p.temp_size_in_bytes,
      decode_temp_bytes=d.temp_size_in_bytes,
      compile_seconds=time.time() - start,
  )


def _bytes_per_chip(tree) -> int:
  return sum(
      math.prod(x.sharding.shard_shape(x.shape)) * jnp.dtype(x.dtype).itemsize
      for x in jax.tree.leaves(tree)
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
      model_config,
      sharding,
      str(cfg.sft.get("loss_aggregation", "token-mean")),
      token_sum_norm=int(cfg.sft.seq_len),
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
  from biomni_jax.train.run_setup import structure_optimizer

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
  # The run's length is unknown here and the schedule's shape irrelevant: only the state's layout.
  optimizer = structure_optimizer(dict(cfg.optimizer.copy_and_resolve_references()))
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
  fits = report.fits
  if cfg.mode == "rl" and "engine" in cfg.rl:
    fits &= report_colocated(cfg, report, _HOST_TOPOLOGY.value)
  sys.exit(0 if fits else 1)


def report_colocated(cfg, train: AotReport, host_topology: str | None) -> bool:
  """Compiles the sampler for one host and prints the colocated per-chip totals; True if they fit."""
  gib = lambda b: f"{b / 2**30:.2f} GiB"
  generation = train.topology.split(":")[0]
  host_topology = host_topology or HOST_TOPOLOGY[generation]
  model_config = config_utils.model_config(cfg)
  sampler = compile_sampler(cfg, model_config, host_topology)
  print(sampler)
  released = bool(cfg.rl.engine.get("release_during_train", False))
  # With rl.engine.release_during_train the sampler frees its weights and cache for the train step.
  resident_in_training = 0 if released else sampler.resident_bytes
  training = train.peak_bytes + resident_in_training
  sampling = train.argument_bytes + sampler.peak_bytes
  weights = model_config.num_params() * model_config.compute_dtype.itemsize
  tensor = sampler.mesh["tensor"]
  verdict = "FITS" if max(training, sampling) <= train.hbm_bytes else "DOES NOT FIT"
  print(
      f"colocated per chip: training: train step {gib(train.peak_bytes)} + sampler "
      f"{'released' if released else 'resident'} {gib(resident_in_training)} = {gib(training)}; "
      f"sampling: sampler peak {gib(sampler.peak_bytes)} + train state {gib(train.argument_bytes)} "
      f"= {gib(sampling)}; of {gib(train.hbm_bytes)}: {verdict}"
  )
  print(
      f"publish: {gib(weights)} of weights per host per RL step ({gib(weights / tensor)} per chip "
      f"over tensor={tensor})"
  )
  return max(training, sampling) <= train.hbm_bytes


if __name__ == "__main__":
  app.run(main)
