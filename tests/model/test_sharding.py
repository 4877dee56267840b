"""Loss and gradients on meshes of 8 simulated CPU devices, and across 2 processes, equal one device."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import pytest

from biomni_jax.sharding import DEFAULT_RULES, logical_to_spec, make_mesh

SCRIPT = pathlib.Path(__file__).with_name("sharded_check.py")
REPO = SCRIPT.parents[2]


def _env(devices: int):
  env = dict(
      os.environ,
      JAX_PLATFORMS="cpu",
      XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
      PYTHONPATH=str(REPO),
  )
  return env


def _result(stdout: str) -> dict:
  lines = [l for l in stdout.splitlines() if l.startswith("RESULT ")]
  assert lines, f"no RESULT line in output:\n{stdout[-3000:]}"
  return json.loads(lines[-1][len("RESULT ") :])


def test_sharded_loss_and_grads_equal_single_device():
  proc = subprocess.run(
      [sys.executable, str(SCRIPT)], env=_env(8), capture_output=True, text=True, timeout=900
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = _result(proc.stdout)
  assert set(results) == {"data2_fsdp2_tensor2", "fsdp2_tensor2_sequence2", "data2_sequence4"}
  for name, r in results.items():
    assert r["devices"] == 8
    assert r["loss_rel"] < 1e-5, (name, r)
    assert r["grad_rel"] < 1e-5, (name, r)
  assert results["data2_fsdp2_tensor2"]["sharded_params"] > 0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_process_distributed_step():
  port = _free_port()
  procs = [
      subprocess.Popen(
          [
              sys.executable,
              str(SCRIPT),
              "--multiprocess",
              "--process_id",
              str(i),
              "--port",
              str(port),
          ],
          env=_env(4),
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(2)
  ]
  outs = []
  try:
    for p in procs:
      out, err = p.communicate(timeout=600)
      assert p.returncode == 0, err[-3000:]
      outs.append(out)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  for out in outs:
    r = _result(out)["multiprocess_data2_fsdp2_tensor2"]
    assert r["processes"] == 2 and r["devices"] == 8
    assert r["loss_rel"] < 1e-5 and r["grad_rel"] < 1e-5


def test_make_mesh_and_rules():
  import jax

  mesh = make_mesh(data=-1)
  assert mesh.shape["data"] == len(jax.devices())
  with pytest.raises(ValueError, match="needs"):
    make_mesh(data=len(jax.devices()) + 1)
  with pytest.raises(ValueError, match="at most one"):
    make_mesh(data=-1, fsdp=-1)
  spec = logical_to_spec(("batch", "length", "act_embed"), DEFAULT_RULES)
  assert tuple(spec) == (("data", "fsdp"), "sequence", None)
  # a mesh axis is used once per spec: 'embed' wants fsdp but batch already took it
  assert tuple(logical_to_spec(("batch", "embed"), DEFAULT_RULES)) == (("data", "fsdp"), None)
  with pytest.raises(KeyError, match="no sharding rule"):
    logical_to_spec(("nonsense",), DEFAULT_RULES)
