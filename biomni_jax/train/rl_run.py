"""Assembling an RL run from a config: model and tokenizer, trainer, per-host engine and rollout pool,
checkpoints and resume. The loop itself is `rl.run_rl_loop`.

    summary = train_rl(config, workdir)       # python -m biomni_jax.main --config=configs/demo_rl.py ...

On P hosts every process runs this same function (after `jax.distributed.initialize()`): the trainer's
mesh (`mesh`) spans all devices; each host builds its own sampler (`rl.engine.mesh`: data x tensor of
its own devices, sampling/layout.py), sandbox pool and rollout pool over its own share of the task
stream (element k goes to host k mod P), and takes num_groups / P groups per step. Process 0 writes the
metrics and config; checkpoints hold every host's consumed task ids, so a resumed run (on any number of
hosts) neither repeats nor skips a task.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
from typing import Any, Callable, Iterator, Optional, Sequence

import jax
import numpy as np

from biomni_jax import distributed
from biomni_jax import model as M
from biomni_jax.config_utils import ConfigError, field
from biomni_jax.sharding import ShardingRules
from biomni_jax.train import run_setup
from biomni_jax.train.checkpoint import Checkpointer
from biomni_jax.train.metrics import MetricsWriter
from biomni_jax.train.rl import RLRun, RLSettings, RLTrainer, run_rl_loop
from biomni_jax.train.step import random_init_params


def task_stream(tasks: Sequence[Any], epochs: int, seed: int) -> Iterator[Any]:
  """Each epoch a seeded shuffle of `tasks`; instance ids get an '#e<epoch>' suffix so that every element
  of the stream has its own id (what the pool's consumed-id bookkeeping keys on)."""
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(tasks))
    for i in order:
      task = tasks[int(i)]
      yield dataclasses.replace(task, instance_id=f"{task.instance_id}#e{epoch}")


def host_share(stream: Iterator[Any], index: int, count: int) -> Iterator[Any]:
  """Elements index, index + count, index + 2 count, ... of `stream`: the hosts' shares are disjoint and
  together are the whole stream."""
  return itertools.islice(stream, index, None, count)


# --------------------------------------------------------------------------------------------- assembly

PoolFactory = Callable[..., Any]


def load_sft_run(sft_workdir: str, sharding: ShardingRules):
  """(model config, params, tokenizer, sft config) of the newest checkpoint of an SFT run's workdir.

  The SFT run's optimizer is rebuilt from its config.json so that its whole TrainState restores
  (the checkpointer checks the full tree); only the params are kept.
  """
  import ml_collections
  from biomni_jax.config_utils import model_config
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.train.step import abstract_train_state

  config_path = os.path.join(sft_workdir, run_setup.CONFIG_FILE)
  if not os.path.isfile(config_path):
    raise ConfigError(
        f"config field 'rl.init_from_sft': {sft_workdir!r} has no config.json (expected an SFT "
        f"run's workdir)"
    )
  with open(config_path) as f:
    sft_config = ml_collections.ConfigDict(json.load(f))
  has_own_tokenizer = run_setup.has_own_tokenizer(sft_config)
  tokenizer = load_tokenizer(
      sft_config.tokenizer.path
      if has_own_tokenizer
      else os.path.join(sft_workdir, run_setup.TOKENIZER_DIR)
  )
  model_cfg = model_config(sft_config, vocab_size=None if has_own_tokenizer else len(tokenizer))
  optimizer = run_setup.structure_optimizer(dict(sft_config.optimizer))
  checkpoints = os.path.join(sft_workdir, run_setup.CHECKPOINT_DIR)
  with Checkpointer(checkpoints, async_save=False) as ckpt:
    if ckpt.latest_step() is None:
      raise ConfigError(f"config field 'rl.init_from_sft': no checkpoint under {checkpoints}")
    state, _ = ckpt.restore(abstract_train_state(model_cfg, optimizer, sharding))
  return model_cfg, state.params, tokenizer, sft_config


def build_tasks(config) -> list:
  """The training task instances: rl.tasks_per_family instances of each of rl.task_families (split
  rl.task_split, indices from rl.task_start on), in family order."""
  from biomni_jax.env.tasks import get_family

  families = list(field(config, "rl.task_families"))
  count = field(config, "rl.tasks_per_family", int, minimum=1)
  split = field(config, "rl.task_split", str, default="train")
  seed = field(config, "rl.task_seed", int, default=0)
  start = field(config, "rl.task_start", int, minimum=0, default=0)
  if not families:
    raise ConfigError("config field 'rl.task_families': empty; expected task family names")
  try:
    return [
        t for name in families for t in get_family(name, seed=seed).instances(split, count, start)
    ]
  except KeyError as e:
    raise ConfigError(f"config field 'rl.task_families': {e.args[0]}") from None


def rollout_config(config, settings: RLSettings):
  """rollout.RolloutConfig from rl.rollout plus the fields the trainer shares with it (this host's
  share of the groups per batch, which paces its admission)."""
  from biomni_jax.rollout.config import RolloutConfig

  fields = dict(field(config, "rl.rollout", default={}) or {})
  fields.update(
      group_size=settings.group_size,
      groups_per_batch=settings.num_groups // distributed.process_count(),  # this host's share
      temperature=float(settings.temperature),
      seed=field(config, "seed", int, default=0),
  )
  for key, value in list(fields.items()):
    if isinstance(value, list):
      fields[key] = tuple(value)
  try:
    return RolloutConfig(**fields)
  except (TypeError, ValueError) as e:
    raise ConfigError(f"config field 'rl.rollout': {e}") from None


def default_pool_factory(*, engine, tokenizer, tasks, config, settings: RLSettings):
  """The real rollout pool (biomni_jax.rollout) over a sandbox pool of config.rl.sandbox_workers."""
  from biomni_jax.env.sandbox import SandboxPool
  from biomni_jax.rollout.pool import RolloutPool

  sandbox = SandboxPool(max_workers=field(config, "rl.sandbox_workers", int, minimum=1, default=2))
  return RolloutPool(engine, sandbox, tokenizer, tasks, rollout_config(config, settings))


def pool_rollout_staleness(config) -> int:
  return field(config, "rl.rollout.max_staleness", int, minimum=0, default=0)


def consumed_task_ids(extra: dict) -> list[str]:
  """Every host's consumed task ids from a checkpoint's extra (one list per host, or one list).

  Each host skips all of them in its share of the stream, so a run may resume on another number of
  hosts: a consumed task is never repeated, an unconsumed one goes to whichever host now owns it."""
  by_host = extra.get("consumed_task_ids", [])
  if by_host and not isinstance(by_host[0], list):
    by_host = [by_host]
  # Stream elements have unique ids ('#e<epoch>'), so the union loses nothing.
  return list(dict.fromkeys(task for host in by_host for task in host))


def train_rl(config, workdir: str, *, pool_factory: Optional[PoolFactory] = None) -> dict[str, Any]:
  """Run (or resume) RL as `config` says, in `workdir`. Returns a summary (steps, rewards, success).

  pool_factory(engine=AsyncEngine, tokenizer=, tasks=Iterator[TaskInstance], config=, settings=) -> a pool
  with start/stop, restore_consumed and the GroupSource methods; default: `default_pool_factory`.
  """
  from biomni_jax.sampling import AsyncEngine, make_engine, publish_to
  from biomni_jax.sampling.layout import layout_from_config

  workdir = run_setup.run_workdir(workdir)
  s = RLSettings.from_config(config)
  seed = field(config, "seed", int, default=0)
  sharding = run_setup.run_sharding(config)
  sft_dir = field(config, "rl.init_from_sft", str, default="")
  if sft_dir:
    model_cfg, init_params, tokenizer, _ = load_sft_run(sft_dir, sharding)
  else:  # the config's own model (model.init_from: a Hugging Face directory, or a random init)
    tokenizer, model_cfg, init_params = run_setup.model_and_tokenizer(config, workdir, sharding)

  hosts, host = distributed.process_count(), distributed.process_index()
  if s.num_groups % hosts:
    raise ConfigError(
        f"config field 'rl.num_groups': {s.num_groups} groups do not split over {hosts} hosts "
        f"(each host delivers whole groups of its own tasks)"
    )
  try:
    layout = layout_from_config(model_cfg, dict(field(config, "rl.engine.mesh", default={}) or {}))
  except ValueError as e:
    raise ConfigError(f"config field 'rl.engine.mesh': {e}") from None
  tasks = build_tasks(config)
  epochs = field(config, "rl.epochs", int, minimum=1, default=1)
  total_steps = s.num_steps or max(1, epochs * len(tasks) // s.num_groups)
  if total_steps * s.num_groups > epochs * len(tasks):  # fail now, not after hours of training
    raise ConfigError(
        f"config fields 'rl.num_steps' x 'rl.num_groups' = {total_steps} x {s.num_groups} need "
        f"{total_steps * s.num_groups} task instances, but 'rl.epochs' x tasks = {epochs} x "
        f"{len(tasks)}: raise rl.epochs or rl.tasks_per_family, or lower rl.num_steps"
    )
  optimizer, schedule = run_setup.run_optimizer(config, total_steps * s.num_minibatches)
  # The KL term's reference is the initial (SFT, or random) policy, also after a resume; a copy,
  # because the first train step donates the buffers the initial state shares with init_params.
  reference = None
  if s.loss.kl_coef > 0:
    if init_params is None:
      init_params = random_init_params(model_cfg, seed, sharding)
    reference = jax.tree.map(lambda x: x.copy(), init_params)
  try:  # with the reference given, only the rows' split over the mesh can fail here
    trainer = RLTrainer(
        model_cfg,
        s,
        optimizer,
        sharding,
        learning_rate_fn=schedule,
        seed=seed,
        reference_params=reference,
    )
  except ValueError as e:
    raise ConfigError(f"config field 'mesh': {e}") from None

  ckpt = run_setup.open_checkpointer(
      workdir, s.keep_checkpoints, field(config, "rl.async_checkpoint", bool, default=True)
  )
  state, start_step, extra = run_setup.start_or_resume(
      ckpt, model_cfg, optimizer, seed, sharding, init_params
  )
  consumed = consumed_task_ids(extra)
  if start_step and int(extra.get("version", start_step)) != start_step:
    raise ValueError(
        f"{ckpt.directory}/{start_step}: extra version {extra.get('version')} differs from the step"
    )
  del init_params
  if host == 0:
    run_setup.write_config(config, workdir)

  engine = make_engine(
      model_cfg,
      layout,
      layout.publish(state.params),
      num_slots=field(config, "rl.engine.num_slots", int, minimum=1, default=8),
      max_len=field(config, "rl.engine.max_len", int, minimum=2, default=s.row_length),
      detokenize=tokenizer.decode,
      max_prefill_chunk=field(config, "rl.engine.max_prefill_chunk", int, minimum=16, default=256),
      version=start_step,
  )
  release = field(config, "rl.engine.release_during_train", bool, default=False)
  if release and pool_rollout_staleness(config) > 0:
    raise ConfigError(
        "config field 'rl.engine.release_during_train': needs rl.rollout.max_staleness = 0 (with "
        "staleness > 0 episodes of the next batch are sampling while the trainer trains)"
    )
  writer = MetricsWriter(
      workdir, tensorboard=s.tensorboard, resume_step=start_step, enabled=host == 0
  )
  pool = None
  try:
    factory = pool_factory or default_pool_factory
    pool = factory(
        engine=AsyncEngine(engine),
        tokenizer=tokenizer,
        tasks=host_share(task_stream(tasks, epochs, seed), host, hosts),
        config=config,
        settings=s,
    )
    pool.restore_consumed(consumed)
    pool.publish_version(start_step)
    pool.start()
    run = RLRun(
        trainer=trainer,
        checkpointer=ckpt,
        writer=writer,
        total_steps=total_steps,
        publish=lambda params, version: publish_to(engine, layout, params, version),
        before_train=(lambda: engine.release_memory().result()) if release else None,
    )
    try:
      state, summary = run_rl_loop(run, state, pool, start_step)
    except jax.errors.JaxRuntimeError as e:
      raise distributed.lost_host_error(e, f"rl (process {host} of {hosts})") from e
  finally:
    if pool is not None:
      pool.stop()
      if hasattr(getattr(pool, "sandbox", None), "close"):
        pool.sandbox.close()  # the run's sandbox workers (default_pool_factory) end with the run
    engine.shutdown()
    writer.close()
    ckpt.close()
  summary.update(
      num_tasks=len(tasks),
      num_params=M.num_params(state.params),
      state=state,
      model_config=model_cfg,
      tokenizer=tokenizer,
  )
  return summary
