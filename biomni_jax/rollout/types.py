"""The records the rollout pool hands to the RL trainer: one TokenTrajectory per episode, one Group per task.

(The SFT data's record, text messages with optional token ids, is data.trajectory.Trajectory.)

Token-in, token-out: `token_ids` are exactly the ids the engine was fed and sampled, in order, never
re-tokenized. Per-token arrays (all length T):
  token_ids         int32   system+user prompt, then every sampled reply and every observation
  loss_mask         int32   1 exactly on tokens the policy sampled (including a sampled <|im_end|>)
  sampler_logprobs  float32 the engine's log-prob of each sampled token, 0 elsewhere
  policy_versions   int32   weight version that sampled each token, -1 where loss_mask == 0

reward = correctness + format (each in [0, 1]). `overlong_and_malformed` marks a trajectory longer
than the overlong threshold whose format reward is 0: the trainer drops it from the loss but keeps
it in its group's mean reward.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

TERMINATIONS = ("solution", "max_turns", "parse_errors", "context_limit", "error")


@dataclasses.dataclass
class TokenTrajectory:
  task_name: str
  instance_id: str
  group_id: int
  token_ids: np.ndarray  # int32 [T]
  loss_mask: np.ndarray  # int32 [T]
  sampler_logprobs: np.ndarray  # float32 [T]
  policy_versions: np.ndarray  # int32 [T]
  prompt_len: int
  correctness: float
  format: float
  reward: float
  num_turns: int
  termination: str
  tool_seconds: float
  generate_seconds: float
  messages: list[dict[str, Any]]
  overlong_and_malformed: bool = False
  error: str | None = None  # the exception text when termination == "error"

  def __post_init__(self):
    T = len(self.token_ids)
    for name in ("loss_mask", "sampler_logprobs", "policy_versions"):
      n = len(getattr(self, name))
      if n != T:
        raise ValueError(
            f"TokenTrajectory {self.task_name}/{self.instance_id}: expected {name} of "
            f"length {T} (as token_ids), found {n}"
        )

  @property
  def num_tokens(self) -> int:
    return int(len(self.token_ids))

  @property
  def num_sampled_tokens(self) -> int:
    return int(np.sum(self.loss_mask))

  @property
  def min_version(self) -> int:
    """Oldest weight version that sampled a token of this trajectory (-1 if none was sampled)."""
    sampled = self.policy_versions[self.loss_mask == 1]
    return int(sampled.min()) if sampled.size else -1

  @property
  def max_version(self) -> int:
    """Newest weight version that sampled a token of this trajectory (-1 if none was sampled)."""
    sampled = self.policy_versions[self.loss_mask == 1]
    return int(sampled.max()) if sampled.size else -1


@dataclasses.dataclass
class Group:
  """The G trajectories of one task instance (the unit of group-relative advantages)."""

  task_name: str
  instance_id: str
  group_id: int
  trajectories: list[TokenTrajectory]

  @property
  def min_version(self) -> int:
    versions = [t.min_version for t in self.trajectories if t.min_version >= 0]
    return min(versions) if versions else -1

  @property
  def max_version(self) -> int:
    return max((t.max_version for t in self.trajectories), default=-1)

  @property
  def rewards(self) -> np.ndarray:
    """float32 [G]"""
    return np.asarray([t.reward for t in self.trajectories], np.float32)
