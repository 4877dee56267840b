"""Groups of trajectories -> padded or packed training rows with per-token advantages and targets.

    groups (rollout.types.Group: G trajectories of one task each)
      --advantages (advantages.py, per group: Dr.GRPO A_i = R_i - mean_g R by default)-->  A [N]
      --mini-batch split (a seeded permutation of trajectories into k equal parts)-->
      --per trajectory: tokens, loss_mask, sampler log-probs, policy versions, A on every token-->
      --pack (or one trajectory per row; packing.py)--> rows [R, L]
      --shift onto the predicting position (packing.add_next_token_targets / shift_left_within_segments)-->

Row fields (numpy, [R, L]; R a multiple of `rows_multiple_of`, L = `row_length`):
  tokens, segment_ids, positions           int32  packing.py's layout (one segment per trajectory)
  targets                                  int32  tokens[t+1] within the segment
  target_mask                              int32  loss_mask[t+1] within the segment: 1 where position t
                                                  predicts a token the policy sampled
  sampler_logprobs                         float32  the engine's log-prob of targets[t] (0 off the mask)
  policy_versions                          int32  the version that sampled targets[t] (-1 off the mask)
  advantages                               float32  A of the trajectory on its mask, 0 elsewhere

Every trajectory counts in its group's mean reward; a trajectory flagged `overlong_and_malformed`
(longer than the overlong threshold with format reward 0, docs/recipe.md section 1.2) gets an all-zero
loss mask, so it adds neither loss nor a sequence to the seq-mean denominators.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from biomni_jax.data.packing import (
    TRAIN_ROW_FIELDS,
    add_next_token_targets,
    pack_examples,
    shift_left_within_segments,
    unpacked_examples,
)
from biomni_jax.train import advantages as advantages_lib

RL_ROW_FIELDS = TRAIN_ROW_FIELDS + ("sampler_logprobs", "policy_versions", "advantages")


def flatten_groups(groups: Sequence[Any]) -> tuple[list[Any], np.ndarray]:
  """(trajectories in group order, group index int32 [N]): group k's trajectories get index k."""
  trajectories, group_index = [], []
  for k, group in enumerate(groups):
    if not group.trajectories:
      raise ValueError(
          f"rl_batch: group {k} ({group.task_name}/{group.instance_id}) has no trajectories"
      )
    trajectories.extend(group.trajectories)
    group_index.extend([k] * len(group.trajectories))
  return trajectories, np.asarray(group_index, np.int32)


def group_advantages(
    groups: Sequence[Any], estimator: str = "drgrpo", eps: float = 1e-6
) -> np.ndarray:
  """float32 [N] advantages of the flattened trajectories (see advantages.py for the estimators).

  Rewards are each trajectory's `reward` (= correctness + format); ragged groups are fine.
  """
  trajectories, group_index = flatten_groups(groups)
  rewards = np.asarray([t.reward for t in trajectories], np.float32)
  adv = advantages_lib.compute_advantages(
      estimator, rewards, group_index, num_groups=len(groups), eps=eps
  )
  return np.asarray(adv, np.float32)


def trajectory_example(trajectory: Any, advantage: float) -> dict[str, np.ndarray]:
  """One trajectory as a packing example: per-token arrays [T] with the advantage on its loss mask."""
  tokens = np.asarray(trajectory.token_ids, np.int32)
  mask = np.asarray(trajectory.loss_mask, np.int32)
  if getattr(trajectory, "overlong_and_malformed", False):
    mask = np.zeros_like(mask)
  versions = np.asarray(trajectory.policy_versions, np.int32)
  return {
      "tokens": tokens,
      "loss_mask": mask,
      "sampler_logprobs": np.asarray(trajectory.sampler_logprobs, np.float32) * mask,
      "policy_versions": np.where(mask > 0, versions, -1).astype(np.int32),
      "advantages": (np.float32(advantage) * mask).astype(np.float32),
  }


def bucket_rows(num_rows: int, multiple: int) -> int:
  """The smallest multiple * 2^j >= num_rows: few distinct batch shapes, so few recompilations."""
  rows = multiple
  while rows < num_rows:
    rows *= 2
  return rows


def build_rows(
    examples: Sequence[dict[str, np.ndarray]],
    row_length: int,
    *,
    pack: bool = True,
    rows_multiple_of: int = 1,
    bucket: bool = True,
    overlong: str = "truncate",
) -> dict[str, np.ndarray]:
  """Lay out examples (from `trajectory_example`) and shift per-token fields onto predicting positions.

  Returns RL_ROW_FIELDS, each [R, row_length]. With `bucket`, R is rounded up to rows_multiple_of * 2^j.
  """
  layout = pack_examples if pack else unpacked_examples
  packed = layout(examples, row_length, overlong=overlong, rows_multiple_of=rows_multiple_of)
  rows = packed.rows
  num_rows = rows["tokens"].shape[0]
  if bucket:
    target_rows = bucket_rows(num_rows, rows_multiple_of)
    if target_rows > num_rows:
      rows = {
          k: np.concatenate([v, np.zeros((target_rows - num_rows, row_length), v.dtype)])
          for k, v in rows.items()
      }
  rows = add_next_token_targets(rows)
  out = {name: rows[name].astype(np.int32) for name in TRAIN_ROW_FIELDS}
  # The per-token fields move onto the predicting position, like the targets; off the target mask they
  # hold `fill`.
  on = out["target_mask"] > 0
  for name, fill, dtype in (
      ("sampler_logprobs", 0.0, np.float32),
      ("policy_versions", -1, np.int32),
      ("advantages", 0.0, np.float32),
  ):
    shifted = shift_left_within_segments(rows[name], rows["segment_ids"])[0]
    out[name] = np.where(on, shifted, fill).astype(dtype)
  return out


def minibatch_indices(num_trajectories: int, num_minibatches: int, seed: int) -> list[np.ndarray]:
  """A seeded permutation of range(N) cut into `num_minibatches` parts whose sizes differ by at most one
  (groups may come back ragged when the pool excludes failed episodes)."""
  if num_minibatches < 1 or num_trajectories < num_minibatches:
    raise ValueError(
        f"rl_batch: {num_trajectories} trajectories cannot fill {num_minibatches} mini-batches "
        f"(expected 1 <= rl.num_minibatches <= trajectories per rollout batch)"
    )
  order = np.random.default_rng(seed).permutation(num_trajectories)
  return [np.sort(part) for part in np.array_split(order, num_minibatches)]


def build_minibatches(
    groups: Sequence[Any],
    *,
    num_minibatches: int,
    row_length: int,
    estimator: str = "drgrpo",
    pack: bool = True,
    rows_multiple_of: int = 1,
    seed: int = 0,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
  """The k mini-batches of one rollout batch as row dicts, and the advantages [N] of all trajectories.

  Advantages are computed over whole groups first, so splitting a group across mini-batches does not
  change any trajectory's baseline.
  """
  trajectories, _ = flatten_groups(groups)
  adv = group_advantages(groups, estimator)
  examples = [trajectory_example(t, a) for t, a in zip(trajectories, adv)]
  minibatches = []
  for idx in minibatch_indices(len(examples), num_minibatches, seed):
    minibatches.append(
        build_rows(
            [examples[i] for i in idx], row_length, pack=pack, rows_multiple_of=rows_multiple_of
        )
    )
  return minibatches, adv
