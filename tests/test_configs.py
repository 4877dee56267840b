"""Every config in configs/ loads to the values it had when this snapshot was taken.

Configs build on each other (configs/demo_rl.py is configs/demo.py's RL stage, the RL recipes reuse their
SFT recipe's model, the 32B recipes derive from the 8B ones), so an edit of one file changes others. The
snapshot (tests/configs_snapshot.json) makes such a change visible: a refactor must leave it as it is; an
intended change of values is recorded by regenerating it,

    python -m tests.test_configs
"""

import json
import pathlib

import pytest

from biomni_jax import pipeline
from biomni_jax.config_utils import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.py"))
SNAPSHOT = pathlib.Path(__file__).with_name("configs_snapshot.json")


def plain(name: str) -> dict:
  """The config file's values as JSON would store them (lists for tuples)."""
  return json.loads(json.dumps(load_config_file(REPO / "configs" / name).to_dict()))


def differences(expected, found, path: str = "") -> list[str]:
  """Dotted fields whose value or type differs (or that only one side has)."""
  if isinstance(expected, dict) and isinstance(found, dict):
    out = []
    for key in sorted(set(expected) | set(found)):
      where = f"{path}.{key}" if path else key
      if key not in found:
        out.append(f"{where}: missing (expected {expected[key]!r})")
      elif key not in expected:
        out.append(f"{where}: not in the snapshot (found {found[key]!r})")
      else:
        out += differences(expected[key], found[key], where)
    return out
  if expected != found or type(expected) is not type(found):
    return [f"{path}: expected {expected!r}, found {found!r}"]
  return []


def test_snapshot_lists_every_config():
  assert sorted(json.loads(SNAPSHOT.read_text())) == CONFIGS


@pytest.mark.parametrize("name", CONFIGS)
def test_config_values_match_snapshot(name):
  expected = json.loads(SNAPSHOT.read_text())[name]
  changed = differences(expected, plain(name))
  assert not changed, (
      f"configs/{name} differs from tests/configs_snapshot.json (if intended: python -m "
      "tests.test_configs):\n  " + "\n  ".join(changed)
  )


def test_differences_names_each_changed_field():
  expected = {"a": 1, "b": {"c": 2.0, "d": None}}
  found = {"a": 1.0, "b": {"c": 2.0, "e": 3}}
  assert differences(expected, found) == [
      "a: expected 1, found 1.0",
      "b.d: missing (expected None)",
      "b.e: not in the snapshot (found 3)",
  ]


def test_demo_rl_is_the_pipeline_rl_stage():
  """Running configs/demo_rl.py alone trains as the demo pipeline's RL stage, but for the fields a run of
  its own sets: no SFT workdir, its own step count and task range, the model given by the SFT run.
  """
  demo, demo_rl = (load_config_file(REPO / "configs" / n) for n in ("demo.py", "demo_rl.py"))
  stage = pipeline.rl_config(demo, "/w").to_dict()
  alone = demo_rl.to_dict()
  assert differences(stage, alone) == [
      "model.init_from: missing (expected '')",
      "rl.init_from_sft: expected '/w/sft', found ''",
      "rl.num_steps: expected 8, found 0",
      f"rl.task_start: expected {demo.pipeline.teacher.train_per_family}, found 0",
  ]


if __name__ == "__main__":
  SNAPSHOT.write_text(json.dumps({n: plain(n) for n in CONFIGS}, indent=1, sort_keys=True) + "\n")
  print(f"wrote {SNAPSHOT}")
