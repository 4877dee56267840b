"""Ahead-of-time TPU compilation (needs libtpu: `pip install -e .[tpu]`; run with `pytest -m tpu_aot`)."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.tpu_aot
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _aot(*args):
  pytest.importorskip("libtpu")
  env = dict(os.environ, JAX_PLATFORMS="", PYTHONPATH=REPO)
  env.pop("XLA_FLAGS", None)
  return subprocess.run(
      [sys.executable, "-m", "biomni_jax.tools.aot", *args],
      env=env,
      capture_output=True,
      text=True,
      timeout=3600,
      cwd=REPO,
  )


def test_small_config_compiles_with_splash_and_fits():
  proc = _aot(
      "--config=configs/qwen3_8b_sft.py",
      "--topology=v5p:2x2x1",
      "--config.model.preset=qwen3_0_6b",
      "--config.sft.seq_len=8192",
      "--config.sft.batch_size=4",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "FITS" in proc.stdout and "Pallas splash" in proc.stdout


def test_context_parallel_config_compiles():
  proc = _aot(
      "--config=configs/qwen3_8b_sft.py",
      "--topology=v5p:2x2x1",
      "--config.model.preset=qwen3_0_6b",
      "--config.sft.seq_len=8192",
      "--config.sft.batch_size=2",
      "--config.mesh.fsdp=2",
      "--config.mesh.sequence=2",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "blockwise" in proc.stdout


def test_over_hbm_program_exits_nonzero():
  # Qwen3-8B with its optimizer state on 4 chips of 16 GiB cannot fit.
  proc = _aot(
      "--config=configs/qwen3_8b_sft.py",
      "--topology=v5e:2x2",
      "--config.sft.seq_len=4096",
      "--config.sft.batch_size=4",
  )
  assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
  assert "DOES NOT FIT" in proc.stdout


def test_small_rl_step_compiles_and_fits():
  # 2 tasks x 4 samples in 2 mini-batches: 4 rows (one trajectory each, the worst case) per step.
  proc = _aot(
      "--config=configs/qwen3_8b_rl.py",
      "--topology=v5p:2x2x1",
      "--config.model.preset=qwen3_0_6b",
      "--config.rl.seq_len=8192",
      "--config.rl.num_groups=2",
      "--config.rl.group_size=4",
      "--config.rl.num_minibatches=2",
      "--config.rl.rows_multiple_of=4",
      "--config.rl.micro_batches=1",
  )
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "step: 4 sequences x 8192 tokens" in proc.stdout and "FITS" in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    "config",
    [
        "configs/qwen3_8b_sft.py",
        "configs/qwen3_32b_sft.py",
        "configs/qwen3_8b_rl.py",
        "configs/qwen3_32b_rl.py",
    ],
)
def test_recipe_configs_fit_their_topology(config):
  proc = _aot(f"--config={config}")
  assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
  assert "FITS" in proc.stdout
