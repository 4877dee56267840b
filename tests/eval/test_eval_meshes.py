"""Evaluation on sampler meshes of 4 simulated devices (two data replicas, which split the episodes, and
tensor-parallel, which splits heads) plays the same greedy episodes, token for token, as on one device
(tests/eval/eval_mesh_check.py in a subprocess)."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("eval_mesh_check.py")
REPO = SCRIPT.parents[2]


def test_greedy_episodes_equal_on_one_device_and_two_device_sampler_meshes(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), "--meshes=1x1,2x1,1x2", f"--workdir={tmp_path}"],
      capture_output=True,
      text=True,
      timeout=900,
      env=env,
      cwd=REPO,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  episodes = json.loads(proc.stdout.strip().splitlines()[-1])
  one = episodes["1x1"]
  assert len(one) == 8 and all(len(messages) >= 2 for _, _, messages in one)
  assert episodes["2x1"] == one
  assert episodes["1x2"] == one
