"""AdamW with a learning-rate schedule and global-norm gradient clipping, built from config.

Config fields (an ml_collections ConfigDict or any mapping; ``default_optimizer_config``
lists them with defaults = the Biomni-R0 RL recipe):

  lr               peak learning rate (float > 0)
  schedule         "constant" | "warmup_constant" | "warmup_cosine"
  warmup_steps     linear warmup from 0 to lr over this many steps (int >= 0)
  total_steps      steps of the whole run; cosine decays from lr at warmup_steps to
                   lr * final_lr_fraction at total_steps (needed by warmup_cosine)
  final_lr_fraction   end of the cosine as a fraction of lr (float in [0, 1])
  b1, b2, eps      Adam moments and epsilon
  weight_decay     decoupled weight decay (AdamW), multiplied by the current lr
  decay_1d_params  False (default): no weight decay on norm scales, biases and other params of
                   rank < 2 (see weight_decay_mask); True decays every param
  grad_clip        max global gradient norm; 0 or None disables clipping

Update, per step k with gradient g:  g <- g * min(1, grad_clip / ||g||_2);
then AdamW: p <- p - lr_k (m_hat / (sqrt(v_hat) + eps) + weight_decay * p * mask).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import ml_collections
import optax

SCHEDULES = ("constant", "warmup_constant", "warmup_cosine")


def default_optimizer_config() -> ml_collections.ConfigDict:
  """Optimizer fields with the RL recipe's values (lr 1e-6 constant, AdamW(0.9, 0.999), wd 0.01, clip 1)."""
  return ml_collections.ConfigDict(
      dict(
          lr=1e-6,
          schedule="constant",
          warmup_steps=0,
          total_steps=0,
          final_lr_fraction=0.0,
          b1=0.9,
          b2=0.999,
          eps=1e-8,
          weight_decay=0.01,
          decay_1d_params=False,
          grad_clip=1.0,
      )
  )


def _field(cfg: Mapping[str, Any], name: str):
  defaults = default_optimizer_config()
  return cfg[name] if name in cfg else defaults[name]


def make_schedule(cfg: Mapping[str, Any]) -> optax.Schedule:
  """Learning rate as a function of the optimizer step count (see module docstring)."""
  lr = float(_field(cfg, "lr"))
  schedule = _field(cfg, "schedule")
  warmup = int(_field(cfg, "warmup_steps"))
  total = int(_field(cfg, "total_steps"))
  if lr <= 0:
    raise ValueError(f"optimizer config field lr: expected > 0, found {lr}")
  if warmup < 0:
    raise ValueError(f"optimizer config field warmup_steps: expected >= 0, found {warmup}")
  if schedule == "constant":
    return optax.constant_schedule(lr)
  if schedule == "warmup_constant":
    if warmup == 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, warmup), optax.constant_schedule(lr)], [warmup]
    )
  if schedule == "warmup_cosine":
    if total <= warmup:
      raise ValueError(
          f"optimizer config field total_steps: warmup_cosine needs total_steps > "
          f"warmup_steps, found total_steps={total}, warmup_steps={warmup}"
      )
    fraction = float(_field(cfg, "final_lr_fraction"))
    if not 0.0 <= fraction <= 1.0:
      raise ValueError(
          f"optimizer config field final_lr_fraction: expected in [0, 1], found {fraction}"
      )
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=lr,
        warmup_steps=warmup,
        decay_steps=total,
        end_value=lr * fraction,
    )
  raise ValueError(
      f"optimizer config field schedule: unknown {schedule!r}; expected one of {SCHEDULES}"
  )


# A param is a norm scale or a bias when its leaf is named like one, or when a module on its path is a
# norm (input_layernorm, post_attention_layernorm, q_norm, k_norm, the final norm): under nn.scan such
# params are [layers, D], so their rank does not tell them from matrices.
_NO_DECAY_LEAF_NAMES = ("scale", "bias")


def _path_names(path) -> list[str]:
  """The key names of a pytree path (dict keys, attribute names, sequence indices) as strings."""
  names = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        names.append(str(getattr(key, attr)))
        break
    else:
      names.append(str(key))
  return names


def is_decayed(path, param) -> bool:
  """True when weight decay applies to the param at ``path`` (a jax pytree key path).

  Decayed: matrices and embeddings (kernels, embedding tables, lm_head). Not decayed: norm scales
  and biases (by name, whatever their rank) and any param of rank < 2.
  """
  names = [n.lower() for n in _path_names(path)]
  if getattr(param, "ndim", 0) < 2:
    return False
  if names and names[-1] in _NO_DECAY_LEAF_NAMES:
    return False
  return not any(n.endswith("norm") for n in names)


def weight_decay_mask(params: Any) -> Any:
  """Pytree of bools like ``params``: True where weight decay applies (see ``is_decayed``).

  Decided by each param's path, so it works on any params or updates tree of the model (the optax
  mask is evaluated on the updates) without the model config; for the model's params it agrees with
  the logical axes (a norm scale has the logical axis "norm").
  """
  return jax.tree_util.tree_map_with_path(is_decayed, params)


def make_optimizer(cfg: Mapping[str, Any]) -> optax.GradientTransformation:
  """Global-norm clipping followed by AdamW on the schedule of ``make_schedule(cfg)``."""
  clip = _field(cfg, "grad_clip")
  if clip is not None and clip < 0:
    raise ValueError(f"optimizer config field grad_clip: expected >= 0 or None, found {clip}")
  mask = None if _field(cfg, "decay_1d_params") else weight_decay_mask
  adamw = optax.adamw(
      learning_rate=make_schedule(cfg),
      b1=float(_field(cfg, "b1")),
      b2=float(_field(cfg, "b2")),
      eps=float(_field(cfg, "eps")),
      weight_decay=float(_field(cfg, "weight_decay")),
      mask=mask,
  )
  if not clip:
    return adamw
  return optax.chain(optax.clip_by_global_norm(float(clip)), adamw)
