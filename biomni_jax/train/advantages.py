"""Group-relative advantage estimators (GRPO family), chosen by config string.

Each trajectory i has a scalar reward R_i and belongs to a group g(i) (the G
trajectories sampled for one prompt). With n_g the size of group g,
mu_g = mean of R over the group and sigma_g its standard deviation
(unbiased, ddof = 1, as the SkyRL/Biomni-R0 code computes it):

  grpo    A_i = (R_i - mu_g) / (sigma_g + eps)
  drgrpo  A_i =  R_i - mu_g                     (Dr.GRPO: no std division; the recipe's)
  rloo    A_i =  R_i - (sum_{j in g, j != i} R_j) / (n_g - 1)
              = n_g / (n_g - 1) * (R_i - mu_g)

A group of one has no baseline to compare against: its advantage is 0 in
every estimator (and sigma_g is taken as 0 there).

Flat groups. A group whose rewards are all equal carries no signal, and its
advantage is exactly 0 in every estimator. Plain float32 arithmetic does not
give that for rewards such as 0.7 (not representable): the group mean lands an
ulp away from R, sigma_g ~ 1e-8 instead of 0, and grpo's division by
sigma_g + eps blows the rounding up into an advantage of one sign for the whole
group (+-0.06 for eight rewards of 0.7). Two measures prevent it:
  * centring on a member: with p_g = max of the group (one of its rewards),
    d_i = R_i - p_g is exact for equal rewards (0), and
    R_i - mu_g = d_i - mean_g(d), sigma_g = std_g(d), so a flat group gives 0s;
  * rewards that differ only by float32 rounding,
    max_g R - min_g R <= FLAT_RTOL * max_g |R|, count as flat too (advantage 0),
    so an ulp of noise cannot become a +-1 grpo advantage.

Inputs: rewards either [num_groups, G] (regular groups) or [N] together with
group_ids [N] int32 in [0, num_groups) (ragged groups, e.g. after failed
episodes). Output: float32 advantages of the rewards' shape. ``broadcast_to_tokens``
turns per-trajectory advantages [B] into per-token advantages [B, T].
"""

from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp

from biomni_jax.registry import Registry

Array = jax.Array
AdvantageFn = Callable[..., Array]
# name (config field `advantage_estimator`) -> (rewards_n, group_ids_n, num_groups, *, eps) -> [N]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")


# Rewards closer than this (relative to the group's largest |R|) are the same reward up to float32
# rounding: about 8 ulps.
FLAT_RTOL = 1e-6


def _group_stats(
    rewards_n: Array, group_ids_n: Array, num_groups: int
) -> tuple[Array, Array, Array, Array]:
  """Per-trajectory (R_i - mu_g, sigma_g (ddof 1), n_g, group has signal), each [N].

  Centred on p_g = max of the group, so equal rewards give 0 exactly (see the module docstring).
  "Has signal" is False for groups of one and for flat groups.
  """
  ones = jnp.ones_like(rewards_n)
  size_g = jax.ops.segment_sum(ones, group_ids_n, num_segments=num_groups)
  max_g = jax.ops.segment_max(rewards_n, group_ids_n, num_segments=num_groups)
  min_g = jax.ops.segment_min(rewards_n, group_ids_n, num_segments=num_groups)
  pivot_n = max_g[group_ids_n]
  offset_n = rewards_n - pivot_n
  mean_offset_g = jax.ops.segment_sum(offset_n, group_ids_n, num_segments=num_groups) / jnp.maximum(
      size_g, 1.0
  )
  centred_n = offset_n - mean_offset_g[group_ids_n]
  sq_dev_g = jax.ops.segment_sum(centred_n**2, group_ids_n, num_segments=num_groups)
  var_g = jnp.where(size_g > 1, sq_dev_g / jnp.maximum(size_g - 1.0, 1.0), 0.0)
  scale_g = jnp.maximum(jnp.abs(max_g), jnp.abs(min_g))
  flat_g = (max_g - min_g) <= FLAT_RTOL * scale_g
  signal_g = (size_g > 1) & ~flat_g
  return centred_n, jnp.sqrt(var_g)[group_ids_n], size_g[group_ids_n], signal_g[group_ids_n]


@ADVANTAGES.register("grpo")
def grpo(rewards_n: Array, group_ids_n: Array, num_groups: int, *, eps: float = 1e-6) -> Array:
  """(R_i - mu_g) / (sigma_g + eps); 0 for groups of one and flat groups."""
  centred, std, _, signal = _group_stats(rewards_n, group_ids_n, num_groups)
  return jnp.where(signal, centred / (std + eps), 0.0)


@ADVANTAGES.register("drgrpo")
def drgrpo(rewards_n: Array, group_ids_n: Array, num_groups: int, *, eps: float = 1e-6) -> Array:
  """R_i - mu_g; 0 for groups of one and flat groups. eps is unused."""
  del eps
  centred, _, _, signal = _group_stats(rewards_n, group_ids_n, num_groups)
  return jnp.where(signal, centred, 0.0)


@ADVANTAGES.register("rloo")
def rloo(rewards_n: Array, group_ids_n: Array, num_groups: int, *, eps: float = 1e-6) -> Array:
  """R_i minus the mean of the other members of its group; 0 for groups of one and flat groups."""
  del eps
  centred, _, size, signal = _group_stats(rewards_n, group_ids_n, num_groups)
  scale = size / jnp.maximum(size - 1.0, 1.0)
  return jnp.where(signal, scale * centred, 0.0)


def compute_advantages(
    name: str,
    rewards: Array,
    group_ids: Optional[Array] = None,
    num_groups: Optional[int] = None,
    *,
    eps: float = 1e-6,
) -> Array:
  """Advantages for ``rewards`` by estimator ``name``.

  Args:
    rewards: [num_groups, G] (group = row) or [N] with ``group_ids``.
    group_ids: [N] int group index per trajectory, required when rewards is 1-D.
    num_groups: static number of groups for 1-D input; defaults to max(group_ids)+1
      (which needs concrete ids, i.e. outside jit).
    eps: added to the std in ``grpo``.
  Returns:
    float32 advantages with the shape of ``rewards``.
  """
  fn = ADVANTAGES[name]
  rewards = jnp.asarray(rewards, jnp.float32)
  if rewards.ndim == 2:
    if group_ids is not None:
      raise ValueError(
          "compute_advantages: rewards [num_groups, G] already define the groups; "
          "found group_ids as well"
      )
    n_groups, group_size = rewards.shape
    ids = jnp.repeat(jnp.arange(n_groups), group_size)
    return fn(rewards.reshape(-1), ids, n_groups, eps=eps).reshape(rewards.shape)
  if rewards.ndim != 1:
    raise ValueError(
        f"compute_advantages: expected rewards [N] or [num_groups, G], "
        f"found shape {rewards.shape}"
    )
  if group_ids is None:
    raise ValueError("compute_advantages: rewards [N] need group_ids [N]; found none")
  group_ids = jnp.asarray(group_ids, jnp.int32)
  if group_ids.shape != rewards.shape:
    raise ValueError(
        f"compute_advantages: group_ids shape {group_ids.shape} differs from "
        f"rewards shape {rewards.shape}"
    )
  if num_groups is None:
    num_groups = int(jax.device_get(group_ids.max())) + 1
  return fn(rewards, group_ids, int(num_groups), eps=eps)


def broadcast_to_tokens(advantages_b: Array, loss_mask_bt: Array) -> Array:
  """Per-token advantages [B, T]: A_b on loss tokens, 0 elsewhere."""
  if (
      advantages_b.ndim != 1
      or loss_mask_bt.ndim != 2
      or advantages_b.shape[0] != loss_mask_bt.shape[0]
  ):
    raise ValueError(
        f"broadcast_to_tokens: expected advantages [B] and loss_mask [B, T], "
        f"found {advantages_b.shape} and {loss_mask_bt.shape}"
    )
  return advantages_b[:, None].astype(jnp.float32) * loss_mask_bt.astype(jnp.float32)
