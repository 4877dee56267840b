"""Trajectories as a tfds array_record dataset, read through data sources (no TensorFlow needed).

Writing: `build_trajectory_dataset(data_dir, {"train": "train.jsonl", ...})` validates every jsonl
row (errors name file:line and field) and writes `data_dir/trajectories/1.0.0/*.array_record`.
Reading: `load_trajectory_source(data_dir, "train")` returns a random-access source of dict
records; `record_to_trajectory` turns one back into a `Trajectory`. grain can read the source
directly for worker processes and resumable iteration.

Record fields: the per-token arrays as 1-D tensors (length 0 where the trajectory has none: a
text-only teacher trajectory, no sampler log-probs ...), the reward as float32, and the structured
parts (messages, task, rewards, info) as JSON text.
"""

from __future__ import annotations

import json
import os
from typing import Any, Mapping

import numpy as np
import tensorflow_datasets as tfds

from biomni_jax.data.trajectory import Trajectory, iter_jsonl, trajectory_from_dict

DATASET_NAME = "trajectories"
JSON_FIELDS = ("messages", "task", "rewards", "info")


def _features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict(
      {
          "token_ids": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "loss_mask": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "sampler_logprobs": tfds.features.Tensor(shape=(None,), dtype=np.float32),
          "policy_versions": tfds.features.Tensor(shape=(None,), dtype=np.int32),
          "reward": tfds.features.Scalar(dtype=np.float32),
          **{f"{name}_json": tfds.features.Text() for name in JSON_FIELDS},
      }
  )


def trajectory_to_record(trajectory: Trajectory) -> dict[str, Any]:
  """A Trajectory as a record of the dataset's features (absent arrays become length 0)."""

  def arr(x, dtype):
    return np.zeros((0,), dtype) if x is None else np.asarray(x, dtype)

  row = trajectory.to_json_dict()
  record = {
      "token_ids": arr(trajectory.token_ids, np.int32),
      "loss_mask": arr(trajectory.loss_mask, np.int32),
      "sampler_logprobs": arr(trajectory.sampler_logprobs, np.float32),
      "policy_versions": arr(trajectory.policy_versions, np.int32),
      "reward": np.float32(trajectory.reward),
  }
  for name in JSON_FIELDS:
    record[f"{name}_json"] = json.dumps(row[name], ensure_ascii=False, sort_keys=True)
  return record


def record_to_trajectory(record: Mapping[str, Any], where: str = "record") -> Trajectory:
  """Inverse of `trajectory_to_record` (validated like a jsonl row)."""
  row: dict[str, Any] = {}
  for name in JSON_FIELDS:
    text = record[f"{name}_json"]
    row[name] = json.loads(text.decode("utf-8") if isinstance(text, bytes) else text)
  has_tokens = len(record["token_ids"]) > 0
  for name in ("token_ids", "loss_mask", "sampler_logprobs", "policy_versions"):
    values = np.asarray(record[name])
    row[name] = values.tolist() if has_tokens and values.size else None
  row["reward"] = float(record["reward"])
  return trajectory_from_dict(row, where)


class TrajectoryDataset(tfds.core.GeneratorBasedBuilder):
  """tfds builder over trajectory jsonl files, one split per file."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Trajectory records: token ids, loss mask, sampler data, JSON parts."}

  def __init__(self, *, split_files: Mapping[str, str | os.PathLike] | None = None, **kwargs):
    # split_files is only needed to write; reading an existing dataset passes none.
    self._split_files = {k: os.fspath(v) for k, v in (split_files or {}).items()}
    kwargs.setdefault("file_format", "array_record")
    super().__init__(**kwargs)

  name = DATASET_NAME  # the on-disk directory name, independent of the class name

  def _info(self) -> tfds.core.DatasetInfo:
    # Records keep the jsonl order (row i of a split is line i), so readers can map back.
    return tfds.core.DatasetInfo(
        builder=self, description=__doc__, features=_features(), disable_shuffling=True
    )

  def _split_generators(self, dl_manager):
    if not self._split_files:
      raise ValueError(
          "TrajectoryDataset: expected split_files={split: jsonl path} to build, " "found none"
      )
    return {split: self._generate_examples(path) for split, path in self._split_files.items()}

  def _generate_examples(self, path: str):
    for i, trajectory in enumerate(iter_jsonl(path)):
      yield i, trajectory_to_record(trajectory)


def build_trajectory_dataset(
    data_dir: str | os.PathLike, split_files: Mapping[str, str | os.PathLike]
) -> TrajectoryDataset:
  """Write the splits' jsonl files as an array_record dataset under `data_dir`; returns the builder."""
  builder = TrajectoryDataset(split_files=split_files, data_dir=os.fspath(data_dir))
  builder.download_and_prepare()
  return builder


def load_trajectory_source(data_dir: str | os.PathLike, split: str):
  """Random-access data source of the records of `split` (len(), [i], iteration)."""
  builder = TrajectoryDataset(data_dir=os.fspath(data_dir))
  return builder.as_data_source(split=split)
