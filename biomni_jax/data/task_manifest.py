"""Resumable storage of rejection sampling: the kept trajectories and the per-task manifest.

Kept trajectories go to `out_path` (jsonl, data/trajectory.py); every finished task, kept or not,
gets one line in the manifest `out_path + ".tasks.jsonl"`:

    {"task_name", "instance_id", "split", "kept", "best_reward", "candidate_rewards"}

Both files are only appended to; a torn last line (a kill during a write) is cut off when read.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger(__name__)

MANIFEST_SUFFIX = ".tasks.jsonl"


def manifest_path(out_path: str | os.PathLike) -> str:
  return os.fspath(out_path) + MANIFEST_SUFFIX


def _read_rows(path: str) -> list[dict]:
  """JSON rows of a jsonl file written by appending; a torn last line (a kill mid-write) is cut off."""
  if not os.path.exists(path):
    return []
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  rows = []
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      if lineno == len(lines):  # the unterminated last line
        log.warning("%s: cutting off a torn last line (%d bytes)", path, len(line))
        with open(path, "r+b") as f:
          f.truncate(len(data) - len(line))
        break
      raise ValueError(
          f"{path}:{lineno}: invalid JSON ({e.msg}); expected one record per line"
      ) from None
  return rows


def _task_key(task: dict, where: str) -> tuple[str, str]:
  try:
    return (task["task_name"], task["instance_id"])
  except (KeyError, TypeError):
    raise ValueError(
        f"{where}: expected a task with 'task_name' and 'instance_id', found {task!r:.200}"
    ) from None


def load_finished(out_path: str | os.PathLike) -> dict[tuple[str, str], dict]:
  """Finished tasks: (task_name, instance_id) -> manifest row. Tasks kept in `out_path` but missing
  from the manifest (a kill between the two writes) get their manifest row written now."""
  out_path = os.fspath(out_path)
  manifest = manifest_path(out_path)
  finished = {_task_key(row, manifest): row for row in _read_rows(manifest)}
  for row in _read_rows(out_path):
    key = _task_key(row.get("task"), out_path)
    if key not in finished:
      finished[key] = manifest_row(
          key, row["task"]["split"], row["info"]["candidate_rewards"], row["reward"], True
      )
      append_row(manifest, finished[key])
  return finished


def manifest_row(key, split, candidate_rewards, best_reward, kept) -> dict:
  """The manifest line of a finished task: its key, split, whether it was kept, the rewards."""
  return {
      "task_name": key[0],
      "instance_id": key[1],
      "split": split,
      "kept": bool(kept),
      "best_reward": best_reward,
      "candidate_rewards": list(candidate_rewards),
  }


def append_row(path: str, row: dict) -> None:
  """One JSON line appended and flushed to disk (a kill loses at most the line being written)."""
  with open(path, "a", encoding="utf-8") as f:
    f.write(json.dumps(row, separators=(",", ":")) + "\n")
    f.flush()
    os.fsync(f.fileno())
