"""Trajectory records: jsonl round trip, rendering, and malformed rows named by line and field."""

import json

import numpy as np
import pytest

from biomni_jax.data.chat import render
from biomni_jax.data.trajectory import (
    Trajectory,
    TrajectoryFormatError,
    append_jsonl,
    read_jsonl,
    with_tokens,
    write_jsonl,
)

MESSAGES = [
    {"role": "system", "content": "sys"},
    {"role": "user", "content": "task"},
    {"role": "assistant", "content": "<think>\nx\n</think>\n<solution>TP53</solution>"},
]


def good_row(**overrides):
  row = {
      "messages": MESSAGES,
      "token_ids": [5, 6, 7, 8],
      "loss_mask": [0, 0, 1, 1],
      "sampler_logprobs": [0.0, 0.0, -0.25, -1.5],
      "policy_versions": [-1, -1, 3, 3],
      "task": {"task_name": "screen_gene_retrieval", "instance_id": 7},
      "reward": 2.0,
      "rewards": {"correctness": 1.0, "format": 1.0},
      "info": {"termination": "solution"},
  }
  row.update(overrides)
  return row


def write_rows(path, rows):
  with open(path, "w") as f:
    for row in rows:
      f.write((row if isinstance(row, str) else json.dumps(row)) + "\n")


def test_round_trip_preserves_every_field_and_dtype(tmp_path):
  path = tmp_path / "t.jsonl"
  write_rows(path, [good_row()])
  (traj,) = read_jsonl(path)
  assert traj.token_ids.dtype == np.int32 and traj.loss_mask.dtype == np.int32
  assert traj.sampler_logprobs.dtype == np.float32 and traj.policy_versions.dtype == np.int32
  out = tmp_path / "out.jsonl"
  assert write_jsonl(out, [traj, traj]) == 2
  again = read_jsonl(out)
  assert len(again) == 2
  assert again[1].to_json_dict() == good_row()
  append_jsonl(out, traj)
  assert len(read_jsonl(out)) == 3


def test_text_only_teacher_trajectory_gets_rendered_tokens(tmp_path, tokenizer):
  traj = Trajectory(messages=MESSAGES, task={"task_name": "t"}, reward=1.0)
  rendered = with_tokens(traj, tokenizer)
  ids, mask = render(MESSAGES, tokenizer)
  np.testing.assert_array_equal(rendered.token_ids, ids)
  np.testing.assert_array_equal(rendered.loss_mask, mask)
  example = rendered.to_example()
  assert set(example) == {"tokens", "loss_mask"}
  write_jsonl(tmp_path / "r.jsonl", [traj, rendered])
  plain, tokenized = read_jsonl(tmp_path / "r.jsonl")
  assert plain.token_ids is None and tokenized.num_tokens == len(ids)


@pytest.mark.parametrize(
    "bad_row, match",
    [
        (good_row(messages=[{"content": "x"}, MESSAGES[2]]), r"field messages\[0\]\.role: missing"),
        (
            good_row(messages=[{"role": "robot", "content": "x"}, MESSAGES[2]]),
            r"field messages\[0\]\.role: expected one of .* found 'robot'",
        ),
        (
            good_row(messages=[MESSAGES[1], {"role": "assistant", "content": ""}]),
            r"field messages\[1\]\.content: expected non-empty text",
        ),
        (
            good_row(messages=MESSAGES[:2]),
            "field 'messages': expected at least one assistant message",
        ),
        (good_row(messages=[]), "field 'messages': expected a non-empty list"),
        (good_row(loss_mask=[0, 1, 1]), r"field 'loss_mask': expected length 4 \(as token_ids\)"),
        (good_row(loss_mask=[0, 2, 1, 1]), "field 'loss_mask': expected only 0/1 values"),
        (good_row(token_ids=[1, 2, "x", 4]), "field 'token_ids': expected a flat list of ints"),
        (
            good_row(token_ids=[1, 2, -3, 4]),
            "field 'token_ids': expected a non-empty list of non-negative",
        ),
        (
            good_row(sampler_logprobs=[0.0, 0.0, 0.5, -1.0]),
            "field 'sampler_logprobs': expected finite",
        ),
        (good_row(policy_versions=[1, 2]), "field 'policy_versions': expected length 4"),
        (good_row(reward="high"), "field 'reward': expected a number"),
        (good_row(reward=float("nan")), "field 'reward': expected a finite number"),
        (good_row(rewards={"format": None}), "field 'rewards.format': expected a number"),
        (good_row(task="gene"), "field 'task': expected a JSON object"),
        (good_row(extra=1), r"unknown field\(s\) \['extra'\]"),
        ({k: v for k, v in good_row().items() if k != "reward"}, "field 'reward': missing"),
        (good_row(token_ids=None), "field 'loss_mask': present without token_ids"),
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object, found list"),
    ],
)
def test_malformed_row_names_the_line_and_field(tmp_path, bad_row, match):
  path = tmp_path / "bad.jsonl"
  write_rows(path, [good_row(), "", bad_row])
  with pytest.raises(TrajectoryFormatError, match=match) as info:
    read_jsonl(path)
  assert str(info.value).startswith(f"{path}:3: ")


def test_writing_an_invalid_trajectory_fails_and_leaves_no_file(tmp_path):
  bad = Trajectory(messages=[{"role": "user", "content": "q"}], task={}, reward=0.0)
  with pytest.raises(TrajectoryFormatError, match="trajectory 0: field 'messages'"):
    write_jsonl(tmp_path / "x.jsonl", [bad])
  assert list(tmp_path.iterdir()) == []


def test_sampled_message_token_ids_survive_the_round_trip(tmp_path, tokenizer):
  ids = np.asarray(
      tokenizer.encode("<solution>TP53</solution>", add_special_tokens=False), np.int32
  )
  messages = [
      MESSAGES[1],
      {"role": "assistant", "content": "<solution>TP53</solution>", "token_ids": ids},
  ]
  traj = with_tokens(Trajectory(messages=messages, task={}, reward=1.0), tokenizer)
  write_jsonl(tmp_path / "s.jsonl", [traj])
  (back,) = read_jsonl(tmp_path / "s.jsonl")
  assert back.messages[1]["token_ids"] == ids.tolist()
  np.testing.assert_array_equal(
      with_tokens(Trajectory(messages=back.messages, task={}, reward=1.0), tokenizer).token_ids,
      traj.token_ids,
  )
