"""RL end to end on multi-device meshes and across two jax.distributed processes (tests/train/rl_mesh_check.py
does the work in subprocesses, each with its own simulated CPU devices).

One process, 4 devices: the trainer splits the batch (fsdp=4) while 2 engine replicas sample (data=2),
and the trainer splits heads (fsdp=2 x tensor=2) while the engine does (tensor=2). Two processes with 2
devices each (fsdp=4 over both, a tensor=2 sampler per host): one process dies after step 2's publish,
the other must exit with an error instead of hanging; both restart, resume from the step-1 checkpoint and
finish step 3. Every step: disjoint tasks per host, none repeated across the restart, each host's share of
the task stream in order, both engines bit-identical under the same version, and the loss of every
mini-batch equal to one process training on the same rows from the same checkpoint.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).with_name("rl_mesh_check.py")
REPO = SCRIPT.parents[2]


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
  env.pop("XLA_FLAGS", None)
  return env


def _records(text, kind):
  out = []
  for line in text.splitlines():
    if line.startswith("{") and f'"kind": "{kind}"' in line:
      out.append(json.loads(line))
  return out


def _run(args, timeout=900):
  proc = subprocess.run(
      [sys.executable, str(SCRIPT), *args],
      capture_output=True,
      text=True,
      timeout=timeout,
      env=_env(),
      cwd=REPO,
  )
  return proc


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch_two(args, workdir, rows_prefix=None):
  port = _free_port()
  procs = []
  for pid in range(2):
    extra = [f"--rows_out={rows_prefix}{pid}.npz"] if rows_prefix else []
    procs.append(
        subprocess.Popen(
            [
                sys.executable,
                str(SCRIPT),
                "--devices=2",
                "--processes=2",
                f"--process_id={pid}",
                f"--port={port}",
                "--mesh=fsdp=4",
                "--engine_mesh=tensor=2",
                f"--workdir={workdir}",
                *args,
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_env(),
            cwd=REPO,
        )
    )
  return procs


@pytest.mark.parametrize(
    "mesh,engine_mesh,release",
    [("fsdp=4", "data=2", True), ("fsdp=2,tensor=2", "tensor=2", False)],
)
def test_two_rl_steps_on_four_devices(tmp_path, mesh, engine_mesh, release):
  """Batch-split trainer with two engine replicas that free their memory for every train step, and a
  head-split trainer with a head-split engine."""
  proc = _run(
      ["--devices=4", f"--mesh={mesh}", f"--engine_mesh={engine_mesh}", f"--workdir={tmp_path}"]
      + (["--release"] if release else [])
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  steps = _records(proc.stdout, "step")
  assert [s["step"] for s in steps] == [1, 2]
  replicas = 2 if engine_mesh == "data=2" else 1
  for s in steps:
    assert np.isfinite(s["loss"]) and len(s["minibatch_losses"]) == 2
    assert len(s["digests"]) == replicas and {v for v, _ in s["digests"]} == {s["version"]}
    assert len({d for _, d in s["digests"]}) == 1  # every replica holds the same weights
  assert steps[0]["digests"][0][1] != steps[1]["digests"][0][1]  # the weights moved
  releases = [s.get("releases") for s in steps]
  assert releases == ([[1] * replicas, [2] * replicas] if release else [None, None])
  groups = [g for s in steps for g in s["groups"]]
  assert len(groups) == 8 and len(set(groups)) == 8


@pytest.mark.slow  # ~4 two-process launches; run with `pytest -m slow tests/train/test_rl_meshes.py`
def test_two_processes_train_resume_after_a_crash_and_match_one_process(tmp_path):
  work, rows = tmp_path / "run", str(tmp_path / "rows")
  # Run A: process 1 dies right after publishing step 2; process 0 must not hang.
  crashed = _launch_two(["--steps=3", "--die_at_step=2"], work)
  t0 = time.monotonic()
  outputs = [p.communicate(timeout=900)[0] for p in crashed]
  survivor_seconds = time.monotonic() - t0
  assert crashed[1].returncode == 3, outputs[1][-3000:]
  assert crashed[0].returncode not in (0, None), outputs[0][-3000:]
  assert survivor_seconds < 600
  first = [_records(out, "step") for out in outputs]
  assert [s["step"] for s in first[0]][:1] == [1]
  checkpoints = sorted(int(p.name) for p in (work / "checkpoints").iterdir() if p.name.isdigit())
  assert checkpoints == [1], checkpoints
  replay_dir = tmp_path / "replay"
  shutil.copytree(work, replay_dir)

  # Run B: both restart, resume from step 1 and finish.
  resumed = _launch_two(["--steps=3"], work, rows_prefix=rows)
  outputs = [p.communicate(timeout=900)[0] for p in resumed]
  for p, out in zip(resumed, outputs):
    assert p.returncode == 0, out[-3000:]
  second = [_records(out, "step") for out in outputs]
  assert [[s["step"] for s in host] for host in second] == [[2, 3], [2, 3]]

  # Tasks: each host's share of the stream in order, disjoint hosts, nothing repeated or skipped.
  sys.path.insert(0, str(REPO))
  from biomni_jax.config_utils import load_config_file
  from biomni_jax.train import rl_run

  config = load_config_file(
      REPO / "configs" / "demo_rl.py",
      {"rl.task_families": ["sequence_qa", "locus_causal_gene"], "rl.tasks_per_family": 8},
  )
  stream = [t.instance_id for t in rl_run.task_stream(rl_run.build_tasks(config), 1, 0)]
  for host in range(2):
    share = stream[host::2]
    steps = [first[host][0]] + second[host]
    for k, s in enumerate(steps):
      assert sorted(s["groups"]) == sorted(share[2 * k : 2 * k + 2]), (host, s["step"])
  seen = [g for host in range(2) for s in [first[host][0]] + second[host] for g in s["groups"]]
  assert len(seen) == len(set(seen)) == 12

  # Both hosts hold bit-identical weights under the same version after every publish.
  for a, b in zip([first[0][0]] + second[0], [first[1][0]] + second[1]):
    assert a["version"] == b["version"] == a["step"]
    assert a["digests"] == b["digests"]
    assert a["minibatch_losses"] == b["minibatch_losses"]

  # One process on 4 devices, from the same checkpoint, fed the same rows: the same losses.
  proc = _run(
      [
          "--devices=4",
          "--mesh=fsdp=4",
          f"--workdir={replay_dir}",
          "--steps=3",
          f"--replay={rows}0.npz,{rows}1.npz",
      ]
  )
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  replayed = _records(proc.stdout, "replay")
  assert [r["step"] for r in replayed] == [2, 3]
  for r, s in zip(replayed, second[0]):
    np.testing.assert_allclose(r["minibatch_losses"], s["minibatch_losses"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r["grad_norms"], s["grad_norms"], rtol=1e-5)
