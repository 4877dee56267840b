"""`python -m biomni_jax.data.rejection_sampling`: absl flags, one-line errors with status 2, a real run."""

import json
import re
import subprocess
import sys

import pytest

from biomni_jax.data import rejection_sampling as rs
from biomni_jax.data.trajectory import read_jsonl


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--families=sequence_qa"], "--out is required"),
        (
            ["--out=x.jsonl", "--families=nope"],
            r"--families: expected some of \[.*\] \(comma-separated\), found \['nope'\]",
        ),
        (["--out=x.jsonl", "--n_samples=0"], "flag --n_samples=0: 0 is not a positive integer"),
        (["--out=x.jsonl", "--teacher=gpt"], "flag --teacher=gpt: value should be one of"),
        (["--out=x.jsonl", "--teacher=openai"], "--teacher=openai: .*model"),
        (["--out=x.jsonl", "--samples=2"], "Unknown command line flag 'samples'"),
        (["--out=x.jsonl", "extra"], r"unexpected positional arguments \['extra'\]"),
    ],
)
def test_bad_command_lines_end_with_one_line_and_status_2(argv, message, capsys):
  assert rs.main(argv) == rs.USAGE_ERROR
  err = capsys.readouterr().err.strip()
  assert err.startswith("error: ") and "\n" not in err
  assert re.search(message, err), err


def test_a_run_from_the_command_line_writes_the_kept_trajectories(tmp_path):
  out = tmp_path / "sft.jsonl"
  argv = [
      f"--out={out}",
      "--families=sequence_qa",
      "--n_per_family=2",
      "--n_samples=2",
      "--workers=1",
      "--mistake_rate=0",
      "--max_turns=4",
  ]
  done = subprocess.run(
      [sys.executable, "-m", "biomni_jax.data.rejection_sampling", *argv],
      capture_output=True,
      text=True,
      timeout=600,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  summary = json.loads(done.stdout)
  # A scripted expert that makes no mistakes solves both tasks, well formatted: reward 2, kept.
  assert (summary["tasks"], summary["finished"], summary["kept"]) == (2, 2, 2)
  assert summary["mean_best_reward"] == 2.0
  kept = read_jsonl(out)
  assert sorted(t.task["instance_id"] for t in kept) == sorted(
      json.loads(line)["instance_id"] for line in open(rs.manifest_path(out))
  )
  assert all(t.task["task_name"] == "sequence_qa" and t.reward == 2.0 for t in kept)
