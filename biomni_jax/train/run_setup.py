"""What every training run sets up the same way, SFT (train/sft.py) and RL (train/rl_run.py) alike.

A run lives in its workdir:

    tokenizer/      the embedded tokenizer, trained once (unused when `tokenizer.path` names one)
    checkpoints/    orbax: TrainState + the run's JSON extra, keep-last-k (train/checkpoint.py)
    metrics.jsonl, tensorboard/     train/metrics.py
    config.json     the config of the latest start

and starts like this:

    workdir = run_workdir(workdir)
    sharding = run_sharding(config)                                       # config.mesh
    tokenizer, model_cfg, params = model_and_tokenizer(config, workdir, sharding, corpus)
    optimizer, schedule = run_optimizer(config, total_steps)              # config.optimizer
    ckpt = open_checkpointer(workdir, keep, async_save)
    state, start_step, extra = start_or_resume(ckpt, model_cfg, optimizer, seed, sharding, params)
    write_config(config, workdir)

The model is `model.preset` + `model.overrides` with the tokenizer's vocabulary size (unless the
config names its own tokenizer), replaced by a Hugging Face checkpoint's config and weights when
`model.init_from` names one. `optimizer.total_steps` left at 0 becomes the run's number of
optimizer steps (what a cosine schedule decays over).
"""

from __future__ import annotations

import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

from biomni_jax.config_utils import ConfigError, field, mesh_shape, model_config
from biomni_jax.data.tokenizer import default_corpus, load_tokenizer, train_embedded_tokenizer
from biomni_jax.model.config import ModelConfig
from biomni_jax.sharding import ShardingRules, make_mesh
from biomni_jax.train.checkpoint import Checkpointer
from biomni_jax.train.optimizer import make_optimizer, make_schedule
from biomni_jax.train.step import TrainState, abstract_train_state, init_train_state

TOKENIZER_DIR = "tokenizer"
CHECKPOINT_DIR = "checkpoints"
CONFIG_FILE = "config.json"


def run_workdir(workdir: str) -> str:
  """The absolute workdir (orbax needs absolute paths), created if missing."""
  workdir = os.path.abspath(workdir)
  os.makedirs(workdir, exist_ok=True)
  return workdir


def run_sharding(config) -> ShardingRules:
  """The trainer's mesh (`mesh.data`, `fsdp`, `tensor`, `sequence`) over all devices."""
  return ShardingRules(make_mesh(**mesh_shape(config)))


def has_own_tokenizer(config) -> bool:
  return bool(field(config, "tokenizer.path", str, default=""))


def prepare_tokenizer(config, workdir: str, corpus: Callable[[], Sequence[str]] = default_corpus):
  """`tokenizer.path` if set; else the run's embedded tokenizer, trained once into
  workdir/tokenizer on `corpus()` (called only then) with `tokenizer.vocab_size` tokens."""
  path = field(config, "tokenizer.path", str, default="")
  if path:
    if not os.path.isdir(path):
      raise ConfigError(f"config field 'tokenizer.path': {path!r} is not a tokenizer directory")
    return load_tokenizer(path)
  out = os.path.join(workdir, TOKENIZER_DIR)
  if os.path.exists(os.path.join(out, "tokenizer.json")):
    return load_tokenizer(out)
  vocab_size = field(config, "tokenizer.vocab_size", int, minimum=512)
  return train_embedded_tokenizer(list(corpus()), vocab_size, out)


def initial_params(config, model_cfg: ModelConfig, sharding: ShardingRules):
  """(model config, params) of `model.init_from` (a Hugging Face directory, with model.overrides
  applied), or (model_cfg, None) when the run starts from a random init."""
  path = field(config, "model.init_from", str, default="")
  if not path:
    return model_cfg, None
  from biomni_jax.model.hf_io import load_hf_checkpoint

  return load_hf_checkpoint(
      path, sharding=sharding, **dict(field(config, "model.overrides", default={}) or {})
  )


def model_and_tokenizer(
    config,
    workdir: str,
    sharding: ShardingRules,
    corpus: Callable[[], Sequence[str]] = default_corpus,
) -> tuple[Any, ModelConfig, Optional[Any]]:
  """(tokenizer, model config, initial params or None) of a run; see the module docstring."""
  tokenizer = prepare_tokenizer(config, workdir, corpus)
  model_cfg = model_config(config, vocab_size=None if has_own_tokenizer(config) else len(tokenizer))
  if len(tokenizer) > model_cfg.vocab_size:
    raise ConfigError(
        f"config field 'model': vocab_size={model_cfg.vocab_size} is smaller than the "
        f"tokenizer's {len(tokenizer)} tokens"
    )
  model_cfg, params = initial_params(config, model_cfg, sharding)
  return tokenizer, model_cfg, params


def run_optimizer(config, total_steps: int):
  """(optimizer, learning-rate schedule) of config.optimizer; total_steps (the run's optimizer
  steps) fills `optimizer.total_steps` when the config leaves it 0 or unset."""
  opt_cfg = dict(field(config, "optimizer"))
  opt_cfg["total_steps"] = opt_cfg.get("total_steps") or total_steps
  try:
    return make_optimizer(opt_cfg), make_schedule(opt_cfg)
  except ValueError as e:
    raise ConfigError(str(e)) from None


def structure_optimizer(opt_cfg: Mapping[str, Any]):
  """An optimizer with the state layout of `opt_cfg`'s, to restore a run's TrainState when the
  schedule does not matter (total_steps raised to warmup_steps + 1 if the config left it 0)."""
  warmup = int(opt_cfg.get("warmup_steps") or 0)
  total = max(int(opt_cfg.get("total_steps") or 0), warmup + 1)
  return make_optimizer(dict(opt_cfg, total_steps=total))


def open_checkpointer(workdir: str, keep: int, async_save: bool) -> Checkpointer:
  return Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=keep, async_save=async_save
  )


def start_or_resume(
    ckpt: Checkpointer,
    model_cfg: ModelConfig,
    optimizer,
    seed: int,
    sharding: ShardingRules,
    params: Optional[Any] = None,
) -> tuple[TrainState, int, dict]:
  """(state, step, extra) of the newest checkpoint, or a new state at step 0 (from `params` if
  given, else a random init from `seed`) with extra {}."""
  step = ckpt.latest_step()
  if step is None:
    return init_train_state(model_cfg, optimizer, seed, sharding, params=params), 0, {}
  state, extra = ckpt.restore(abstract_train_state(model_cfg, optimizer, sharding))
  return state, step, extra


def write_config(config, workdir: str) -> None:
  """workdir/config.json: the config as JSON (what runs, export and evaluation read back)."""
  with open(os.path.join(workdir, CONFIG_FILE), "w") as f:
    f.write(
        config.to_json(indent=1)
        if hasattr(config, "to_json")
        else json.dumps(dict(config), indent=1)
    )
