"""Multi-turn RL: take groups from the rollout pool, train k mini-batch steps, publish the new weights.

One RL step (= one rollout batch, = one weight version):

    groups = pool.get_groups(num_groups)             G trajectories per task, sampled by versions >= v - S
    rows   = rl_batch.build_minibatches(groups)       advantages (drgrpo: A_i = R_i - mean_g R), k mini-batches
    old    = log pi_v(target) under the CURRENT params at the sampling temperature, for every mini-batch
    k times: state = step(state, minibatch + old)     policy loss (losses.py: PPO clip-higher, dual-clip,
                                                      seq-mean-token-mean), one AdamW update per mini-batch
    engine.update_params(copy of params, v + 1); pool.publish_version(v + 1)

The ratio exp(logp - old) is 1 at the first mini-batch (the params `old` was computed with), so clipping
acts only on the later mini-batches; tokens sampled by an older version than v are corrected by the
(optional, capped) TIS weight exp(old - sampler) of losses.py.

A run lives in `workdir`: `checkpoints/` (TrainState; the JSON extra holds the weight version and the
pool's consumed task ids, so a resumed run neither repeats nor skips tasks), `metrics.jsonl`,
`tensorboard/`, `config.json`. Config fields: section `rl` (see configs/demo_rl.py), plus `model`,
`optimizer`, `mesh`, `tokenizer` as in SFT.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Iterator, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from biomni_jax import model as M
from biomni_jax.config_utils import ConfigError, field
from biomni_jax.model.config import ModelConfig
from biomni_jax.sharding import ShardingRules
from biomni_jax.train import losses, rl_batch, rl_metrics
from biomni_jax.train.checkpoint import Checkpointer
from biomni_jax.train.metrics import MetricsWriter
from biomni_jax.train.step import BATCH_AXES, TrainState, make_train_step

CHECKPOINT_DIR = "checkpoints"
# Fields the jitted RL step reads (the rest of rl_batch.RL_ROW_FIELDS stays on the host).
STEP_FIELDS = (
    "tokens",
    "targets",
    "target_mask",
    "segment_ids",
    "positions",
    "sampler_logprobs",
    "advantages",
    "old_logprobs",
)


class GroupSource(Protocol):
  """What the trainer needs of the rollout pool (rollout.RolloutPool; tests use fakes)."""

  def get_groups(self, num_groups: int, timeout_s: Optional[float] = None) -> list:
    ...

  def publish_version(self, version: int) -> None:
    ...

  def consumed_task_ids(self) -> list[str]:
    ...

  def stats(self) -> dict:
    ...


# --------------------------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class RLSettings:
  """The `rl` config section. num_groups x group_size trajectories per rollout batch, cut into
  num_minibatches optimizer steps; row_length >= the longest trajectory (longer ones are truncated).
  """

  num_groups: int
  group_size: int
  num_minibatches: int
  micro_batches: int
  row_length: int
  pack: bool
  rows_multiple_of: int
  advantage_estimator: str
  temperature: float
  num_steps: int
  save_every: int
  keep_checkpoints: int
  logprob_batch_rows: int
  get_groups_timeout_s: Optional[float]
  tensorboard: bool
  progress_bar: bool
  loss: losses.PolicyLossConfig

  @classmethod
  def from_config(cls, config) -> "RLSettings":
    rl = field(config, "rl")
    try:
      loss = losses.PolicyLossConfig.from_config(dict(field(config, "rl.loss", default={}) or {}))
    except ValueError as e:
      raise ConfigError(f"config field 'rl.loss': {e}") from None
    timeout = field(config, "rl.get_groups_timeout_s", (int, float), default=0.0)
    s = cls(
        num_groups=field(config, "rl.num_groups", int, minimum=1),
        group_size=field(config, "rl.group_size", int, minimum=1),
        num_minibatches=field(config, "rl.num_minibatches", int, minimum=1, default=1),
        micro_batches=field(config, "rl.micro_batches", int, minimum=1, default=1),
        row_length=field(config, "rl.seq_len", int, minimum=2),
        pack=field(config, "rl.pack", bool, default=True),
        rows_multiple_of=field(config, "rl.rows_multiple_of", int, minimum=1, default=1),
        advantage_estimator=field(
            config,
            "rl.advantage_estimator",
            str,
            default="drgrpo",
            choices=("grpo", "drgrpo", "rloo"),
        ),
        temperature=field(config, "rl.temperature", (int, float), minimum=0.0),
        num_steps=field(config, "rl.num_steps", int, minimum=0, default=0),
        save_every=field(config, "rl.save_every", int, minimum=0, default=1),
        keep_checkpoints=field(config, "rl.keep_checkpoints", int, minimum=1, default=3),
        logprob_batch_rows=field(config, "rl.logprob_batch_rows", int, minimum=1, default=8),
        get_groups_timeout_s=float(timeout) if timeout else None,
        tensorboard=field(config, "rl.tensorboard", bool, default=True),
        progress_bar=field(config, "rl.progress_bar", bool, default=True),
        loss=loss,
    )
    del rl
    if (s.num_groups * s.group_size) % s.num_minibatches:
      raise ConfigError(
          f"config field 'rl.num_minibatches': {s.num_minibatches} does not divide "
          f"rl.num_groups x rl.group_size = {s.num_groups * s.group_size}"
      )
    if s.rows_multiple_of % s.micro_batches:
      raise ConfigError(
          f"config field 'rl.micro_batches': {s.micro_batches} does not divide "
          f"rl.rows_multiple_of={s.rows_multiple_of}"
      )
    return s

  @property
  def logprob_temperature(self) -> float:
    # The engine reports temperature-1 log-probs for greedy (temperature 0) sampling.
    return self.temperature if self.temperature > 0 else 1.0


# --------------------------------------------------------------------------------------------- jitted pieces


def make_rl_loss(
    model_config: ModelConfig,
    loss_cfg: losses.PolicyLossConfig,
    temperature: float,
    sharding: Optional[ShardingRules] = None,
):
  """loss_fn(params, rows) -> (loss_sum, denominator, metric sums) for the train step.

  rows: STEP_FIELDS as [B, L] arrays (rl_batch layout + old_logprobs float32). The current policy's
  log-probs are log softmax(z / temperature), the distribution the engine sampled from.
  """
  with_entropy = loss_cfg.entropy_coef > 0

  def loss_fn(params, rows):
    out = M.token_logprobs(
        model_config,
        params,
        rows["tokens"],
        rows["targets"],
        positions=rows["positions"],
        segment_ids=rows["segment_ids"],
        sharding=sharding,
        temperature=temperature,
        with_entropy=with_entropy,
    )
    logp, entropy = out if with_entropy else (out, None)
    return losses.policy_loss(
        logp,
        rows["advantages"],
        rows["target_mask"].astype(jnp.float32),
        loss_cfg,
        old_logprobs=rows["old_logprobs"],
        sampler_logprobs=rows["sampler_logprobs"],
        ref_logprobs=rows.get("ref_logprobs"),
        entropies=entropy,
        segment_ids=rows["segment_ids"],
    )

  return loss_fn


def make_logprob_fn(model_config: ModelConfig, sharding: ShardingRules, temperature: float):
  """Jitted (params, tokens, targets, positions, segment_ids) -> log p(targets) float32 [B, L]."""
  param_sh = M.param_shardings(model_config, sharding)
  rows_sh = sharding.sharding(BATCH_AXES)

  def logprobs(params, tokens, targets, positions, segment_ids):
    return M.token_logprobs(
        model_config,
        params,
        tokens,
        targets,
        positions=positions,
        segment_ids=segment_ids,
        sharding=sharding,
        temperature=temperature,
    )

  return jax.jit(
      logprobs, in_shardings=(param_sh, rows_sh, rows_sh, rows_sh, rows_sh), out_shardings=rows_sh
  )


def recompute_logprobs(
    logprob_fn, params, rows: dict[str, np.ndarray], batch_rows: int, sharding: ShardingRules
) -> np.ndarray:
  """log p(targets) float32 [R, L] under `params`, `batch_rows` rows at a time, 0 off the target mask."""
  n = rows["tokens"].shape[0]
  out = np.zeros(rows["tokens"].shape, np.float32)
  target = sharding.sharding(BATCH_AXES)
  step = min(batch_rows, n)
  for start in range(0, n, step):
    chunk = {
        k: rows[k][start : start + step] for k in ("tokens", "targets", "positions", "segment_ids")
    }
    real = chunk["tokens"].shape[0]
    if real < step:  # keep one compiled shape
      chunk = {
          k: np.concatenate([v, np.zeros((step - real,) + v.shape[1:], v.dtype)])
          for k, v in chunk.items()
      }
    placed = [
        jax.device_put(chunk[k], target) for k in ("tokens", "targets", "positions", "segment_ids")
    ]
    out[start : start + real] = np.asarray(logprob_fn(params, *placed))[:real]
  return out * (rows["target_mask"] > 0)


def sampler_mismatch(old: np.ndarray, rows: dict[str, np.ndarray]) -> dict[str, float]:
  """How far the trainer's recomputed log-probs are from the engine's, on sampled tokens.

  logprob_diff_abs = mean |old - sampler|; sampler_kl = mean k3(sampler || old) = mean(r - 1 - log r),
  r = exp(old - sampler) (0 when the engine and trainer agree and nothing is stale).
  """
  mask = rows["target_mask"] > 0
  if not mask.any():
    return {}
  d = (old - rows["sampler_logprobs"])[mask].astype(np.float64)
  r = np.exp(d)
  return {"logprob_diff_abs": float(np.abs(d).mean()), "sampler_kl": float((r - 1 - d).mean())}


# --------------------------------------------------------------------------------------------- the trainer


class RLTrainer:
  """Owns the jitted step and log-prob functions; `train_on_groups` is one RL step (k optimizer steps)."""

  def __init__(
      self,
      model_config: ModelConfig,
      settings: RLSettings,
      optimizer,
      sharding: ShardingRules,
      *,
      learning_rate_fn=None,
      seed: int = 0,
  ):
    self.model_config, self.s, self.sharding, self.seed = model_config, settings, sharding, seed
    loss_fn = make_rl_loss(model_config, settings.loss, settings.logprob_temperature, sharding)
    self.step_fn = make_train_step(
        model_config,
        loss_fn,
        optimizer,
        sharding=sharding,
        micro_batches=settings.micro_batches,
        learning_rate_fn=learning_rate_fn,
        combine_metrics=losses.combine_metrics,
    )
    self.logprob_fn = make_logprob_fn(model_config, sharding, settings.logprob_temperature)

  def build(
      self, groups: Sequence[Any], rl_step: int
  ) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """The rollout batch's k mini-batches (rl_batch layout) and its advantages [N]."""
    return rl_batch.build_minibatches(
        groups,
        num_minibatches=self.s.num_minibatches,
        row_length=self.s.row_length,
        estimator=self.s.advantage_estimator,
        pack=self.s.pack,
        rows_multiple_of=self.s.rows_multiple_of,
        seed=self.seed * 1_000_003 + rl_step,
    )

  def train_on_groups(
      self, state: TrainState, groups: Sequence[Any], rl_step: int
  ) -> tuple[TrainState, dict[str, float]]:
    """Recompute old log-probs under state.params, then one optimizer step per mini-batch."""
    minibatches, adv = self.build(groups, rl_step)
    t0 = time.perf_counter()
    for rows in minibatches:
      rows["old_logprobs"] = recompute_logprobs(
          self.logprob_fn, state.params, rows, self.s.logprob_batch_rows, self.sharding
      )
    logprob_seconds = time.perf_counter() - t0
    mismatch = [sampler_mismatch(rows["old_logprobs"], rows) for rows in minibatches]
    target = self.sharding.sharding(BATCH_AXES)
    sums, step_metrics = None, []
    t0 = time.perf_counter()
    for rows in minibatches:
      placed = {k: jax.device_put(rows[k], target) for k in STEP_FIELDS}
      state, metrics = self.step_fn(state, placed)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      step_metrics.append(metrics)
      loss_sums = {k: jnp.asarray(metrics[k]) for k in _LOSS_SUM_KEYS if k in metrics}
      sums = loss_sums if sums is None else losses.combine_metrics(sums, loss_sums)
    train_seconds = time.perf_counter() - t0
    out = {k: float(v) for k, v in losses.finalize_metrics(sums).items()}
    for key in ("loss", "grad_norm", "lr"):
      if key in step_metrics[0]:
        out[key] = float(np.mean([m[key] for m in step_metrics]))
    for key in ("logprob_diff_abs", "sampler_kl"):
      values = [m[key] for m in mismatch if key in m]
      if values:
        out[key] = float(np.mean(values))
    out.update(
        advantage_abs_mean=float(np.abs(adv).mean()),
        optimizer_steps=float(len(minibatches)),
        rows=float(sum(r["tokens"].shape[0] for r in minibatches)),
        logprob_seconds=logprob_seconds,
        train_seconds=train_seconds,
    )
    return state, out


_LOSS_SUM_KEYS = (
    "num_tokens",
    "pg_loss_sum",
    "clip_low_count",
    "clip_high_count",
    "dual_clip_count",
    "ratio_sum",
    "ratio_sq_sum",
    "ratio_max",
    "ratio_min",
    "approx_kl_sum",
    "tis_weight_sum",
    "tis_capped_count",
    "kl_sum",
    "entropy_sum",
)


def copy_params(params):
  """A fresh copy for the engine: the train step donates (deletes) the state's buffers."""
  return jax.tree.map(jnp.copy, params)


# --------------------------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class RLRun:
  """What `run_rl_loop` needs besides the pool; `publish(params, version)` updates the engine."""

  trainer: RLTrainer
  checkpointer: Checkpointer
  writer: MetricsWriter
  publish: Callable[[Any, int], None]
  total_steps: int


def run_rl_loop(
    run: RLRun,
    state: TrainState,
    pool: GroupSource,
    start_step: int,
    extra_metrics: Optional[Callable[[int, TrainState], dict]] = None,
) -> tuple[TrainState, dict]:
  """RL steps start_step+1 .. total_steps. Weight version after RL step k is k (the engine starts at the
  restored version, start_step). Checkpoint extra: {"version", "consumed_task_ids"}."""
  s = run.trainer.s
  summary: dict[str, Any] = {
      "start_step": start_step,
      "total_steps": run.total_steps,
      "rewards": {},
      "success": {},
  }
  bar = tqdm(
      total=run.total_steps, initial=start_step, disable=not s.progress_bar, desc="rl", unit="step"
  )
  try:
    for rl_step in range(start_step + 1, run.total_steps + 1):
      t0 = time.perf_counter()
      groups = pool.get_groups(s.num_groups, timeout_s=s.get_groups_timeout_s)
      wait_seconds = time.perf_counter() - t0
      if len(groups) != s.num_groups:
        raise RuntimeError(
            f"rl step {rl_step}: the pool returned {len(groups)} groups, expected {s.num_groups}"
        )
      version = rl_step - 1
      metrics = rl_metrics.episode_metrics(groups, ks=(1,))
      metrics.update(rl_metrics.staleness_metrics(groups, version))
      state, train_metrics = run.trainer.train_on_groups(state, groups, rl_step)
      metrics.update(train_metrics)
      run.publish(state.params, rl_step)
      pool.publish_version(rl_step)
      metrics.update(rl_metrics.pool_metrics(pool.stats()))
      metrics.update(
          wait_for_groups_seconds=wait_seconds,
          step_seconds=time.perf_counter() - t0,
          version=float(rl_step),
      )
      if extra_metrics is not None:
        metrics.update(extra_metrics(rl_step, state))
      run.writer.write(rl_step, metrics)
      summary["rewards"][rl_step] = metrics["reward"]
      summary["success"][rl_step] = metrics["success"]
      bar.update(1)
      bar.set_postfix(
          reward=f"{metrics['reward']:.3f}",
          success=f"{metrics['success']:.2f}",
          clip=f"{metrics.get('clip_low_frac', 0) + metrics.get('clip_high_frac', 0):.3f}",
      )
      if (s.save_every and rl_step % s.save_every == 0) or rl_step == run.total_steps:
        run.checkpointer.save(
            rl_step,
            state,
            {"version": rl_step, "consumed_task_ids": list(pool.consumed_task_ids())},
            force=True,
        )
  finally:
    bar.close()
  summary["final_step"] = int(state.step)
  return state, summary


def task_stream(tasks: Sequence[Any], epochs: int, seed: int) -> Iterator[Any]:
  """Each epoch a seeded shuffle of `tasks`; instance ids get an '#e<epoch>' suffix so that every element
  of the stream has its own id (what the pool's consumed-id bookkeeping keys on)."""
  for epoch in range(epochs):
    order = np.random.default_rng([seed, epoch]).permutation(len(tasks))
    for i in order:
      task = tasks[int(i)]
      yield dataclasses.replace(task, instance_id=f"{task.instance_id}#e{epoch}")


def write_config(config, workdir: str) -> None:
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(
        config.to_json(indent=1)
        if hasattr(config, "to_json")
        else json.dumps(dict(config), indent=1)
    )


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
  from biomni_jax.train.optimizer import make_optimizer
  from biomni_jax.train.sft import CHECKPOINT_DIR as SFT_CHECKPOINTS, TOKENIZER_DIR
  from biomni_jax.train.step import abstract_train_state

  config_path = os.path.join(sft_workdir, "config.json")
  if not os.path.isfile(config_path):
    raise ConfigError(
        f"config field 'rl.init_from_sft': {sft_workdir!r} has no config.json (expected an SFT "
        f"run's workdir)"
    )
  with open(config_path) as f:
    sft_config = ml_collections.ConfigDict(json.load(f))
  has_own_tokenizer = bool(field(sft_config, "tokenizer.path", str, default=""))
  tokenizer = load_tokenizer(
      sft_config.tokenizer.path if has_own_tokenizer else os.path.join(sft_workdir, TOKENIZER_DIR)
  )
  model_cfg = model_config(sft_config, vocab_size=None if has_own_tokenizer else len(tokenizer))
  opt_cfg = dict(sft_config.optimizer)
  opt_cfg["total_steps"] = max(
      int(opt_cfg.get("total_steps") or 0), int(opt_cfg.get("warmup_steps") or 0) + 1
  )
  optimizer = make_optimizer(opt_cfg)
  with Checkpointer(os.path.join(sft_workdir, SFT_CHECKPOINTS), async_save=False) as ckpt:
    if ckpt.latest_step() is None:
      raise ConfigError(
          f"config field 'rl.init_from_sft': no checkpoint under {sft_workdir}/{SFT_CHECKPOINTS}"
      )
    state, _ = ckpt.restore(abstract_train_state(model_cfg, optimizer, sharding))
  return model_cfg, state.params, tokenizer, sft_config


def build_tasks(config) -> list:
  """The training task instances: rl.tasks_per_family instances of each of rl.task_families (split
  rl.task_split), in family order."""
  from biomni_jax.env.tasks import get_family

  families = list(field(config, "rl.task_families"))
  count = field(config, "rl.tasks_per_family", int, minimum=1)
  split = field(config, "rl.task_split", str, default="train")
  seed = field(config, "rl.task_seed", int, default=0)
  if not families:
    raise ConfigError("config field 'rl.task_families': empty; expected task family names")
  try:
    return [t for name in families for t in get_family(name, seed=seed).instances(split, count)]
  except KeyError as e:
    raise ConfigError(f"config field 'rl.task_families': {e.args[0]}") from None


def rollout_config(config, settings: RLSettings):
  """rollout.RolloutConfig from rl.rollout plus the fields the trainer shares with it."""
  from biomni_jax.rollout.config import RolloutConfig

  fields = dict(field(config, "rl.rollout", default={}) or {})
  fields.update(
      group_size=settings.group_size,
      groups_per_batch=settings.num_groups,
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


def train_rl(config, workdir: str, *, pool_factory: Optional[PoolFactory] = None) -> dict[str, Any]:
  """Run (or resume) RL as `config` says, in `workdir`. Returns a summary (steps, rewards, success).

  pool_factory(engine=AsyncEngine, tokenizer=, tasks=Iterator[TaskInstance], config=, settings=) -> a pool
  with start/stop, restore_consumed and the GroupSource methods; default: `default_pool_factory`.
  """
  from biomni_jax.config_utils import mesh_shape, model_config
  from biomni_jax.sampling import AsyncEngine, Engine
  from biomni_jax.sharding import make_mesh
  from biomni_jax.train.optimizer import make_optimizer, make_schedule
  from biomni_jax.train.sft import _initial_params, prepare_tokenizer
  from biomni_jax.train.step import abstract_train_state, init_train_state

  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  s = RLSettings.from_config(config)
  seed = field(config, "seed", int, default=0)
  sharding = ShardingRules(make_mesh(**mesh_shape(config)))
  sft_dir = field(config, "rl.init_from_sft", str, default="")
  if sft_dir:
    model_cfg, init_params, tokenizer, _ = load_sft_run(sft_dir, sharding)
  else:
    tokenizer = prepare_tokenizer(config, workdir, [])
    has_own = bool(field(config, "tokenizer.path", str, default=""))
    model_cfg = model_config(config, vocab_size=None if has_own else len(tokenizer))
    model_cfg, init_params = _initial_params(
        config, model_cfg, sharding
    )  # model.init_from: a HF directory

  tasks = build_tasks(config)
  epochs = field(config, "rl.epochs", int, minimum=1, default=1)
  total_steps = s.num_steps or max(1, epochs * len(tasks) // s.num_groups)
  if total_steps * s.num_groups > epochs * len(tasks):  # fail now, not after hours of training
    raise ConfigError(
        f"config fields 'rl.num_steps' x 'rl.num_groups' = {total_steps} x {s.num_groups} need "
        f"{total_steps * s.num_groups} task instances, but 'rl.epochs' x tasks = {epochs} x "
        f"{len(tasks)}: raise rl.epochs or rl.tasks_per_family, or lower rl.num_steps"
    )
  opt_cfg = dict(field(config, "optimizer"))
  opt_cfg["total_steps"] = opt_cfg.get("total_steps") or total_steps * s.num_minibatches
  try:
    optimizer, schedule = make_optimizer(opt_cfg), make_schedule(opt_cfg)
  except ValueError as e:
    raise ConfigError(str(e)) from None
  trainer = RLTrainer(model_cfg, s, optimizer, sharding, learning_rate_fn=schedule, seed=seed)

  ckpt = Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR),
      max_to_keep=s.keep_checkpoints,
      async_save=field(config, "rl.async_checkpoint", bool, default=True),
  )
  start_step, consumed = ckpt.latest_step(), []
  if start_step is None:
    state, start_step = (
        init_train_state(model_cfg, optimizer, seed, sharding, params=init_params),
        0,
    )
  else:
    state, extra = ckpt.restore(abstract_train_state(model_cfg, optimizer, sharding))
    consumed = list(extra.get("consumed_task_ids", []))
    if int(extra.get("version", start_step)) != start_step:
      raise ValueError(
          f"{ckpt.directory}/{start_step}: extra version {extra.get('version')} differs from "
          f"the step"
      )
  del init_params
  write_config(config, workdir)

  engine = Engine(
      model_cfg,
      copy_params(state.params),
      sharding,
      num_slots=field(config, "rl.engine.num_slots", int, minimum=1, default=8),
      max_len=field(config, "rl.engine.max_len", int, minimum=2, default=s.row_length),
      detokenize=tokenizer.decode,
      max_prefill_chunk=field(config, "rl.engine.max_prefill_chunk", int, minimum=16, default=256),
      version=start_step,
  )
  writer = MetricsWriter(workdir, tensorboard=s.tensorboard, resume_step=start_step)
  pool = None
  try:
    factory = pool_factory or default_pool_factory
    pool = factory(
        engine=AsyncEngine(engine),
        tokenizer=tokenizer,
        tasks=task_stream(tasks, epochs, seed),
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
        publish=lambda params, version: engine.update_params(copy_params(params), version),
    )
    state, summary = run_rl_loop(run, state, pool, start_step)
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
