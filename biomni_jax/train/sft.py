"""Supervised fine-tuning on trajectories: render, pack, batch, train, log, checkpoint, resume exactly.

    trajectories (jsonl file | tfds array_record dir) --render (chat.py: ids + loss mask)--> examples
      --pack (or one per row)--> rows [N, L] + next-token targets --BatchIterator(seed, epoch, position)-->
      batches [B, L] --train step (step.py, cross-entropy summed / global masked-token count)--> state

The loss of one batch is  -sum_{b,t} m_bt log p(y_bt | x_b,<=t) / sum_{b,t} m_bt  with m = target_mask (1 on
assistant content and its <|im_end|>, as the renderer marks it, shifted onto the predicting position).

A run lives in `workdir`: `tokenizer/` (the embedded tokenizer, trained once from the default corpus plus the
training conversations), `checkpoints/` (orbax: TrainState + the iterator state and a data fingerprint in the
JSON extra; keep-last-k), `metrics.jsonl`, `tensorboard/`, `config.json`. Started again on the same workdir,
it restores the newest complete checkpoint and continues with the very batch that would have come next, so
an interrupted run (even by SIGKILL) ends with the same losses and parameters as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from biomni_jax import model as M
from biomni_jax.config_utils import ConfigError, field
from biomni_jax.data.chat import ChatRenderer
from biomni_jax.data.documents import document_examples, read_documents
from biomni_jax.data.packing import (
    OVERLONG_POLICIES,
    TRAIN_ROW_FIELDS,
    add_next_token_targets,
    pack_examples,
    unpacked_examples,
)
from biomni_jax.data.tokenizer import default_corpus
from biomni_jax.data.trajectory import Trajectory, read_jsonl
from biomni_jax.model.config import ModelConfig
from biomni_jax.sharding import ShardingRules
from biomni_jax.train import aggregation as aggregation_lib
from biomni_jax.train import losses, run_setup
from biomni_jax.train.data_iter import BatchIterator
from biomni_jax.train.metrics import MetricsWriter
from biomni_jax.train.step import BATCH_AXES, make_train_step, row_logprobs

# The run layout is run_setup's; the pipeline and the base-model trainer read an SFT run's
# tokenizer directory by this name.
TOKENIZER_DIR = run_setup.TOKENIZER_DIR

ROW_FIELDS = TRAIN_ROW_FIELDS


# ----------------------------------------------------------------------------------------------- the loss


def make_sft_loss(
    model_config: ModelConfig,
    sharding: Optional[ShardingRules] = None,
    aggregation: str = "token-mean",
    token_sum_norm: Optional[float] = None,
):
  """loss_fn(params, rows) -> (loss_sum, denominator, {"target_tokens", "tokens"}) for the train step.
  token_sum_norm: the run's constant normaliser of "seq-mean-token-sum-norm" (its row length).

  rows: tokens, targets, target_mask, segment_ids, positions, each int32 [B, L] (packing.py's layout).
  target_tokens = sum target_mask (the trained tokens); tokens = non-padding tokens.
  """

  def loss_fn(params, rows):
    logp = row_logprobs(model_config, params, rows, sharding=sharding)
    mask = rows["target_mask"].astype(jnp.float32)
    loss_sum, denom = losses.sft_cross_entropy(
        logp,
        mask,
        aggregation=aggregation,
        segment_ids=rows["segment_ids"],
        token_sum_norm=token_sum_norm,
    )
    metrics = {
        "target_tokens": mask.sum(),
        "tokens": (rows["segment_ids"] > 0).sum().astype(jnp.float32),
    }
    return loss_sum, denom, metrics

  return loss_fn


def make_eval_step(model_config: ModelConfig, sharding: ShardingRules, loss_fn):
  """Jitted (params, rows) -> (loss_sum, denominator): `loss_fn` (make_sft_loss) on a held-out batch."""
  param_sh = M.param_shardings(model_config, sharding)

  def evaluate(params, rows):
    loss_sum, denom, _ = loss_fn(params, rows)
    return loss_sum, denom

  return jax.jit(
      evaluate,
      in_shardings=(param_sh, sharding.sharding(BATCH_AXES)),
      out_shardings=sharding.sharding(()),
  )


# ----------------------------------------------------------------------------------------------- the data


def load_trajectories(
    path: str, split: str = "train", where: str = "data.train_path"
) -> list[Trajectory]:
  """Trajectories from a jsonl file, or from a tfds array_record dataset directory (split `split`)."""
  if not path:
    raise ConfigError(
        f"config field {where!r}: empty; expected a trajectories .jsonl file or a tfds "
        f"dataset directory (rejection sampling writes them)"
    )
  if os.path.isfile(path):
    trajectories = read_jsonl(path)
  elif os.path.isdir(path):
    from biomni_jax.data.trajectory_tfds import load_trajectory_source, record_to_trajectory

    source = load_trajectory_source(path, split)
    trajectories = [
        record_to_trajectory(source[i], f"{path}[{split}][{i}]") for i in range(len(source))
    ]
  else:
    raise ConfigError(f"config field {where!r}: {path!r} does not exist")
  if not trajectories:
    raise ConfigError(f"config field {where!r}: {path!r} holds no trajectories")
  return trajectories


def load_examples(path: str, split: str, data_format: str, where: str) -> list:
  """Trajectories (data.format "trajectories") or document texts ("documents": jsonl of {"text"})."""
  if data_format == "trajectories":
    return load_trajectories(path, split, where)
  if not os.path.isfile(path):
    raise ConfigError(f"config field {where!r}: {path!r} is not a documents .jsonl file")
  try:
    return read_documents(path)
  except ValueError as e:
    raise ConfigError(f"config field {where!r}: {e}") from None


def tokenizer_corpus(data: Sequence[Trajectory | str]) -> list[str]:
  """The embedded tokenizer's training texts: the default corpus plus every document or message."""
  return default_corpus() + [
      text
      for d in data
      for text in ([d] if isinstance(d, str) else [m["content"] for m in d.messages])
  ]


def build_rows(
    trajectories: Sequence[Trajectory | str],
    tokenizer,
    *,
    seq_len: int,
    pack: bool,
    rows_multiple_of: int = 1,
    overlong: str = "truncate",
) -> dict[str, np.ndarray]:
  """Render (token ids kept verbatim when a trajectory has them), pack or pad, add next-token targets.

  Strings are documents (data/documents.py: every token is learned); trajectories learn their
  assistant turns. Returns ROW_FIELDS, each int32 [N, seq_len], N a multiple of `rows_multiple_of`.
  """
  renderer = ChatRenderer(tokenizer)
  examples = []
  for t in trajectories:
    if isinstance(t, str):
      examples += document_examples([t], tokenizer)
    elif t.token_ids is not None:
      examples.append({"tokens": t.token_ids, "loss_mask": t.loss_mask})
    else:
      ids, mask = renderer.render(t.messages)
      examples.append({"tokens": ids, "loss_mask": mask})
  layout = pack_examples if pack else unpacked_examples
  packed = layout(examples, seq_len, overlong=overlong, rows_multiple_of=rows_multiple_of)
  rows = add_next_token_targets(packed.rows)
  return {name: np.asarray(rows[name], np.int32) for name in ROW_FIELDS}


def rows_fingerprint(rows: dict[str, np.ndarray]) -> str:
  """sha256 over the rows' bytes: a resumed run checks it trains on the same data."""
  digest = hashlib.sha256()
  for name in ROW_FIELDS:
    digest.update(name.encode())
    digest.update(np.ascontiguousarray(rows[name]).tobytes())
  return digest.hexdigest()[:16]


def place_batch(batch: dict[str, np.ndarray], sharding: ShardingRules) -> dict[str, jax.Array]:
  """This process's rows of a global batch -> global arrays sharded by rows over ('batch', 'length')."""
  target = sharding.sharding(BATCH_AXES)
  return {k: jax.make_array_from_process_local_data(target, v) for k, v in batch.items()}


def evaluate_loss(
    eval_step, params, rows: dict[str, np.ndarray], batch_size: int, sharding: ShardingRules
) -> float:
  """Held-out token-mean loss over all rows (sum of sums / sum of denominators)."""
  total, denom = 0.0, 0.0
  n = rows["tokens"].shape[0]
  for start in range(0, n - n % batch_size or n, batch_size):
    batch = {k: v[start : start + batch_size] for k, v in rows.items()}
    s, d = eval_step(params, place_batch(batch, sharding))
    total, denom = total + float(s), denom + float(d)
  return total / max(denom, 1.0)


# ----------------------------------------------------------------------------------------------- the loop


PAUSE_AFTER_CHECKPOINT_ENV = "BIOMNI_JAX_PAUSE_AFTER_CHECKPOINT_S"


@dataclasses.dataclass(frozen=True)
class SFTSettings:
  """The `sft` config section. batch_size rows of seq_len tokens per optimizer step, in
  micro_batches accumulated parts; num_steps (or, when 0, num_epochs over the rows) steps."""

  batch_size: int
  micro_batches: int
  seq_len: int
  pack: bool
  overlong: str
  num_epochs: float
  num_steps: int
  aggregation: str
  log_every: int
  eval_every: int
  save_every: int
  keep_checkpoints: int
  async_checkpoint: bool
  shuffle: bool
  tensorboard: bool
  progress_bar: bool
  # Fault injection for the resume tests, not a config field: the environment variable
  # PAUSE_AFTER_CHECKPOINT_ENV makes a run sleep this long after each committed checkpoint.
  pause_after_checkpoint_s: float = 0.0

  @classmethod
  def from_config(cls, config) -> "SFTSettings":
    s = cls(
        batch_size=field(config, "sft.batch_size", int, minimum=1),
        micro_batches=field(config, "sft.micro_batches", int, minimum=1, default=1),
        seq_len=field(config, "sft.seq_len", int, minimum=2),
        pack=field(config, "sft.pack", bool, default=True),
        overlong=field(config, "sft.overlong", str, default="truncate", choices=OVERLONG_POLICIES),
        num_epochs=field(config, "sft.num_epochs", (int, float), minimum=0, default=1),
        num_steps=field(config, "sft.num_steps", int, minimum=0, default=0),
        aggregation=field(
            config,
            "sft.loss_aggregation",
            str,
            default="token-mean",
            choices=tuple(aggregation_lib.AGGREGATIONS),
        ),
        log_every=field(config, "sft.log_every", int, minimum=1, default=1),
        eval_every=field(config, "sft.eval_every", int, minimum=0, default=0),
        save_every=field(config, "sft.save_every", int, minimum=0, default=0),
        keep_checkpoints=field(config, "sft.keep_checkpoints", int, minimum=1, default=3),
        async_checkpoint=field(config, "sft.async_checkpoint", bool, default=True),
        shuffle=field(config, "sft.shuffle", bool, default=True),
        tensorboard=field(config, "sft.tensorboard", bool, default=True),
        progress_bar=field(config, "sft.progress_bar", bool, default=True),
        pause_after_checkpoint_s=float(os.environ.get(PAUSE_AFTER_CHECKPOINT_ENV, 0.0)),
    )
    if s.batch_size % s.micro_batches:
      raise ConfigError(
          f"config field 'sft.micro_batches': {s.micro_batches} does not divide "
          f"sft.batch_size={s.batch_size}"
      )
    return s

  def layout_rows(self, data: Sequence[Trajectory | str], tokenizer) -> dict[str, np.ndarray]:
    """build_rows of `data` as this section lays rows out: seq_len tokens, packed or one example per
    row, the overlong policy, a multiple of batch_size rows (training and held-out rows alike)."""
    return build_rows(
        data,
        tokenizer,
        seq_len=self.seq_len,
        pack=self.pack,
        rows_multiple_of=self.batch_size,
        overlong=self.overlong,
    )


def train_sft(config, workdir: str) -> dict[str, Any]:
  """Run (or resume) SFT as `config` says, in `workdir`. Returns a summary (steps, losses, throughput)."""
  workdir = run_setup.run_workdir(workdir)
  s = SFTSettings.from_config(config)
  seed = field(config, "seed", int, default=0)
  data_format = field(
      config, "data.format", str, default="trajectories", choices=("trajectories", "documents")
  )
  train = load_examples(
      field(config, "data.train_path", str, default=""),
      field(config, "data.train_split", str, default="train"),
      data_format,
      "data.train_path",
  )
  sharding = run_setup.run_sharding(config)
  tokenizer, model_cfg, init_params = run_setup.model_and_tokenizer(
      config, workdir, sharding, corpus=lambda: tokenizer_corpus(train)
  )

  rows = s.layout_rows(train, tokenizer)
  iterator = BatchIterator(
      rows,
      s.batch_size,
      seed=seed,
      shuffle=s.shuffle,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
  )
  total_steps = s.num_steps or max(1, int(round(s.num_epochs * iterator.batches_per_epoch)))
  optimizer, schedule = run_setup.run_optimizer(config, total_steps)
  loss_fn = make_sft_loss(model_cfg, sharding, s.aggregation, token_sum_norm=s.seq_len)
  step_fn = make_train_step(
      model_cfg,
      loss_fn,
      optimizer,
      sharding=sharding,
      micro_batches=s.micro_batches,
      learning_rate_fn=schedule,
  )

  eval_path = field(config, "data.eval_path", str, default="")
  eval_rows = eval_step = None
  if eval_path:
    held_out = load_examples(
        eval_path,
        field(config, "data.eval_split", str, default="val"),
        data_format,
        "data.eval_path",
    )
    eval_rows = s.layout_rows(held_out, tokenizer)
    eval_step = make_eval_step(model_cfg, sharding, loss_fn)

  fingerprint = rows_fingerprint(rows)
  ckpt = run_setup.open_checkpointer(workdir, s.keep_checkpoints, s.async_checkpoint)
  state, start_step, extra = run_setup.start_or_resume(
      ckpt, model_cfg, optimizer, seed, sharding, init_params
  )
  if start_step:
    if extra.get("data_fingerprint") != fingerprint:
      raise ValueError(
          f"{ckpt.directory}/{start_step}: saved by a run on other data (fingerprint "
          f"{extra.get('data_fingerprint')}, now {fingerprint}); use a new workdir"
      )
    iterator.set_state(extra["data_iterator"])
  run_setup.write_config(config, workdir)

  writer = MetricsWriter(workdir, tensorboard=s.tensorboard, resume_step=start_step)
  summary: dict[str, Any] = {
      "start_step": start_step,
      "total_steps": total_steps,
      "rows": len(rows["tokens"]),
      "num_params": M.num_params(state.params),
      "losses": {},
  }
  bar = tqdm(
      total=total_steps, initial=start_step, disable=not s.progress_bar, desc="sft", unit="step"
  )
  target_tokens, train_time = 0.0, 0.0
  try:
    for step in range(start_step + 1, total_steps + 1):
      batch = place_batch(next(iterator), sharding)
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      dt = time.perf_counter() - t0
      if step > start_step + 1:  # the first step of a process includes compilation
        target_tokens, train_time = target_tokens + metrics["target_tokens"], train_time + dt
      metrics["masked_tokens_per_s"] = metrics["target_tokens"] / dt
      metrics["epoch"] = float(iterator.epoch)
      summary["losses"][step] = metrics["loss"]
      if (
          eval_step is not None
          and s.eval_every
          and (step % s.eval_every == 0 or step == total_steps)
      ):
        metrics["eval_loss"] = evaluate_loss(
            eval_step, state.params, eval_rows, s.batch_size, sharding
        )
        summary["eval_loss"] = metrics["eval_loss"]
      if step % s.log_every == 0 or step == total_steps or "eval_loss" in metrics:
        writer.write(step, metrics)
      bar.update(1)
      bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
      if (s.save_every and step % s.save_every == 0) or step == total_steps:
        ckpt.save(
            step,
            state,
            {"data_iterator": iterator.get_state(), "data_fingerprint": fingerprint},
            force=True,
        )
        if s.pause_after_checkpoint_s:
          ckpt.wait_until_finished()
          writer.flush()
          time.sleep(s.pause_after_checkpoint_s)
  finally:
    bar.close()
    writer.close()
    ckpt.close()
  summary["final_step"] = int(state.step)
  summary["masked_tokens_per_s"] = target_tokens / train_time if train_time else None
  summary["state"] = state
  summary["model_config"] = model_cfg
  summary["tokenizer"] = tokenizer
  return summary
