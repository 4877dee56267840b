"""Training metrics to TensorBoard event files (tensorboardX, no TensorFlow) and to a JSONL file.

One record per logged step: {"step": k, "name": value, ...} as one line of `<workdir>/metrics.jsonl`, and
each scalar under its name in `<workdir>/tensorboard/`. A run that resumes from step k first drops the JSONL
records of steps > k, written by the interrupted run after its last checkpoint, so the file reads as one
uninterrupted run. (TensorBoard shows the newest value of a step, so its files need no cleanup.)
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping, Optional

import numpy as np

JSONL_NAME = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_jsonl_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a metrics JSONL file, in file order; a torn last line (crash mid-write) is skipped."""
  records = []
  with open(path, encoding="utf-8") as f:
    lines = f.read().split("\n")
  for lineno, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if lineno == len(lines) or (lineno == len(lines) - 1 and not lines[-1]):
        continue  # the interrupted final write
      raise ValueError(f"{path}:{lineno}: not a JSON record: {line[:80]!r}") from None
  return records


def _scalar(name: str, value: Any) -> float:
  arr = np.asarray(value)
  if arr.size != 1:
    raise ValueError(f"metrics: expected a scalar for {name!r}, found shape {arr.shape}")
  return float(arr.reshape(()))


class MetricsWriter:
  """Writes scalar metrics per step to JSONL and (optionally) TensorBoard. Call `close` at the end.

  `enabled=False` (every process but 0 of a multi-host run) makes every call a no-op that writes nothing.
  """

  def __init__(
      self,
      workdir: str | os.PathLike,
      *,
      tensorboard: bool = True,
      resume_step: Optional[int] = None,
      enabled: bool = True,
  ):
    self.enabled = enabled
    self._tb = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    self.jsonl_path = os.path.join(os.fspath(workdir), JSONL_NAME)
    if os.path.exists(self.jsonl_path):
      self._truncate_after(resume_step or 0)
    self._jsonl = open(self.jsonl_path, "a", encoding="utf-8")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: only runs that log to TensorBoard need it

      self._tb = SummaryWriter(
          logdir=os.path.join(os.fspath(workdir), TENSORBOARD_DIR), flush_secs=10
      )

  def _truncate_after(self, step: int) -> None:
    kept = [r for r in read_jsonl_metrics(self.jsonl_path) if int(r.get("step", 0)) <= step]
    tmp = self.jsonl_path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in kept)
    os.replace(tmp, self.jsonl_path)

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Log scalars (python numbers, numpy or jax scalars) for `step`; non-finite values are kept as null."""
    if not self.enabled:
      return
    values = {name: _scalar(name, v) for name, v in metrics.items()}
    record = {
        "step": int(step),
        **{k: (v if math.isfinite(v) else None) for k, v in values.items()},
    }
    self._jsonl.write(json.dumps(record, sort_keys=True) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for name, value in values.items():
        self._tb.add_scalar(name, value, global_step=int(step))

  def flush(self) -> None:
    if not self.enabled:
      return
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if not self.enabled:
      return
    if not self._jsonl.closed:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> "MetricsWriter":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
