"""Evaluation on a 2-device sampler mesh (tensor-parallel, and two data replicas) plays the same greedy
episodes, token for token, as on one device (tests/eval/eval_mesh_check.py in subprocesses)."""

import json
import os
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).with_name("eval_mesh_check.py")
REPO = SCRIPT.parents[2]


def _episodes(tmp_path, data, tensor):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  workdir = tmp_path / f"d{data}t{tensor}"
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), f"--data={data}", f"--tensor={tensor}", f"--workdir={workdir}"],
      capture_output=True,
      text=True,
      timeout=900,
      env=env,
      cwd=REPO,
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_greedy_episodes_equal_on_one_device_and_two_device_sampler_meshes(tmp_path):
  one = _episodes(tmp_path, 1, 1)
  assert len(one) == 8 and all(len(messages) >= 2 for _, _, messages in one)
  assert one == _episodes(tmp_path, 1, 2)
  assert one == _episodes(tmp_path, 2, 1)
