"""The shipped demo base (biomni_jax/assets/demo_base): a complete Hugging Face directory with its
tokenizer, the same logits as transformers' Qwen3ForCausalLM, held-out copying at the demo's row
length, and the pipeline's default `pretrain` stage copies it to DIR/base."""

import json
import os

import numpy as np
import pytest

from biomni_jax.train.base_model import COPY_ACCURACY_FILE, DEMO_BASE, measure_copy_accuracy

# Held-out copy accuracy the shipped base must keep at the demo's row length (sft.seq_len = 1024)
# and at a short one; experiments/README.md has the base's measured figures.
MIN_COPY_ACCURACY = {"1024": 0.90, "128": 0.95}


def test_the_shipped_base_is_a_complete_hf_directory():
  for name in ("config.json", "model.safetensors", "tokenizer.json", COPY_ACCURACY_FILE):
    assert os.path.isfile(os.path.join(DEMO_BASE, name)), name
  from biomni_jax.data.tokenizer import load_tokenizer

  config = json.load(open(os.path.join(DEMO_BASE, "config.json")))
  assert config["vocab_size"] == len(load_tokenizer(DEMO_BASE))
  assert os.path.getsize(os.path.join(DEMO_BASE, "model.safetensors")) < 8 << 20


def test_the_shipped_base_equals_transformers_on_a_tool_output():
  import transformers

  from biomni_jax.data.tokenizer import load_tokenizer
  from biomni_jax.model import api
  from biomni_jax.model.hf_io import load_hf_checkpoint
  from tests.model.hf_fixtures import hf_logits

  tokenizer = load_tokenizer(DEMO_BASE)
  text = (
      '<observation>1 ENSG00000196510 ANAPC7 3.6582\n== RESULT == ["ENSG00000196510"]\n'
      "answer:\n{'causal_gene': ['ENSG00000196510']}\n</observation>"
  )
  ids = np.asarray([tokenizer.encode(text, add_special_tokens=False)])
  config, params = load_hf_checkpoint(DEMO_BASE)
  ours = np.asarray(api.forward(config, params, ids))
  theirs = hf_logits(
      transformers.AutoModelForCausalLM.from_pretrained(DEMO_BASE).float().eval(), ids
  )
  np.testing.assert_allclose(ours, theirs[..., : ours.shape[-1]], atol=2e-4, rtol=0)


def test_the_shipped_base_copies_held_out_rows():
  accuracy = measure_copy_accuracy(DEMO_BASE, [int(n) for n in MIN_COPY_ACCURACY], count=8)
  for length, floor in MIN_COPY_ACCURACY.items():
    assert accuracy[length] >= floor, (length, accuracy)
  recorded = json.load(open(os.path.join(DEMO_BASE, COPY_ACCURACY_FILE)))
  assert recorded["held_out_copy_accuracy"]["1024"] >= MIN_COPY_ACCURACY["1024"]


def test_the_default_pipeline_starts_sft_from_the_shipped_base(tmp_path):
  import pathlib

  from biomni_jax import pipeline
  from biomni_jax.config_utils import load_config_file

  config = load_config_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py")
  summary = pipeline.stage_pretrain(config, str(tmp_path))
  base = tmp_path / pipeline.BASE_DIR
  assert summary["source"] == os.path.abspath(DEMO_BASE) and summary["copy_accuracy"]
  for name in os.listdir(DEMO_BASE):
    assert (base / name).read_bytes() == open(os.path.join(DEMO_BASE, name), "rb").read()
  sft = pipeline.sft_config(config, str(tmp_path))
  assert sft.model.init_from == sft.tokenizer.path == str(base)
  with pytest.raises(FileNotFoundError, match="no config.json"):
    pipeline.stage_pretrain(
        load_config_file(
            pathlib.Path(__file__).resolve().parents[1] / "configs" / "demo.py",
            {"pipeline.pretrain.path": str(tmp_path / "nothing")},
        ),
        str(tmp_path / "other"),
    )


@pytest.mark.slow
def test_the_documented_command_regenerates_a_base_that_copies(tmp_path):
  """experiments/make_demo_base.py with a shortened schedule (the induction stage in full, two short
  longer stages, a few document steps, a small teacher set): the held-out copy accuracy it records
  reaches the floor at the stages' lengths. About 10 minutes on 2 cores."""
  import pathlib
  import subprocess
  import sys

  repo = pathlib.Path(__file__).resolve().parents[1]
  out = tmp_path / "base"
  sets = {
      "pipeline.pretrain.copy_stages": "[[32, 500], [64, 50], [128, 50]]",
      "pipeline.pretrain.documents_steps": "20",
      "pipeline.teacher.train_per_family": "8",
      "pipeline.teacher.val_per_family": "1",
  }
  cmd = [sys.executable, str(repo / "experiments" / "make_demo_base.py")]
  cmd += [f"--workdir={tmp_path / 'work'}", f"--out={out}"]
  cmd += [f"--set={k}={v}" for k, v in sets.items()]
  done = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
  assert done.returncode == 0, done.stderr[-3000:]
  recorded = json.load(open(out / COPY_ACCURACY_FILE))["held_out_copy_accuracy"]
  assert min(recorded.values()) >= MIN_COPY_ACCURACY["128"], recorded
  assert measure_copy_accuracy(str(out), [128], count=8)["128"] >= MIN_COPY_ACCURACY["128"]
