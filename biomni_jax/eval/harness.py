"""The evaluation harness: play n episodes per instance with an agent, grade them officially, summarize.

    instances, envs = tasks.load_eval1(path) | tasks.load_embedded(...)
    records = run_text_agent(oracle_factory(), instances, envs, n_samples, sandbox_pool)   # text-level agents
    records = run_model(model_agent, instances, envs, n_samples, ModelEvalSettings(...))   # engine + rollout pool
    summary = summarize(records, ks=(1, n))

An episode's score is the task's official grade (Eval1's grader for Eval1 tasks, the family's grade for
embedded ones) of the answer that ended it, 0 without one. The paper's table reports, per task, the mean score
over its episodes; the average is the unweighted mean over tasks. pass@k per instance is the unbiased
1 - C(n - c, k) / C(n, k) over its n episodes with c scoring 1, averaged over the task's instances.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import json
import os
from typing import Any, Callable, Mapping, Optional, Sequence

import numpy as np

from biomni_jax.env import protocol
from biomni_jax.env.environment import FamilyEnvironment, open_session
from biomni_jax.env.episode import run_episode
from biomni_jax.env.tasks import TaskInstance
from biomni_jax.metrics import pass_at_k, succeeded


@dataclasses.dataclass
class EpisodeRecord:
  """One graded episode. score: official grade in [0, 1]; format: protocol.format_reward; messages: the text."""

  task_name: str
  instance_id: str
  sample_index: int
  score: float
  format: float
  turns: int
  termination: str
  solution: Optional[str]
  answer: str
  messages: list[dict]

  def to_json(self) -> dict:
    return dataclasses.asdict(self)


def official_score(
    env: FamilyEnvironment, instance: TaskInstance, solution: Optional[str]
) -> float:
  """The family's official grade of `solution` (0 without one, or when the grader cannot parse it)."""
  if solution is None:
    return 0.0
  try:
    return float(env.family.grade(solution, instance.answer))
  except Exception:  # noqa: BLE001 - like the official graders: an unparsable prediction scores 0
    return 0.0


def _check(
    instances: Sequence[TaskInstance], environments: Mapping[str, FamilyEnvironment], n_samples: int
):
  if n_samples < 1:
    raise ValueError(f"harness: expected n_samples >= 1, found {n_samples}")
  missing = sorted({x.task_name for x in instances} - set(environments))
  if missing:
    raise ValueError(f"harness: no environment for task(s) {missing}; expected one per task name")


# ------------------------------------------------------------------------------------------- text-level agents


def run_text_agent(
    agent_factory: Callable[[TaskInstance, int], Callable[[list[dict]], str]],
    instances: Sequence[TaskInstance],
    environments: Mapping[str, FamilyEnvironment],
    n_samples: int,
    sandbox: Any,
    *,
    max_turns: int = 8,
    timeout_s: float = 60.0,
    workers: int = 2,
    use_system_prompt: bool = True,
    progress: bool = True,
) -> list[EpisodeRecord]:
  """n_samples episodes of agent_factory(instance, k) per instance, each in a fresh sandbox session.

  sandbox: a SandboxPool (`.open(tools=[...])`). Returns records in (instance, sample) order.
  """
  from tqdm import tqdm

  _check(instances, environments, n_samples)

  def play(instance: TaskInstance, k: int) -> EpisodeRecord:
    env = environments[instance.task_name]
    session = open_session(sandbox, env, instance)
    try:
      episode = run_episode(
          agent_factory(instance, k),
          instance.prompt,
          session,
          max_turns=max_turns,
          system=env.system if use_system_prompt else None,
          timeout_s=timeout_s,
      )
    finally:
      session.close()
    return EpisodeRecord(
        instance.task_name,
        instance.instance_id,
        k,
        official_score(env, instance, episode.solution),
        episode.format_reward(),
        episode.turns,
        episode.termination,
        episode.solution,
        instance.answer,
        episode.messages,
    )

  jobs = [(x, k) for x in instances for k in range(n_samples)]
  with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="eval") as pool:
    futures = [pool.submit(play, x, k) for x, k in jobs]
    for _ in tqdm(
        concurrent.futures.as_completed(futures),
        total=len(futures),
        desc="eval",
        unit="episode",
        disable=not progress,
    ):
      pass
    return [f.result() for f in futures]


# ------------------------------------------------------------------------------------------- the model


@dataclasses.dataclass(frozen=True)
class ModelEvalSettings:
  """Sampling and episode limits for model evaluation (the rollout pool's knobs; see rollout/config.py)."""

  temperature: float = 0.6
  top_p: float = 0.95
  max_turns: int = 6
  max_context_tokens: int = 1536
  max_new_tokens_per_turn: int = 256
  use_system_prompt: bool = False
  tool_timeout_s: float = 30.0
  max_concurrent_episodes: int = 16
  num_slots: int = 16
  max_len: int = 2048
  max_prefill_chunk: int = 256
  sandbox_workers: int = 2
  seed: int = 1000
  # The sampler mesh of each host (sampling/layout.py): data replicas x tensor-parallel devices.
  mesh_data: int = 1
  mesh_tensor: int = 1

  @classmethod
  def from_mapping(cls, values: Mapping[str, Any]) -> "ModelEvalSettings":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(
          f"ModelEvalSettings: unknown field(s) {unknown}; expected some of {sorted(known)}"
      )
    return cls(**dict(values))


def run_model(
    agent: Any,
    instances: Sequence[TaskInstance],
    environments: Mapping[str, FamilyEnvironment],
    n_samples: int,
    settings: ModelEvalSettings = ModelEvalSettings(),
    *,
    sandbox: Any = None,
) -> list[EpisodeRecord]:
  """n_samples episodes per instance by the model (agents.ModelAgent) through the engine and rollout pool.

  All instances run as one batch of groups (one group of n_samples per instance) at a fixed weight version,
  on the sampler mesh settings.mesh_data x mesh_tensor of this host's devices. On several hosts each host
  plays instances process_index, process_index + P, ... and every host returns all records (a collective:
  every host calls this with the same instances).
  sandbox: a SandboxPool to use (default: a new one of settings.sandbox_workers, closed at the end).
  Records come back in instance order; an instance whose episodes all failed (engine errors) is missing.
  """
  from biomni_jax.env.sandbox import SandboxPool
  from biomni_jax.rollout.config import RolloutConfig
  from biomni_jax.rollout.pool import RolloutPool
  from biomni_jax import distributed
  from biomni_jax.sampling import SamplerLayout, make_engine

  _check(instances, environments, n_samples)
  everything = list(instances)
  instances = everything[distributed.process_index() :: distributed.process_count()]
  if not instances:  # more hosts than instances: this host only joins the gather
    return _gather_records([], everything)

  cfg = RolloutConfig(
      group_size=n_samples,
      groups_per_batch=len(instances),
      max_turns=settings.max_turns,
      max_context_tokens=settings.max_context_tokens,
      max_new_tokens_per_turn=settings.max_new_tokens_per_turn,
      temperature=settings.temperature,
      top_p=settings.top_p,
      max_staleness=0,
      max_concurrent_episodes=settings.max_concurrent_episodes,
      tool_timeout_s=settings.tool_timeout_s,
      overlong_threshold=settings.max_len,
      use_system_prompt=settings.use_system_prompt,
      seed=settings.seed,
  )
  layout = SamplerLayout.create(agent.model_config, settings.mesh_data, settings.mesh_tensor)
  engine = make_engine(
      agent.model_config,
      layout,
      agent.params,
      num_slots=settings.num_slots,
      max_len=settings.max_len,
      detokenize=agent.tokenizer.decode,
      max_prefill_chunk=settings.max_prefill_chunk,
  )
  own_sandbox = sandbox is None
  sandbox = SandboxPool(max_workers=settings.sandbox_workers) if own_sandbox else sandbox
  try:
    with RolloutPool(
        engine, sandbox, agent.tokenizer, iter(instances), cfg, environments=dict(environments)
    ) as pool:
      groups = pool.get_groups(len(instances))
  finally:
    engine.shutdown()
    if own_sandbox:
      sandbox.close()
  by_id = {x.instance_id: x for x in instances}
  order = {x.instance_id: i for i, x in enumerate(instances)}
  records = []
  for group in sorted(groups, key=lambda g: order[g.instance_id]):
    instance = by_id[group.instance_id]
    env = environments[instance.task_name]
    for k, t in enumerate(group.trajectories):
      messages = [{"role": m["role"], "content": m["content"]} for m in t.messages]
      solution = None
      if t.termination == "solution":
        solution = (
            protocol.extract_solution(messages[-1]["content"])
            if messages[-1]["role"] == "assistant"
            else None
        )
      records.append(
          EpisodeRecord(
              instance.task_name,
              instance.instance_id,
              k,
              official_score(env, instance, solution),
              float(t.format),
              int(t.num_turns),
              t.termination,
              solution,
              instance.answer,
              messages,
          )
      )
  return _gather_records(records, everything)


def _gather_records(records: list[EpisodeRecord], instances: Sequence[TaskInstance]) -> list:
  """Every host's records (each host played its share of `instances`), in instance order, on every host;
  one host: `records` as they are."""
  from biomni_jax import distributed

  if distributed.process_count() == 1:
    return records
  rows = [
      row for host in distributed.allgather_json([r.to_json() for r in records]) for row in host
  ]
  order = {x.instance_id: i for i, x in enumerate(instances)}
  rows.sort(key=lambda r: (order[r["instance_id"]], r["sample_index"]))
  return [EpisodeRecord(**row) for row in rows]


# ------------------------------------------------------------------------------------------- summaries


def summarize(
    records: Sequence[EpisodeRecord], ks: Sequence[int] = (1,), task_order: Sequence[str] = ()
) -> dict[str, Any]:
  """{"tasks": {task: {"mean", "format", "episodes", "instances", "pass@k"...}}, "average", "episodes"}.

  mean: mean score over the task's episodes; average: unweighted mean of the task means (the paper's).
  pass@k is reported for each k <= the smallest number of samples any instance of the task has.
  Tasks appear in task_order first, then in order of first appearance.
  """
  by_task: dict[str, list[EpisodeRecord]] = collections.defaultdict(list)
  for r in records:
    by_task[r.task_name].append(r)
  names = [t for t in dict.fromkeys(task_order) if t in by_task]
  names += [t for t in by_task if t not in names]
  tasks = {}
  for name in names:
    rows = by_task[name]
    per_instance: dict[str, list[float]] = collections.defaultdict(list)
    for r in rows:
      per_instance[r.instance_id].append(r.score)
    entry = {
        "mean": float(np.mean([r.score for r in rows])),
        "format": float(np.mean([r.format for r in rows])),
        "episodes": len(rows),
        "instances": len(per_instance),
    }
    n_min = min(len(v) for v in per_instance.values())
    for k in sorted(set(ks)):
      if 1 <= k <= n_min:
        entry[f"pass@{k}"] = float(
            np.mean(
                [pass_at_k(len(v), sum(succeeded(s) for s in v), k) for v in per_instance.values()]
            )
        )
    tasks[name] = entry
  average = float(np.mean([e["mean"] for e in tasks.values()])) if tasks else float("nan")
  return {"tasks": tasks, "average": average, "episodes": len(records)}


def write_records(records: Sequence[EpisodeRecord], path: str) -> None:
  """Episodes as jsonl (one record a line), written to a temporary file and renamed into place."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
  os.replace(tmp, path)


def read_records(path: str) -> list[EpisodeRecord]:
  with open(path, encoding="utf-8") as f:
    return [EpisodeRecord(**json.loads(line)) for line in f if line.strip()]
