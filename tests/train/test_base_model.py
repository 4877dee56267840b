"""The base-model curriculum: rows filled exactly and kept in order by the SFT loop's packing, settings
errors that name the field, a tiny run end to end (export, tokenizer, copy accuracy), copy_base."""

import json
import os
import pathlib

import numpy as np
import pytest

from biomni_jax.config_utils import ConfigError, load_config_file
from biomni_jax.data.documents import document_examples, example_trajectory
from biomni_jax.data.packing import pack_examples
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.train import base_model

REPO = pathlib.Path(__file__).resolve().parents[2]
DOCS = [
    f"Phenotypes: HP:000{i}123\n1 ENSG0000019651{i} ANAPC7 3.65\nanswer:\nTNNI{i}" for i in range(6)
]


def demo_config(**overrides):
  return load_config_file(REPO / "configs" / "demo.py", overrides)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  return train_embedded_tokenizer(default_corpus() + DOCS, 400, tmp_path_factory.mktemp("tok"))


def settings(**changes):
  fields = dict(
      copy_stages=((32, 3), (64, 2), (128, 2)),
      shorter_fraction=0.5,
      documents_steps=3,
      batch_size=2,
      lr=1e-3,
      warmup_steps=1,
      seed=0,
      eval_rows=2,
  )
  fields.update(changes)
  return base_model.BaseSettings(**fields)


def test_rows_are_full_in_stage_order_and_packing_keeps_them(tokenizer):
  s = settings()
  rows = base_model.curriculum_rows(s, tokenizer, DOCS, 256)
  assert len(rows) == s.num_steps * s.batch_size
  for row in rows:  # full up to less than one shortest example
    assert 256 - base_model.MIN_EXAMPLE < sum(len(e["tokens"]) for e in row) <= 256
  stage_rows = [32] * 6 + [64] * 4 + [128] * 4
  for row, longest in zip(rows, stage_rows):
    lengths = [len(e["tokens"]) for e in row]
    assert max(lengths) == longest and not any(e["loss_mask"][0] for e in row)
  assert longest == 128 and all(len(e["tokens"]) in (32,) for e in rows[0])

  for row in rows[len(stage_rows) :]:  # a document first (every token learned), then copy rows
    assert row[0]["loss_mask"].all() and not any(e["loss_mask"][0] for e in row[1:])
  flat = [e for row in rows for e in row]
  placements = pack_examples(flat, 256).placements
  row_of = [r for r, row in enumerate(rows) for _ in row]
  assert [p.row for p in placements] == row_of


def test_settings_errors_name_the_field():
  with pytest.raises(ConfigError, match=r"copy_stages\[1\]': expected \[length, steps\]"):
    base_model.BaseSettings.from_config(
        demo_config(**{"pipeline.pretrain.copy_stages": [[32, 5], [64]]}), 1024
    )
  with pytest.raises(ConfigError, match="length <= sft.seq_len \\(512\\)"):
    base_model.BaseSettings.from_config(demo_config(), 512)
  with pytest.raises(ConfigError, match="strictly growing"):
    base_model.BaseSettings.from_config(
        demo_config(**{"pipeline.pretrain.copy_stages": [[64, 5], [32, 5]]}), 1024
    )
  s = base_model.BaseSettings.from_config(demo_config(), 1024)
  assert (
      s.lengths[-1] == 1024 and s.num_steps == sum(n for _, n in s.copy_stages) + s.documents_steps
  )


def test_documents_and_copy_rows_become_trajectories(tokenizer):
  doc = document_examples(DOCS[:1], tokenizer)[0]
  t = example_trajectory(doc, tokenizer, "document")
  assert [m["role"] for m in t.messages] == ["assistant"] and t.messages[0]["content"].startswith(
      "Phenotypes"
  )
  np.testing.assert_array_equal(t.token_ids, doc["tokens"])
  with pytest.raises(ValueError, match="example_trajectory\\(document\\): .* 0 learned"):
    example_trajectory({"tokens": [1, 2], "loss_mask": [0, 0]}, tokenizer, "document")


def test_tiny_base_run_exports_a_loadable_base_and_its_copy_accuracy(tmp_path, tokenizer):
  tokenizer.save_pretrained(str(tmp_path / "run" / "tokenizer"))
  config = demo_config(
      **{
          "model.overrides.num_hidden_layers": 1,
          "model.overrides.hidden_size": 32,
          "model.overrides.intermediate_size": 64,
          "model.overrides.head_dim": 8,
          "sft.seq_len": 128,
          "sft.progress_bar": False,
          "sft.tensorboard": False,
          "sft.async_checkpoint": False,
          "pipeline.pretrain.copy_stages": [[32, 2], [64, 2]],
          "pipeline.pretrain.documents_steps": 1,
          "pipeline.pretrain.eval_rows": 2,
          "pipeline.pretrain.warmup_steps": 1,
      }
  )
  out = str(tmp_path / "base")
  summary = base_model.train_base(config, str(tmp_path / "run"), DOCS, DOCS[:2], out)
  assert summary["steps"] == 5 and set(summary["copy_accuracy"]) == {"32", "64"}
  recorded = json.load(open(os.path.join(out, base_model.COPY_ACCURACY_FILE)))
  assert recorded["held_out_copy_accuracy"] == summary["copy_accuracy"]
  run = json.load(open(tmp_path / "run" / "run" / "config.json"))
  assert run["sft"]["shuffle"] is False and run["model"]["init_from"] == ""
  copied = base_model.copy_base(out, str(tmp_path / "pipeline" / "base"))
  assert copied["copy_accuracy"] == summary["copy_accuracy"]
  from biomni_jax.eval.agents import load_hf_agent

  agent = load_hf_agent(str(tmp_path / "pipeline" / "base"))
  assert len(agent.tokenizer) == len(tokenizer) == agent.model_config.vocab_size
  with pytest.raises(FileNotFoundError, match="no config.json"):
    base_model.copy_base(str(tmp_path), str(tmp_path / "elsewhere"))
