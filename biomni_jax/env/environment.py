"""A task family as an environment: its tools, its system prompt, a sandbox session, an episode's score.

Rejection sampling (data/), RL rollouts (rollout/) and evaluation (eval/) all play episodes in these
environments:

    env = family_environment(family)                 # the family's tools + COMMON_TOOLS, the prompt
    session = open_session(sandbox_pool, env, instance)   # tools imported, task_inputs bound
    rewards, reward, grade = score_episode(family, instance, episode)

with

    correctness = family.reward(solution, answer)    (0 without a solution)
    format      = protocol.format_reward(assistant messages)
    reward      = correctness + format                (docs/recipe.md section 1.3; range 0..2)
    grade       = family.grade(solution, answer)     (the official grader; 0 without a solution)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from biomni_jax.env import protocol
from biomni_jax.env.episode import Episode
from biomni_jax.env.tasks import TaskFamily, TaskInstance, sandbox_setup_code
from biomni_jax.env.tools import import_strings, tool_specs

# Tools every embedded environment offers next to its family's own (name lookups and a sequence
# summary: what the scripted experts use for their first look at the inputs).
COMMON_TOOLS = ("get_hpo_names", "ensembl_to_gene_symbol", "gc_content")


@dataclasses.dataclass(frozen=True)
class FamilyEnvironment:
  """What a rollout of one family needs: tool import strings for the sandbox and the system prompt."""

  family: TaskFamily
  tools: tuple[str, ...]
  system: str


def family_environment(
    family: TaskFamily,
    extra_tools: Sequence[str] = COMMON_TOOLS,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
) -> FamilyEnvironment:
  """The family's tools plus extra_tools (deduplicated, in order) and the system prompt listing them."""
  names = list(dict.fromkeys([*family.tools, *extra_tools]))
  specs = tool_specs(names)
  return FamilyEnvironment(
      family, tuple(import_strings(specs)), protocol.system_prompt(tools=specs, cfg=cfg)
  )


def open_session(pool: Any, env: FamilyEnvironment, instance: TaskInstance):
  """A session of `pool` with the family's tools and, when the task has inputs, `task_inputs` bound."""
  setup_code = sandbox_setup_code(instance)
  if setup_code:
    return pool.open(tools=list(env.tools), setup_code=setup_code)
  return pool.open(tools=list(env.tools))


def score_episode(
    family: TaskFamily,
    instance: TaskInstance,
    episode: Episode,
    cfg: protocol.ProtocolConfig = protocol.DEFAULT_CONFIG,
) -> tuple[dict[str, float], float, float]:
  """(rewards {"correctness", "format"}, reward = their sum, official grade) of a finished episode."""
  solved = episode.solution is not None
  correctness = float(family.reward(episode.solution, instance.answer)) if solved else 0.0
  grade = float(family.grade(episode.solution, instance.answer)) if solved else 0.0
  fmt = float(protocol.format_reward(episode.assistant_messages, cfg))
  return {"correctness": correctness, "format": fmt}, correctness + fmt, grade
