"""Trajectories as a tfds array_record dataset read through data sources, without TensorFlow."""

import sys

import numpy as np
import pytest

from biomni_jax.data.trajectory import Trajectory, TrajectoryFormatError, write_jsonl
from biomni_jax.data.trajectory_tfds import (
    build_trajectory_dataset,
    load_trajectory_source,
    record_to_trajectory,
)

MESSAGES = [
    {"role": "user", "content": "Which gene? ünï"},
    {"role": "assistant", "content": "<solution>TP53</solution>"},
]


def make_trajectories():
  out = []
  for i in range(5):
    n = 3 + i
    out.append(
        Trajectory(
            messages=MESSAGES,
            task={"task_name": "screen_gene_retrieval", "instance_id": i},
            reward=float(i) / 2,
            rewards={"format": 1.0},
            token_ids=np.arange(n, dtype=np.int32) + i,
            loss_mask=(np.arange(n) % 2).astype(np.int32),
            sampler_logprobs=-np.linspace(0, 1, n).astype(np.float32) if i % 2 else None,
            policy_versions=np.full(n, i, np.int32) if i % 2 else None,
            info={"turns": i},
        )
    )
  out.append(Trajectory(messages=MESSAGES, task={"task_name": "t"}, reward=0.0))  # text only
  return out


def test_build_and_read_back_every_split_in_jsonl_order(tmp_path):
  trajectories = make_trajectories()
  write_jsonl(tmp_path / "train.jsonl", trajectories)
  write_jsonl(tmp_path / "val.jsonl", trajectories[:2])
  build_trajectory_dataset(
      tmp_path / "ds", {"train": tmp_path / "train.jsonl", "validation": tmp_path / "val.jsonl"}
  )
  assert list((tmp_path / "ds" / "trajectories" / "1.0.0").glob("*train.array_record*"))
  train = load_trajectory_source(tmp_path / "ds", "train")
  assert len(train) == 6 and len(load_trajectory_source(tmp_path / "ds", "validation")) == 2
  for i, expected in enumerate(trajectories):
    got = record_to_trajectory(train[i], f"train[{i}]")
    assert got.to_json_dict() == expected.to_json_dict()
  # Writing and reading went through array_record alone; TensorFlow must stay out of the process.
  assert "tensorflow" not in sys.modules


def test_malformed_jsonl_fails_the_build_naming_the_line(tmp_path):
  path = tmp_path / "train.jsonl"
  write_jsonl(path, make_trajectories()[:1])
  with open(path, "a") as f:
    f.write('{"messages": [{"role": "user", "content": ""}], "task": {}, "reward": 0}\n')
  with pytest.raises(TrajectoryFormatError, match=r"train\.jsonl:2: field messages\[0\]\.content"):
    build_trajectory_dataset(tmp_path / "ds", {"train": path})
