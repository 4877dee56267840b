"""The model agent: a Hugging Face directory evaluated through the CLI (engine + rollout pool + sandbox)."""

import json

import jax

from biomni_jax import model as M
from biomni_jax.data.tokenizer import default_corpus, train_embedded_tokenizer
from biomni_jax.eval.__main__ import main
from biomni_jax.model.config import get_preset
from biomni_jax.model.hf_io import save_hf_checkpoint


def test_hf_directory_through_the_cli(tmp_path, capsys):
  tokenizer = train_embedded_tokenizer(default_corpus(), 512, str(tmp_path / "tok"))
  cfg = get_preset("tiny", vocab_size=len(tokenizer), num_hidden_layers=1)
  hf = tmp_path / "hf"
  save_hf_checkpoint(cfg, M.init_params(cfg, jax.random.key(0)), str(hf))
  tokenizer.save_pretrained(str(hf))
  rc = main(
      [
          f"--hf={hf}",
          "--tasks=sequence_qa",
          "--per_family=2",
          "--n_samples=2",
          "--max_turns=2",
          "--max_new_tokens=6",
          "--workers=1",
          f"--out={tmp_path / 'out'}",
          "--quiet",
      ]
  )
  assert rc == 0
  summary = json.load(open(tmp_path / "out" / "summary.json"))
  entry = summary["tasks"]["sequence_qa"]
  assert (entry["episodes"], entry["instances"]) == (4, 2) and "pass@2" in entry
  assert summary["system"] == "hf" and summary["average"] == entry["mean"]
  rows = [json.loads(l) for l in open(tmp_path / "out" / "trajectories.jsonl")]
  assert sorted((r["instance_id"], r["sample_index"]) for r in rows) == [
      ("sequence_qa/0/val/0", 0),
      ("sequence_qa/0/val/0", 1),
      ("sequence_qa/0/val/1", 0),
      ("sequence_qa/0/val/1", 1),
  ]
  for (
      r
  ) in (
      rows
  ):  # an untrained model: short random replies, graded 0, episodes end by the protocol's rules
    assert r["messages"][0]["role"] == "user" and r["messages"][1]["role"] == "assistant"
    assert (
        r["termination"] in ("parse_errors", "max_turns", "solution", "context_limit")
        and r["score"] == 0.0
    )
  assert "sequence_qa" in capsys.readouterr().out
