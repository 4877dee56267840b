"""Exact resume: 20 steps straight == 10 steps, SIGKILL of the training process, resume for 10 more
(identical per-step losses, bit for bit, and identical final parameters)."""

import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

from biomni_jax.train.metrics import read_jsonl_metrics
from biomni_jax.train.sft import PAUSE_AFTER_CHECKPOINT_ENV
from tests.train.sft_fixtures import fast_overrides, write_conversations

ROOT = pathlib.Path(__file__).resolve().parents[2]


def command(workdir, train_path, **extra):
  return [
      sys.executable,
      "-m",
      "biomni_jax.main",
      f"--config={ROOT / 'configs' / 'demo.py'}",
      f"--workdir={workdir}",
      *fast_overrides(
          train_path,
          **{"sft.num_steps": 20, "sft.save_every": 10, "sft.tensorboard": False, **extra},
      ),
  ]


def run(cmd):
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc


def committed(checkpoints: pathlib.Path, step: int) -> bool:
  """Orbax renames a finished step's temporary directory to `<step>`: its presence means complete."""
  return (checkpoints / str(step) / "state").is_dir() and (
      checkpoints / str(step) / "extra"
  ).is_dir()


def final_params(workdir):
  tree = ocp.PyTreeCheckpointer().restore(str(workdir / "checkpoints" / "20" / "state"))
  return tree["params"]


def flat(tree, prefix=""):
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(flat(v, f"{prefix}/{k}"))
    return out
  return {prefix: np.asarray(tree)}


def test_sigkill_after_step_10_then_resume_equals_20_straight_steps(tmp_path):
  train_path = write_conversations(tmp_path / "train.jsonl", 24)
  straight, resumed = tmp_path / "straight", tmp_path / "resumed"
  run(command(straight, train_path))

  # The interrupted run sleeps after each committed checkpoint, so the kill lands after step 10 is saved.
  proc = subprocess.Popen(
      command(resumed, train_path),
      env={**os.environ, PAUSE_AFTER_CHECKPOINT_ENV: "120"},
      stdout=subprocess.DEVNULL,
      stderr=subprocess.PIPE,
      cwd=ROOT,
  )
  deadline = time.time() + 300
  while not committed(resumed / "checkpoints", 10):
    assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
    assert time.time() < deadline, "no checkpoint at step 10 within 300 s"
    time.sleep(0.2)
  os.kill(proc.pid, signal.SIGKILL)
  assert proc.wait(timeout=60) == -signal.SIGKILL
  proc.stderr.close()
  assert not (resumed / "checkpoints" / "20").exists()
  assert max(r["step"] for r in read_jsonl_metrics(resumed / "metrics.jsonl")) == 10

  out = run(command(resumed, train_path))
  assert '"start_step": 10' in out.stdout

  a = {r["step"]: r["loss"] for r in read_jsonl_metrics(straight / "metrics.jsonl")}
  b = {r["step"]: r["loss"] for r in read_jsonl_metrics(resumed / "metrics.jsonl")}
  assert sorted(a) == sorted(b) == list(range(1, 21))
  assert [a[k] for k in range(1, 21)] == [b[k] for k in range(1, 21)]
  assert a[20] < a[1]
  pa, pb = flat(final_params(straight)), flat(final_params(resumed))
  assert pa.keys() == pb.keys() and len(pa) > 5
  for name in pa:
    np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
  # keep-last-k: the demo keeps 2 checkpoints
  assert sorted(int(p.name) for p in (resumed / "checkpoints").iterdir() if p.name.isdigit()) == [
      10,
      20,
  ]
