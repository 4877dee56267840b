"""What the harness evaluates: Biomni-Eval1 rows or embedded task instances, as TaskInstances with environments.

Eval1 rows become TaskInstances of an unregistered `Eval1Family` per task name, whose grade (and reward) is the
official grader (env/eval1.py); their environment offers the common lookup tools. Embedded families come from
the task registry. Either way the harness gets
    instances:    list[TaskInstance], in a stable order (file order / family order)
    environments: task_name -> FamilyEnvironment (tools for the sandbox, the system prompt)
so the same runners (text agents, the model through the rollout pool) evaluate both.

An Eval1 path may be the word "eval1_sample": the 50 real rows shipped in biomni_jax/env/data/. Error
messages name the inputs as the caller knows them (InputNames: command-line flags by default, config
fields for `python -m biomni_jax.main --config.mode=eval`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

from biomni_jax.env import eval1
from biomni_jax.env.environment import COMMON_TOOLS, FamilyEnvironment, family_environment
from biomni_jax.env.tasks import SPLITS, TaskFamily, TaskInstance, family_names, get_family

EMBEDDED = "embedded"


class EvalInputError(ValueError):
  """A bad harness input (missing file, unknown task, no instances); the message says what to do."""


@dataclasses.dataclass(frozen=True)
class InputNames:
  """How error messages name the Eval1 file, the task list and the per-family count."""

  data: str = "--data"
  tasks: str = "--tasks"
  per_family: str = "--per_family"
  split: str = "--split"


FLAG_NAMES = InputNames()


def eval1_path(path: str) -> str:
  """`path`, or the packaged 50-row sample's path for the word eval1.SAMPLE_NAME ("eval1_sample")."""
  return str(eval1.sample_path()) if path == eval1.SAMPLE_NAME else path


class Eval1Family(TaskFamily):
  """One Eval1 task name as a task family: grade = reward = the official grader. Instances come from a file."""

  def __init__(self, task_name: str):
    super().__init__(seed=0)
    if task_name not in eval1.TASK_NAMES:
      raise EvalInputError(
          f"unknown Eval1 task {task_name!r}; expected one of {list(eval1.TASK_NAMES)}"
      )
    self.name = task_name
    self.tools = ()

  def grade(self, prediction: Any, answer: str) -> float:
    return eval1.grade(self.name, prediction, answer)


def eval1_instance(row: eval1.Eval1Row) -> TaskInstance:
  """An Eval1 row as a TaskInstance; instance_id 'eval1/<task_name>/<task_instance_id>' (the grading key)."""
  return TaskInstance(
      task_name=row.task_name,
      instance_id=f"eval1/{row.task_name}/{row.task_instance_id}",
      prompt=row.prompt,
      answer=row.answer,
      split=row.split,
      metadata={"eval1_instance_id": row.instance_id, "task_instance_id": row.task_instance_id},
  )


def _select(names: Sequence[str], known: Sequence[str], where: str) -> list[str]:
  unknown = [n for n in names if n not in known]
  if unknown:
    raise EvalInputError(
        f"{where}: unknown task name(s) {unknown}; expected some of {list(known)} "
        f"(comma-separated names; empty for all)"
    )
  return list(names)


def load_eval1(
    path: str,
    tasks: Sequence[str] = (),
    limit_per_task: int = 0,
    tools: Sequence[str] = COMMON_TOOLS,
    names: InputNames = FLAG_NAMES,
) -> tuple[list[TaskInstance], dict[str, FamilyEnvironment]]:
  """Instances of an Eval1 file (.parquet or .jsonl), optionally only `tasks`, at most limit_per_task each.

  path: the file, or "eval1_sample" (the packaged 50 rows). tools: what each task's sandbox session
  offers (the offline lookups by default; Eval1's own tools and data lakes are not available offline).
  """
  path = eval1_path(path)
  if not os.path.isfile(path):
    raise EvalInputError(
        f"{names.data}: {path!r} is not a file; expected the Eval1 parquet "
        f"(biomni_eval1_dataset.parquet from the Hugging Face dataset biomni/Eval1), a jsonl "
        f"with its columns, or {eval1.SAMPLE_NAME!r} for the 50 rows in biomni_jax/env/data/"
    )
  try:
    rows = eval1.load(path)
  except (eval1.Eval1FormatError, ValueError) as e:
    raise EvalInputError(f"{names.data}: {path!r} is not an Eval1 file: {e}") from None
  wanted = set(_select(tasks, eval1.TASK_NAMES, names.tasks)) if tasks else None
  counts: dict[str, int] = {}
  instances = []
  for row in rows:
    if wanted is not None and row.task_name not in wanted:
      continue
    counts[row.task_name] = counts.get(row.task_name, 0) + 1
    if limit_per_task and counts[row.task_name] > limit_per_task:
      continue
    instances.append(eval1_instance(row))
  if not instances:
    raise EvalInputError(
        f"{names.data}: {path!r} holds no rows of the requested tasks {sorted(wanted or [])}"
    )
  envs = {
      name: family_environment(Eval1Family(name), tools)
      for name in {x.task_name for x in instances}
  }
  return instances, envs


def load_embedded(
    tasks: Sequence[str] = (),
    split: str = "val",
    per_family: int = 8,
    seed: int = 0,
    names: InputNames = FLAG_NAMES,
) -> tuple[list[TaskInstance], dict[str, FamilyEnvironment]]:
  """`per_family` instances of each embedded family (default: all registered) from `split`."""
  families = _select(tasks, family_names(), names.tasks) if tasks else family_names()
  if per_family < 1:
    raise EvalInputError(f"{names.per_family}: expected >= 1, found {per_family}")
  if split not in SPLITS:
    raise EvalInputError(f"{names.split}: expected one of {list(SPLITS)}, found {split!r}")
  instances, envs = [], {}
  for name in families:
    family = get_family(name, seed=seed)
    envs[name] = family_environment(family, COMMON_TOOLS)
    instances += family.instances(split, per_family)
  return instances, envs
