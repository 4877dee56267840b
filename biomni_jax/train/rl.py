"""Multi-turn RL: take groups from the rollout pool, train k mini-batch steps, publish the new weights.

One RL step (= one rollout batch, = one weight version):

    groups = pool.get_groups(num_groups)             G trajectories per task, sampled by versions >= v - S
    rows   = rl_batch.build_minibatches(groups)       advantages (drgrpo: A_i = R_i - mean_g R), k mini-batches
    old    = log pi_v(target) under the CURRENT params at the sampling temperature, for every mini-batch
    ref    = log pi_ref(target) under the initial (SFT) params, only when rl.loss.kl_coef > 0
    k times: state = step(state, minibatch + old)     policy loss (losses.py: PPO clip-higher, dual-clip,
                                                      seq-mean-token-mean), one AdamW update per mini-batch
    engine.update_params(copy of params, v + 1); pool.publish_version(v + 1)

The ratio exp(logp - old) is 1 at the first mini-batch (the params `old` was computed with), so clipping
acts only on the later mini-batches; tokens sampled by an older version than v are corrected by the
(optional, capped) TIS weight exp(old - sampler) of losses.py.

On several hosts (one global SPMD trainer, one sampler per host; see distributed.py and
sampling/layout.py) each host takes its num_groups / P groups from its own pool, builds its own rows
(groups never span hosts, so advantages stay local), and the hosts agree on a row count so that every
mini-batch is one global array of all hosts' rows. The loss is a sum over rows divided by the global
denominator, so it equals one host training on all the groups. Metrics are combined over hosts.

Assembly of a run from a config (model, engine, pool, checkpoints, resume): train/rl_run.py.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from biomni_jax import distributed
from biomni_jax import model as M
from biomni_jax.config_utils import ConfigError, field
from biomni_jax.data.packing import TRAIN_ROW_FIELDS
from biomni_jax.model.config import ModelConfig
from biomni_jax.sharding import ShardingRules
from biomni_jax.train import advantages as advantages_lib
from biomni_jax.train import losses, rl_batch, rl_metrics
from biomni_jax.train.checkpoint import Checkpointer
from biomni_jax.train.metrics import MetricsWriter
from biomni_jax.train.step import BATCH_AXES, TrainState, make_train_step, row_logprobs

# Fields the jitted RL step reads: rl_batch.RL_ROW_FIELDS but policy_versions (which stays on the host),
# and the log-probs of the params at the start of the step.
STEP_FIELDS = TRAIN_ROW_FIELDS + ("sampler_logprobs", "advantages", "old_logprobs")


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
      loss = losses.PolicyLossConfig.from_config(
          dict(field(config, "rl.loss", default={}) or {}),
          default_token_sum_norm=field(config, "rl.seq_len", int, minimum=2),
      )
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
            choices=tuple(advantages_lib.ADVANTAGES),
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
    out = row_logprobs(
        model_config,
        params,
        rows,
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
  """Jitted (params, rows: {tokens, targets, positions, segment_ids} [B, L]) -> log p(targets) float32
  [B, L]."""
  param_sh = M.param_shardings(model_config, sharding)
  rows_sh = sharding.sharding(BATCH_AXES)

  def logprobs(params, rows):
    return row_logprobs(model_config, params, rows, sharding=sharding, temperature=temperature)

  return jax.jit(logprobs, in_shardings=(param_sh, rows_sh), out_shardings=rows_sh)


def recompute_logprobs(
    logprob_fn, params, rows: dict[str, np.ndarray], batch_rows: int, sharding: ShardingRules
) -> np.ndarray:
  """log p(targets) float32 [R, L] under `params`, `batch_rows` of this host's rows at a time (every
  host passes the same R and batch_rows: each call is one global batch of all hosts' chunks), 0 off the
  target mask."""
  n = rows["tokens"].shape[0]
  out = np.zeros(rows["tokens"].shape, np.float32)
  target = sharding.sharding(BATCH_AXES)
  fields = ("tokens", "targets", "positions", "segment_ids")
  for start in range(0, n, batch_rows):
    chunk = {k: rows[k][start : start + batch_rows] for k in fields}
    real = chunk["tokens"].shape[0]
    if real < batch_rows:  # keep one compiled shape
      chunk = {
          k: np.concatenate([v, np.zeros((batch_rows - real,) + v.shape[1:], v.dtype)])
          for k, v in chunk.items()
      }
    placed = distributed.global_rows(chunk, target)
    logp = logprob_fn(params, placed)
    out[start : start + real] = distributed.local_rows(logp)[:real]
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
      reference_params=None,
  ):
    """reference_params: the policy the KL term holds the model to (the SFT params), a copy of its own
    (train steps donate their state's buffers); required when settings.loss.kl_coef > 0, else unused.
    """
    self.model_config, self.s, self.sharding, self.seed = model_config, settings, sharding, seed
    if settings.loss.kl_coef > 0 and reference_params is None:
      raise ValueError(
          f"RLTrainer: rl.loss.kl_coef = {settings.loss.kl_coef} > 0 needs the reference policy's "
          "params (reference_params), found None"
      )
    self.reference_params = reference_params if settings.loss.kl_coef > 0 else None
    self.step_fields = STEP_FIELDS + (
        ("ref_logprobs",) if self.reference_params is not None else ()
    )
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
    self.batch_sharding = sharding.sharding(BATCH_AXES)
    # Global rows: a multiple of rows_multiple_of, of (micro-batches x batch shards) so that every
    # micro-batch splits over the batch axes, and of the processes (each contributes equal rows).
    hosts, shards = distributed.process_count(), sharding.axis_size("batch")
    self.rows_multiple = math.lcm(settings.rows_multiple_of, settings.micro_batches * shards, hosts)
    self.local_rows_multiple = self.rows_multiple // hosts
    chunk = math.lcm(shards, hosts)
    self.local_logprob_rows = -(-settings.logprob_batch_rows // chunk) * chunk // hosts
    distributed.check_batch_split(self.batch_sharding, self.rows_multiple)

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
        rows_multiple_of=self.local_rows_multiple,
        seed=self.seed * 1_000_003 + rl_step + 1_000_000_007 * distributed.process_index(),
    )

  def add_logprobs(self, params, minibatches: list[dict[str, np.ndarray]]) -> None:
    """Adds to each mini-batch old_logprobs under `params` (the step's first) and, with the KL term,
    ref_logprobs under the reference params: the fields of self.step_fields the rows lack."""
    for rows in minibatches:
      rows["old_logprobs"] = recompute_logprobs(
          self.logprob_fn, params, rows, self.local_logprob_rows, self.sharding
      )
      if self.reference_params is not None:
        rows["ref_logprobs"] = recompute_logprobs(
            self.logprob_fn, self.reference_params, rows, self.local_logprob_rows, self.sharding
        )

  def train_on_groups(
      self, state: TrainState, groups: Sequence[Any], rl_step: int
  ) -> tuple[TrainState, dict[str, float]]:
    """Recompute old log-probs under state.params, then one optimizer step per mini-batch.

    `groups`: this host's groups. Every host calls this at the same RL step (a collective)."""
    minibatches, adv = self.build(groups, rl_step)
    minibatches = pad_to_common_rows(minibatches)
    t0 = time.perf_counter()
    self.add_logprobs(state.params, minibatches)
    logprob_seconds = time.perf_counter() - t0
    mismatch = [sampler_mismatch(rows["old_logprobs"], rows) for rows in minibatches]
    sums, step_metrics = None, []
    t0 = time.perf_counter()
    for rows in minibatches:
      placed = distributed.global_rows({k: rows[k] for k in self.step_fields}, self.batch_sharding)
      state, metrics = self.step_fn(state, placed)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      step_metrics.append(metrics)
      loss_sums = {k: jnp.asarray(metrics[k]) for k in losses.METRIC_SUMS if k in metrics}
      sums = loss_sums if sums is None else losses.combine_metrics(sums, loss_sums)
    train_seconds = time.perf_counter() - t0
    out = {k: float(v) for k, v in losses.finalize_metrics(sums).items()}
    for key in ("loss", "grad_norm", "lr"):
      if key in step_metrics[0]:
        out[key] = float(np.mean([m[key] for m in step_metrics]))
    host_values = distributed.allgather_json(
        {
            "mismatch": [m for m in mismatch if m],
            "adv_abs_sum": float(np.abs(adv).sum()),
            "trajectories": int(adv.size),
        }
    )
    for key in ("logprob_diff_abs", "sampler_kl"):
      values = [m[key] for h in host_values for m in h["mismatch"] if key in m]
      if values:
        out[key] = float(np.mean(values))
    out.update(
        advantage_abs_mean=sum(h["adv_abs_sum"] for h in host_values)
        / max(1, sum(h["trajectories"] for h in host_values)),
        optimizer_steps=float(len(minibatches)),
        rows=float(sum(r["tokens"].shape[0] for r in minibatches) * distributed.process_count()),
        logprob_seconds=logprob_seconds,
        train_seconds=train_seconds,
    )
    return state, out


def pad_to_common_rows(minibatches: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
  """Pads each host's mini-batch k with empty rows (masked out) to the largest row count any host has
  for mini-batch k, so that the hosts' rows form one global array (no-op on one host)."""
  counts = distributed.allgather_json([int(mb["tokens"].shape[0]) for mb in minibatches])
  out = []
  for k, rows in enumerate(minibatches):
    want = max(host[k] for host in counts)
    have = rows["tokens"].shape[0]
    out.append(
        rows
        if want == have
        else {
            name: np.concatenate([v, np.zeros((want - have,) + v.shape[1:], v.dtype)])
            for name, v in rows.items()
        }
    )
  return out


# --------------------------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class RLRun:
  """What `run_rl_loop` needs besides the pool; `publish(params, version)` updates the engine."""

  trainer: RLTrainer
  checkpointer: Checkpointer
  writer: MetricsWriter
  publish: Callable[[Any, int], None]
  total_steps: int
  # Called once the batch is in, before training on it (colocated RL: frees the sampler's memory;
  # `publish` brings it back). None: the sampler keeps its memory.
  before_train: Optional[Callable[[], None]] = None


def run_rl_loop(
    run: RLRun,
    state: TrainState,
    pool: GroupSource,
    start_step: int,
    extra_metrics: Optional[Callable[[int, TrainState], dict]] = None,
) -> tuple[TrainState, dict]:
  """RL steps start_step+1 .. total_steps. Weight version after RL step k is k (the engine starts at the
  restored version, start_step). Checkpoint extra: {"version", "consumed_task_ids" (one list per host,
  in process order)}. `pool` is this host's: it delivers num_groups / process_count groups a step.
  """
  s = run.trainer.s
  local_groups = s.num_groups // distributed.process_count()
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
      groups = pool.get_groups(local_groups, timeout_s=s.get_groups_timeout_s)
      wait_seconds = time.perf_counter() - t0
      if len(groups) != local_groups:
        raise RuntimeError(
            f"rl step {rl_step}: the pool returned {len(groups)} groups, expected {local_groups}"
        )
      version = rl_step - 1
      local = rl_metrics.episode_metrics(groups, ks=(1,))
      local.update(rl_metrics.staleness_metrics(groups, version))
      metrics = rl_metrics.combine_host_metrics(distributed.allgather_json(local))
      if run.before_train is not None:
        run.before_train()
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
        consumed = distributed.allgather_json(list(pool.consumed_task_ids()))
        run.checkpointer.save(
            rl_step, state, {"version": rl_step, "consumed_task_ids": consumed}, force=True
        )
  finally:
    bar.close()
  summary["final_step"] = int(state.step)
  return state, summary
