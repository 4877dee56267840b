"""Task instances, the task-family interface, and hash-based deterministic splits.

A family turns (split, index) into one TaskInstance deterministically: the instance's random
generator is seeded from sha256(family, seed, split, index), so the same arguments always give the
same prompt and answer, on any machine. Families built on diseases or genes assign each disease or
gene to a split by hashing its id (split_of), so train/val/test never share one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

import numpy as np

SPLITS = ("train", "val", "test")
# Fraction of keys in each split (train, val, test).
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)


@dataclasses.dataclass(frozen=True)
class TaskInstance:
  """One task: the prompt the agent sees and the ground-truth answer its grader compares against.

  inputs: the task's inputs as plain data (str, int, float, lists and dicts of them). When not empty,
    every sandbox session of the episode starts with them bound to the variable `task_inputs`, and
    the prompt says so (see `with_inputs`), so code reads long inputs (sequences, id lists) instead
    of retyping them.
  """

  task_name: str
  instance_id: str
  prompt: str
  answer: str
  split: str
  metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
  inputs: dict[str, Any] = dataclasses.field(default_factory=dict)


INPUTS_VARIABLE = "task_inputs"


def inputs_note(inputs: dict[str, Any]) -> str:
  """The line appended to a prompt whose task has inputs: the variable's name and its keys."""
  keys = ", ".join(repr(k) for k in inputs)
  return f"\nThe inputs are also in the Python variable `{INPUTS_VARIABLE}` (a dict with keys {keys}).\n"


def with_inputs(instance: TaskInstance, inputs: dict[str, Any]) -> TaskInstance:
  """The instance with `inputs` attached and `inputs_note` appended to its prompt (the prompt is kept as is)."""
  return dataclasses.replace(
      instance, prompt=instance.prompt + inputs_note(inputs), inputs=dict(inputs)
  )


def sandbox_setup_code(instance: TaskInstance) -> str:
  """Python that binds the instance's inputs in a fresh sandbox session ("" when it has none).

  The inputs are embedded as a JSON string literal and decoded in the sandbox, so no input text is
  ever evaluated as code.
  """
  if not instance.inputs:
    return ""
  payload = json.dumps(instance.inputs)
  return f"import json as _json\n{INPUTS_VARIABLE} = _json.loads({payload!r})\ndel _json"


def _unit_interval(text: str) -> float:
  digest = hashlib.sha256(text.encode()).digest()
  return int.from_bytes(digest[:8], "big") / 2**64


def split_of(key: str, salt: str = "biomni_jax.splits.v1") -> str:
  """The split of a disease/gene/other key: a pure function of the key (80/10/10)."""
  u = _unit_interval(f"{salt}:{key}")
  edge = 0.0
  for split, fraction in zip(SPLITS, SPLIT_FRACTIONS):
    edge += fraction
    if u < edge:
      return split
  return SPLITS[-1]


def rng_for(*parts: Any) -> np.random.Generator:
  """A numpy Generator seeded from the sha256 of the parts (stable across runs and platforms)."""
  digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def check_split(split: str, where: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"{where}: expected split in {SPLITS}, found {split!r}")


class TaskFamily:
  """Base class: subclasses set `name` and `tools` and implement `make_instance(split, index)`.

  grade(prediction, answer): the official score in [0, 1] (Eval1's grader where the family mirrors
  an Eval1 task). reward(prediction, answer): the training correctness reward in [0, 1]; equal to
  grade unless a family says otherwise.
  """

  name: str = ""
  tools: tuple[str, ...] = ()

  def __init__(self, seed: int = 0):
    self.seed = int(seed)

  def make_instance(self, split: str, index: int) -> TaskInstance:
    raise NotImplementedError

  def instance(self, split: str, index: int) -> TaskInstance:
    check_split(split, f"{self.name}.instance")
    if index < 0:
      raise ValueError(f"{self.name}.instance: expected index >= 0, found {index}")
    return self.make_instance(split, int(index))

  def instances(self, split: str, count: int, start: int = 0) -> list[TaskInstance]:
    return [self.instance(split, i) for i in range(start, start + count)]

  def rng(self, split: str, index: int, attempt: int = 0) -> np.random.Generator:
    return rng_for(self.name, self.seed, split, index, attempt)

  def instance_id(self, split: str, index: int) -> str:
    return f"{self.name}/{self.seed}/{split}/{index}"

  def grade(self, prediction: Any, answer: str) -> float:
    raise NotImplementedError

  def reward(self, prediction: Any, answer: str) -> float:
    return self.grade(prediction, answer)
