"""The CLI: runs mode=sft from a config file with overrides; bad input ends with a clear error and a non-zero
exit status. (mode=eval end to end: tests/eval/test_main_eval.py.)"""

import pathlib
import subprocess
import sys

import pytest

from biomni_jax.config_utils import ConfigError
from biomni_jax.main import run
from tests.train.sft_fixtures import fast_config, fast_overrides, write_conversations

ROOT = pathlib.Path(__file__).resolve().parents[2]
DEMO = ROOT / "configs" / "demo.py"


def cli(*args):
  return subprocess.run(
      [sys.executable, "-m", "biomni_jax.main", *args],
      capture_output=True,
      text=True,
      timeout=300,
      cwd=ROOT,
  )


def test_cli_trains_from_config_file_with_overrides(tmp_path):
  train = write_conversations(tmp_path / "train.jsonl", 8)
  proc = cli(
      f"--config={DEMO}",
      f"--workdir={tmp_path / 'run'}",
      *fast_overrides(train, **{"sft.num_steps": 3, "sft.tensorboard": False}),
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert '"final_step": 3' in proc.stdout
  assert (tmp_path / "run" / "checkpoints" / "3").is_dir()
  assert '"num_steps": 3' in (tmp_path / "run" / "config.json").read_text()


@pytest.mark.parametrize(
    "args, status, message",
    [
        (
            ["--config.mode=eval"],
            2,
            "config field 'eval.model': ",
        ),  # the empty workdir has no model
        (
            ["--config.mode=sft", "--config.data.train_path=/no/such.jsonl"],
            2,
            "'data.train_path': '/no/such.jsonl' does not exist",
        ),
        (["--config.sft.no_such_key=1"], 2, "no_such_key"),
        (["--config.sft.batch_size=eight"], 2, "eight"),
    ],
)
def test_cli_bad_input_exits_non_zero_naming_the_problem(tmp_path, args, status, message):
  proc = cli(f"--config={DEMO}", f"--workdir={tmp_path}", *args)
  assert proc.returncode == status, (proc.returncode, proc.stderr[-2000:])
  assert message in proc.stderr
  assert "Traceback" not in proc.stderr


def test_cli_missing_config_file_or_workdir(tmp_path):
  proc = cli(f"--config={tmp_path / 'missing.py'}", f"--workdir={tmp_path}")
  assert proc.returncode == 2 and "missing.py" in proc.stderr and "Traceback" not in proc.stderr
  proc = cli(f"--config={DEMO}")
  assert proc.returncode != 0 and "--workdir is required" in proc.stderr


def test_unknown_mode_is_a_config_error(tmp_path):
  config = fast_config(str(tmp_path / "x.jsonl"))
  config.mode = "dance"
  with pytest.raises(
      ConfigError, match=r"'mode': expected one of \('sft', 'rl', 'eval', 'pipeline'\)"
  ):
    run(config, str(tmp_path))
