"""Regenerate the shipped demo base (biomni_jax/assets/demo_base) with the demo pipeline's own stages.

    python experiments/make_demo_base.py --workdir=/tmp/demo_base [--out=biomni_jax/assets/demo_base] \
        [--set pipeline.pretrain.documents_steps=100 ...]

Runs the pipeline's `teacher_data` and `pretrain` stages of configs/demo.py with
`pipeline.pretrain.base = "train"` in --workdir (resumable: a finished stage is skipped, an interrupted
curriculum resumes from its checkpoint), then copies DIR/base (config.json, model.safetensors, the
tokenizer files, copy_accuracy.json) to --out. Prints the stage times and the held-out copy accuracy
per example length as one JSON line.
"""

from __future__ import annotations

import json
import os
import pathlib
import time

from absl import app, flags

_WORKDIR = flags.DEFINE_string("workdir", None, "pipeline workdir for the teacher data and the run")
_OUT = flags.DEFINE_string(
    "out",
    "",
    "where to copy the base; '' = leave it in WORKDIR/base (biomni_jax/assets/demo_base "
    "replaces the shipped one)",
)
_SET = flags.DEFINE_multi_string("set", [], "config overrides key=value (python literals)")

REPO = pathlib.Path(__file__).resolve().parents[1]


def main(argv):
  del argv
  from biomni_jax import pipeline
  from biomni_jax.config_utils import load_config_file, parse_overrides
  from biomni_jax.train.base_model import copy_base

  overrides = {"pipeline.pretrain.base": "train", **parse_overrides(_SET.value)}
  config = load_config_file(REPO / "configs" / "demo.py", overrides)
  workdir = os.path.abspath(_WORKDIR.value)
  seconds = {}
  for stage in ("teacher_data", "pretrain"):
    done = pipeline.read_marker(workdir, stage)
    if done:
      seconds[stage] = done.get("seconds")
      continue
    t0 = time.monotonic()
    summary = pipeline.STAGE_FUNCTIONS[stage](config, workdir)
    seconds[stage] = time.monotonic() - t0
    pipeline.write_json_atomic(
        pipeline.marker_path(workdir, stage), {"seconds": seconds[stage], "summary": summary}
    )
  summary = pipeline.read_marker(workdir, "pretrain")["summary"]
  base = os.path.join(workdir, pipeline.BASE_DIR)
  if _OUT.value:
    copy_base(base, _OUT.value)
  print(
      "RESULT "
      + json.dumps(
          {
              "base": os.path.abspath(_OUT.value or base),
              "stage_seconds": seconds,
              "copy_accuracy": summary.get("copy_accuracy"),
              "steps": summary.get("steps"),
              "eval_loss": summary.get("eval_loss"),
          }
      )
  )


if __name__ == "__main__":
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
