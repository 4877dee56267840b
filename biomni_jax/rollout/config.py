"""RolloutConfig: every knob of the rollout pool (sampling, episode limits, staleness, failures)."""

from __future__ import annotations

import dataclasses

ERROR_POLICIES = ("exclude", "zero_reward")


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """Settings of the rollout pool; defaults are the 8B recipe's (docs/recipe.md section 1.2).

  group_size: G, trajectories per task instance (one Group).
  groups_per_batch: B, groups the trainer takes per optimizer phase (admission paces in units of B).
  max_turns: assistant replies per episode.
  max_context_tokens: per-call cap on the prompt fed to the engine; a longer context ends the
    episode ("context_limit") before the next reply.
  max_new_tokens_per_turn: sampled tokens per reply.
  temperature, top_p, top_k: sampling (top_k <= 0 disables it).
  max_staleness: S; 0 = batch-synchronous on-policy, > 0 fully asynchronous (see admission.py).
  max_concurrent_episodes: episodes running at once (each holds an engine session and, once it
    executes code, a sandbox session).
  tool_timeout_s: wall time per code execution (the sandbox kills the run after it).
  tool_watchdog_s: extra wait beyond tool_timeout_s before the pool gives up on the sandbox itself
    (closes the session and answers with an error observation).
  overlong_threshold: trajectories longer than this (tokens) whose format reward is 0 are flagged
    `overlong_and_malformed` (dropped from the loss, kept in the group mean).
  answer_tag: "solution" (Biomni) or "answer".
  max_observation_chars: observations are cut to this many characters.
  use_system_prompt: put the protocol's system prompt (listing the family's tools) first.
  extra_tools: tools offered next to each family's own.
  error_policy: what becomes of an episode that failed (engine error): "exclude" drops it from its
    group; "zero_reward" keeps it with reward 0.
  max_failed_groups_in_a_row: that many consecutive groups in which every episode failed make
    get_groups raise (an engine that always fails is reported, not waited on forever).
  seed: base of every request's sampling seed (hashed with instance, sample and turn).
  """

  group_size: int = 8
  groups_per_batch: int = 32
  max_turns: int = 64
  max_context_tokens: int = 61_440
  max_new_tokens_per_turn: int = 4_096
  temperature: float = 0.6
  top_p: float = 0.95
  top_k: int = 0
  max_staleness: int = 0
  max_concurrent_episodes: int = 64
  tool_timeout_s: float = 1_800.0
  tool_watchdog_s: float = 30.0
  overlong_threshold: int = 32_768
  answer_tag: str = "solution"
  max_observation_chars: int = 10_000
  use_system_prompt: bool = True
  extra_tools: tuple[str, ...] = ("get_hpo_names", "ensembl_to_gene_symbol", "gc_content")
  error_policy: str = "exclude"
  max_failed_groups_in_a_row: int = 8
  seed: int = 0

  def __post_init__(self):
    positive = (
        "group_size",
        "groups_per_batch",
        "max_turns",
        "max_context_tokens",
        "max_new_tokens_per_turn",
        "max_concurrent_episodes",
        "overlong_threshold",
        "max_observation_chars",
        "max_failed_groups_in_a_row",
    )
    for name in positive:
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"RolloutConfig.{name}: expected an int >= 1, found {value!r}")
    if not isinstance(self.max_staleness, int) or self.max_staleness < 0:
      raise ValueError(
          f"RolloutConfig.max_staleness: expected an int >= 0, found {self.max_staleness!r}"
      )
    if not self.tool_timeout_s > 0 or self.tool_watchdog_s < 0:
      raise ValueError(
          f"RolloutConfig: expected tool_timeout_s > 0 and tool_watchdog_s >= 0, found "
          f"{self.tool_timeout_s!r}, {self.tool_watchdog_s!r}"
      )
    if self.error_policy not in ERROR_POLICIES:
      raise ValueError(
          f"RolloutConfig.error_policy: expected one of {ERROR_POLICIES}, "
          f"found {self.error_policy!r}"
      )
    object.__setattr__(self, "extra_tools", tuple(self.extra_tools))
