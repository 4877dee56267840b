"""The command line: run a config in a workdir.

    python -m biomni_jax.main --config=configs/demo.py --workdir=DIR [--config.key=value ...]

`config.mode` picks what runs: "sft" (train/sft.py), "rl" (train/rl.py), "pipeline" (pipeline.py: teacher data,
SFT, RL and evaluation, resumable by stage), "eval" (eval/evaluate.py: one model, named by the config's
`eval` section, on held-out tasks -> DIR/eval.json and DIR/eval_episodes.jsonl), e.g.

    python -m biomni_jax.main --config=configs/demo.py --workdir=/tmp/eval --config.mode=eval \
        --config.eval.model=/tmp/demo/sft --config.eval.data=eval1_sample

A config that cannot be loaded, an unknown override, a bad field value, a missing input path or an
existing result that would be overwritten ends the process with a one-line error on stderr and exit
status 2; other failures keep their traceback (status 1).
"""

from __future__ import annotations

import json
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from biomni_jax.config_utils import ConfigError, field

MODES = ("sft", "rl", "eval", "pipeline")
USAGE_ERROR = 2

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/*.py).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed",
    False,
    "Multi-host run: call jax.distributed.initialize() first (on a TPU pod every host runs "
    "the same command and the coordinator is found automatically).",
)


def run(config, workdir: str) -> dict:
  """Dispatch on config.mode; returns the mode's summary."""
  mode = field(config, "mode", str, choices=MODES)
  if mode == "sft":
    from biomni_jax.train.sft import train_sft

    return train_sft(config, workdir)
  if mode == "rl":
    return _run_rl(config, workdir)
  if mode == "pipeline":
    from biomni_jax.pipeline import run_pipeline

    return run_pipeline(config, workdir)
  if mode == "eval":
    from biomni_jax.eval.evaluate import run_eval_mode

    return run_eval_mode(config, workdir)
  raise NotImplementedError(f"config field 'mode': {mode!r} is not implemented")


def _run_rl(config, workdir: str) -> dict:
  """mode=rl (train/rl.py): the summary without the device state, with the last rollout batch's reward."""
  from biomni_jax.train.rl_run import train_rl

  summary = train_rl(config, workdir)
  rewards, success = summary.pop("rewards"), summary.pop("success")
  summary["last_reward"] = next(reversed(rewards.values()), None) if rewards else None
  summary["last_success"] = next(reversed(success.values()), None) if success else None
  return summary


def _printable(summary: dict) -> dict:
  out = {}
  for k, v in summary.items():
    if k == "losses":
      out["last_loss"] = next(reversed(v.values()), None) if v else None
    elif isinstance(v, (int, float, str, type(None))):
      out[k] = v
  return out


def main(argv) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected positional arguments {argv[1:]}", USAGE_ERROR)
  if _WORKDIR.value is None:
    raise app.UsageError("--workdir is required", USAGE_ERROR)
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every checkpoint step at INFO
  if _DISTRIBUTED.value:
    import jax

    jax.distributed.initialize()
  try:
    config = _CONFIG.value  # a config file that failed to load raises OSError here
    if config is None:
      raise app.UsageError("--config is required (e.g. --config=configs/demo.py)", USAGE_ERROR)
    summary = run(config, _WORKDIR.value)
  except (ConfigError, OSError, NotImplementedError) as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return USAGE_ERROR
  print("SUMMARY " + json.dumps(_printable(summary)))
  return 0


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every failure (a config file that does not load, an unknown or ill-typed
  --config.key) reported in one line instead of a traceback."""
  try:
    return flags.FLAGS(argv)
  except (
      Exception
  ) as e:  # config_flags raises assorted types (AttributeError, KeyError, TypeError, ...)
    text = str(e).strip().strip('"')
    print(f"error: bad command line or config file: {type(e).__name__}: {text}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
