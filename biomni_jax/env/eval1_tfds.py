"""Eval1 as a tensorflow_datasets dataset, written as array_record and read without TensorFlow.

Build from the official parquet (or the jsonl sample) into a data directory, then read it back as a
random-access data source:

    builder = BiomniEval1(source_path="biomni_eval1_dataset.parquet", data_dir="/data/tfds")
    builder.download_and_prepare(file_format="array_record")
    rows = builder.as_data_source(split="val")          # len(rows), rows[i] -> dict

Splits are the values of the file's `split` column (the official file has train and val). Text
fields come back as bytes from the data source; `row_from_example` turns an example into an
`eval1.Eval1Row`. Reading an already prepared dataset needs no source_path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from biomni_jax.env import eval1

FILE_FORMAT = "array_record"


class BiomniEval1(tfds.core.GeneratorBasedBuilder):
  """Biomni-Eval1 rows: instance_id, task_instance_id, task_name, split, prompt, answer."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Official columns of biomni_eval1_dataset.parquet."}

  def __init__(self, *, source_path: str | Path | None = None, **kwargs):
    self._source_path = Path(source_path) if source_path is not None else None
    kwargs.setdefault("file_format", FILE_FORMAT)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description="Biomni-Eval1: 10 biomedical agent tasks with official ground-truth answers.",
        features=tfds.features.FeaturesDict(
            {
                "instance_id": np.int64,
                "task_instance_id": np.int64,
                "task_name": tfds.features.Text(),
                "split": tfds.features.Text(),
                "prompt": tfds.features.Text(),
                "answer": tfds.features.Text(),
            }
        ),
        supervised_keys=None,
        homepage="https://huggingface.co/datasets/biomni/Eval1",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the source is a local file; nothing to download
    if self._source_path is None:
      raise ValueError(
          "BiomniEval1: expected source_path (the Eval1 .parquet or .jsonl) to prepare the dataset, found None"
      )
    rows = eval1.load(self._source_path)
    by_split: dict[str, list[eval1.Eval1Row]] = {}
    for row in rows:
      by_split.setdefault(row.split, []).append(row)
    return {split: self._generate_examples(split_rows) for split, split_rows in by_split.items()}

  def _generate_examples(self, rows):
    for row in rows:
      yield f"{row.task_name}/{row.task_instance_id}", {
          "instance_id": row.instance_id,
          "task_instance_id": row.task_instance_id,
          "task_name": row.task_name,
          "split": row.split,
          "prompt": row.prompt,
          "answer": row.answer,
      }


def _text(value: Any) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def row_from_example(example: dict[str, Any]) -> eval1.Eval1Row:
  """An example read from the data source (text as bytes, ids as numpy ints) as an Eval1Row."""
  return eval1.Eval1Row(
      instance_id=int(example["instance_id"]),
      task_instance_id=int(example["task_instance_id"]),
      task_name=_text(example["task_name"]),
      split=_text(example["split"]),
      prompt=_text(example["prompt"]),
      answer=_text(example["answer"]),
  )


def build(source_path: str | Path, data_dir: str | Path) -> BiomniEval1:
  """Prepare the dataset from `source_path` into `data_dir` (array_record) and return the builder."""
  builder = BiomniEval1(source_path=source_path, data_dir=str(data_dir))
  builder.download_and_prepare(file_format=FILE_FORMAT)
  return builder


def read_rows(data_dir: str | Path, split: str) -> list[eval1.Eval1Row]:
  """All rows of a prepared split, in stored order."""
  source = BiomniEval1(data_dir=str(data_dir)).as_data_source(split=split)
  return [row_from_example(source[i]) for i in range(len(source))]
