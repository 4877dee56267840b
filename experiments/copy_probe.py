"""Held-out copy accuracy of a base model: can it copy a random segment it has just read?

    python experiments/copy_probe.py [--model=biomni_jax/assets/demo_base] [--lengths=32,64,...,1024]
        [--rows=16]

Rows are data/copy_rows.py's layout (random ordinary tokens, a segment of a quarter to a half of the
row repeated at its end) from seeds no training row uses (train/base_model.py HELD_OUT_SEED); copy
accuracy is the model's teacher-forced argmax accuracy on the copy's tokens after its first, and
chance is 1 / (the number of ordinary tokens). --model is a Hugging Face directory with its tokenizer
(the shipped demo base by default, or a pipeline's DIR/base). Prints one line per length and a JSON
RESULT line.
"""

from __future__ import annotations

import json
import time

from absl import app, flags

_MODEL = flags.DEFINE_string("model", "", "Hugging Face base directory; '' = the shipped demo base")
_LENGTHS = flags.DEFINE_list(
    "lengths", ["32", "64", "128", "256", "512", "1024"], "row lengths (tokens)"
)
_ROWS = flags.DEFINE_integer("rows", 16, "held-out rows per length")


def main(argv):
  del argv
  from biomni_jax.data.copy_rows import ordinary_token_ids
  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.train.base_model import DEMO_BASE, measure_copy_accuracy

  path = _MODEL.value or DEMO_BASE
  lengths = [int(n) for n in _LENGTHS.value]
  if any(n < 16 for n in lengths):
    raise SystemExit(f"--lengths: expected lengths >= 16, found {lengths}")
  t0 = time.time()
  accuracy = measure_copy_accuracy(path, lengths, _ROWS.value)
  chance = 1 / len(ordinary_token_ids(load_tokenizer(path)))
  for n in lengths:
    print(f"  length {n:5d}  copy accuracy {accuracy[str(n)]:.3f}  (chance {chance:.4f})")
  print(
      "RESULT "
      + json.dumps(
          {
              "model": path,
              "rows": _ROWS.value,
              "copy_accuracy": accuracy,
              "chance": round(chance, 5),
              "seconds": round(time.time() - t0, 1),
          }
      )
  )


if __name__ == "__main__":
  app.run(main)
