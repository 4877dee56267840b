"""The trajectory record and its jsonl storage (one JSON object per line), validated on read and write.

A trajectory is one finished episode:
  messages          list of {"role": "system"|"user"|"assistant", "content": non-empty str} (an
                    assistant reply sampled as ids may have empty content and carry its "token_ids")
  token_ids         int32 [T] the exact ids (sampled + environment), or None for text-only teacher
                    output (then `with_tokens` renders them)
  loss_mask         int32 [T] 0/1, 1 on the policy's own tokens; present iff token_ids is
  sampler_logprobs  float32 [T] optional log-prob under the sampler of each token (0 where not sampled)
  policy_versions   int32 [T] optional weight version that produced each token (-1 where not sampled)
  task              dict: task metadata (task_name, instance_id, ...), JSON values
  reward            float: the scalar reward used for selection / advantages
  rewards           dict[str, float]: reward components (e.g. correctness, format)
  info              dict: anything else JSON-serialisable (termination, teacher, turns ...)
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterable, Iterator, Mapping, Optional

import numpy as np

from biomni_jax.data.chat import ChatRenderer, validate_message

FIELDS = (
    "messages",
    "token_ids",
    "loss_mask",
    "sampler_logprobs",
    "policy_versions",
    "task",
    "reward",
    "rewards",
    "info",
)


class TrajectoryFormatError(ValueError):
  """A malformed trajectory; the message names the location (file:line) and the field."""


@dataclasses.dataclass
class Trajectory:
  messages: list[dict[str, Any]]
  task: dict[str, Any]
  reward: float
  rewards: dict[str, float] = dataclasses.field(default_factory=dict)
  token_ids: Optional[np.ndarray] = None
  loss_mask: Optional[np.ndarray] = None
  sampler_logprobs: Optional[np.ndarray] = None
  policy_versions: Optional[np.ndarray] = None
  info: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def num_tokens(self) -> int:
    return 0 if self.token_ids is None else int(len(self.token_ids))

  def to_json_dict(self) -> dict[str, Any]:
    """A JSON-ready dict (arrays as lists, None kept as null)."""

    def as_list(x):
      return None if x is None else np.asarray(x).tolist()

    messages = [
        {k: as_list(v) if k == "token_ids" else v for k, v in m.items()} for m in self.messages
    ]
    return {
        "messages": messages,
        "token_ids": as_list(self.token_ids),
        "loss_mask": as_list(self.loss_mask),
        "sampler_logprobs": as_list(self.sampler_logprobs),
        "policy_versions": as_list(self.policy_versions),
        "task": self.task,
        "reward": float(self.reward),
        "rewards": dict(self.rewards),
        "info": self.info,
    }

  def to_example(self) -> dict[str, np.ndarray]:
    """Per-token fields for `packing`: tokens, loss_mask (+ sampler_logprobs, policy_versions)."""
    if self.token_ids is None:
      raise ValueError("Trajectory.to_example: token_ids is None; call with_tokens first")
    example = {"tokens": self.token_ids, "loss_mask": self.loss_mask}
    if self.sampler_logprobs is not None:
      example["sampler_logprobs"] = self.sampler_logprobs
    if self.policy_versions is not None:
      example["policy_versions"] = self.policy_versions
    return example


def _fail(where: str, field: str, expected: str, found: Any) -> TrajectoryFormatError:
  text = repr(found)
  if len(text) > 80:
    text = text[:77] + "..."
  return TrajectoryFormatError(f"{where}: field {field!r}: expected {expected}, found {text}")


def _int_array(value: Any, where: str, field: str, length: Optional[int]) -> np.ndarray:
  if not isinstance(value, (list, tuple, np.ndarray)):
    raise _fail(where, field, "a list of ints", value)
  arr = np.asarray(value)
  if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
    raise _fail(where, field, "a flat list of ints", value)
  if length is not None and arr.shape[0] != length:
    raise _fail(where, field, f"length {length} (as token_ids)", f"length {arr.shape[0]}")
  if arr.size and (arr.min() < np.iinfo(np.int32).min or arr.max() > np.iinfo(np.int32).max):
    raise _fail(where, field, "int32 values", f"range [{arr.min()}, {arr.max()}]")
  return arr.astype(np.int32)


def _json_object(value: Any, where: str, field: str) -> dict:
  if not isinstance(value, Mapping):
    raise _fail(where, field, "a JSON object", value)
  return dict(value)


def _finite_float(value: Any, where: str, field: str) -> float:
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
    raise _fail(where, field, "a number", value)
  if not math.isfinite(float(value)):
    raise _fail(where, field, "a finite number", value)
  return float(value)


def trajectory_from_dict(row: Any, where: str = "trajectory") -> Trajectory:
  """Validate a decoded row and build a Trajectory; errors name `where` and the field."""
  if not isinstance(row, Mapping):
    raise TrajectoryFormatError(f"{where}: expected a JSON object, found {type(row).__name__}")
  unknown = sorted(set(row) - set(FIELDS))
  if unknown:
    raise TrajectoryFormatError(f"{where}: unknown field(s) {unknown}; expected fields {FIELDS}")
  for name in ("messages", "task", "reward"):
    if name not in row:
      raise TrajectoryFormatError(f"{where}: field {name!r}: missing")
  messages = row["messages"]
  if not isinstance(messages, list) or not messages:
    raise _fail(where, "messages", "a non-empty list of messages", messages)
  for i, message in enumerate(messages):
    try:
      validate_message(message, f"messages[{i}]")
    except ValueError as e:
      raise TrajectoryFormatError(f"{where}: field {e}") from None
  if not any(m["role"] == "assistant" for m in messages):
    raise _fail(where, "messages", "at least one assistant message", [m["role"] for m in messages])
  token_ids = loss_mask = logprobs = versions = None
  if row.get("token_ids") is not None:
    token_ids = _int_array(row["token_ids"], where, "token_ids", None)
    if token_ids.size == 0 or token_ids.min() < 0:
      raise _fail(where, "token_ids", "a non-empty list of non-negative ids", row["token_ids"])
    if row.get("loss_mask") is None:
      raise TrajectoryFormatError(f"{where}: field 'loss_mask': missing (token_ids is present)")
    loss_mask = _int_array(row["loss_mask"], where, "loss_mask", len(token_ids))
    if not np.isin(loss_mask, (0, 1)).all():
      raise _fail(where, "loss_mask", "only 0/1 values", sorted(set(loss_mask.tolist())))
    if row.get("policy_versions") is not None:
      versions = _int_array(row["policy_versions"], where, "policy_versions", len(token_ids))
    if row.get("sampler_logprobs") is not None:
      raw = row["sampler_logprobs"]
      if not isinstance(raw, (list, tuple, np.ndarray)):
        raise _fail(where, "sampler_logprobs", "a list of numbers", raw)
      try:
        logprobs = np.asarray(raw, dtype=np.float32)
      except (TypeError, ValueError):
        raise _fail(where, "sampler_logprobs", "a list of numbers", raw) from None
      if logprobs.shape != token_ids.shape:
        raise _fail(
            where,
            "sampler_logprobs",
            f"length {len(token_ids)} (as token_ids)",
            f"shape {logprobs.shape}",
        )
      if not (np.isfinite(logprobs).all() and (logprobs <= 0).all()):
        raise _fail(where, "sampler_logprobs", "finite values <= 0", "other values")
  else:
    for name in ("loss_mask", "sampler_logprobs", "policy_versions"):
      if row.get(name) is not None:
        raise TrajectoryFormatError(f"{where}: field {name!r}: present without token_ids")
  rewards = _json_object(row.get("rewards", {}), where, "rewards")
  for key, value in rewards.items():
    rewards[key] = _finite_float(value, where, f"rewards.{key}")
  return Trajectory(
      messages=[dict(m) for m in messages],
      task=_json_object(row["task"], where, "task"),
      reward=_finite_float(row["reward"], where, "reward"),
      rewards=rewards,
      token_ids=token_ids,
      loss_mask=loss_mask,
      sampler_logprobs=logprobs,
      policy_versions=versions,
      info=_json_object(row.get("info", {}), where, "info"),
  )


def validate(trajectory: Trajectory, where: str = "trajectory") -> Trajectory:
  """Re-check an in-memory Trajectory with the same rules as reading; returns a normalised copy."""
  return trajectory_from_dict(trajectory.to_json_dict(), where)


def with_tokens(trajectory: Trajectory, tokenizer) -> Trajectory:
  """The trajectory with token_ids/loss_mask rendered from its messages if it has none."""
  if trajectory.token_ids is not None:
    return trajectory
  ids, mask = ChatRenderer(tokenizer).render(trajectory.messages)
  return dataclasses.replace(trajectory, token_ids=ids, loss_mask=mask)


def _dumps(trajectory: Trajectory, where: str) -> str:
  row = validate(trajectory, where).to_json_dict()
  return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def write_jsonl(path: str | os.PathLike, trajectories: Iterable[Trajectory]) -> int:
  """Write all trajectories (validated) to `path` atomically; returns the count."""
  path = os.fspath(path)
  tmp = f"{path}.tmp.{os.getpid()}"
  count = 0
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      for i, trajectory in enumerate(trajectories):
        f.write(_dumps(trajectory, f"{path}: trajectory {i}") + "\n")
        count += 1
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return count


def append_jsonl(path: str | os.PathLike, trajectory: Trajectory) -> None:
  """Append one validated trajectory as one line and flush it (for resumable producers)."""
  line = _dumps(trajectory, f"{os.fspath(path)}: appended trajectory")
  with open(path, "a", encoding="utf-8") as f:
    f.write(line + "\n")
    f.flush()
    os.fsync(f.fileno())


def jsonl_rows(
    path: str | os.PathLike, error: type[Exception] = ValueError
) -> Iterator[tuple[str, Any]]:
  """Yield (`path:line`, parsed row) for the non-blank lines of a jsonl file; bad JSON raises `error`."""
  path = os.fspath(path)
  with open(path, encoding="utf-8") as f:
    for lineno, line in enumerate(f, start=1):
      if not line.strip():
        continue
      where = f"{path}:{lineno}"
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise error(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from None
      yield where, row


def iter_jsonl(path: str | os.PathLike) -> Iterator[Trajectory]:
  """Yield trajectories from `path`; blank lines are skipped; errors name `path:line`."""
  for where, row in jsonl_rows(path, TrajectoryFormatError):
    yield trajectory_from_dict(row, where)


def read_jsonl(path: str | os.PathLike) -> list[Trajectory]:
  """All trajectories of `path` (see `iter_jsonl`)."""
  return list(iter_jsonl(path))
