"""mode=pipeline: stages run in order and each is skipped once its marker exists (a failed stage resumes);
a tiny real run end to end (teacher data, SFT, three evaluations, RL, eval.json, report.html); the full demo
(slow)."""

import json
import os
import pathlib
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from biomni_jax import pipeline
from biomni_jax.config_utils import load_config_file

REPO = pathlib.Path(__file__).resolve().parents[1]


def demo_config(**overrides):
  return load_config_file(REPO / "configs" / "demo.py", overrides)


def _fake_stages(monkeypatch, calls, fail_at=None):
  def make(name):
    def stage(config, workdir):
      calls.append(name)
      if name == fail_at:
        raise RuntimeError(f"{name} failed")
      if name == "report":
        pipeline.write_json_atomic(
            os.path.join(workdir, "eval.json"), {"average": {"base": 0.0, "sft": 0.5, "rl": 0.75}}
        )
      return {"stage": name}

    return stage

  monkeypatch.setattr(pipeline, "STAGE_FUNCTIONS", {name: make(name) for name in pipeline.STAGES})


def test_stages_run_in_order_and_a_rerun_skips_them(monkeypatch, tmp_path):
  calls = []
  _fake_stages(monkeypatch, calls)
  out = pipeline.run_pipeline(demo_config(), str(tmp_path))
  assert calls == list(pipeline.STAGES)
  assert (out["average_base"], out["average_sft"], out["average_rl"]) == (0.0, 0.5, 0.75)
  for name in pipeline.STAGES:
    assert pipeline.read_marker(str(tmp_path), name)["summary"] == {"stage": name}
  calls.clear()
  pipeline.run_pipeline(demo_config(), str(tmp_path))
  assert calls == []


def test_a_failed_stage_leaves_no_marker_and_the_rerun_starts_there(monkeypatch, tmp_path):
  calls = []
  _fake_stages(monkeypatch, calls, fail_at="rl")
  with pytest.raises(RuntimeError, match="rl failed"):
    pipeline.run_pipeline(demo_config(), str(tmp_path))
  assert calls == ["teacher_data", "pretrain", "sft", "eval_base", "eval_sft", "rl"]
  assert not os.path.exists(pipeline.marker_path(str(tmp_path), "rl"))
  calls.clear()
  _fake_stages(monkeypatch, calls)
  pipeline.run_pipeline(demo_config(), str(tmp_path))
  assert calls == ["rl", "eval_rl", "report"]


def test_stage_configs_split_the_pipeline_config(tmp_path):
  config = demo_config()
  assert config.pipeline.pretrain.base == "shipped"  # SFT starts from DIR/base by default
  with pytest.raises(RuntimeError, match="the base model .* is missing"):
    pipeline.sft_config(config, str(tmp_path))
  assert not pipeline.sft_config(
      demo_config(**{"pipeline.pretrain.base": "none"}), str(tmp_path)
  ).model.init_from
  os.makedirs(tmp_path / "base")
  (tmp_path / "base" / "config.json").write_text(json.dumps({"vocab_size": 1234}))
  from_base = pipeline.sft_config(config, str(tmp_path))
  assert from_base.model.init_from == from_base.tokenizer.path == str(tmp_path / "base")
  assert (
      from_base.model.overrides.vocab_size == 1234 and from_base.model.overrides.hidden_size == 128
  )
  sft = pipeline.sft_config(config, str(tmp_path))
  assert sft.mode == "sft" and "rl" not in sft and "pipeline" not in sft
  # The teacher data mixed with copy examples (stage_sft writes the mix), or the teacher data alone.
  assert sft.data.train_path == str(tmp_path / "data" / "sft_train_with_copy.jsonl")
  alone = pipeline.sft_config(demo_config(**{"pipeline.sft_copy_examples": []}), str(tmp_path))
  assert alone.data.train_path == str(tmp_path / "data" / "sft_train.jsonl")
  assert sft.sft.num_steps == config.pipeline.sft_overrides.num_steps != config.sft.num_steps
  rl = pipeline.rl_config(config, str(tmp_path))
  assert rl.mode == "rl" and rl.rl.init_from_sft == str(tmp_path / "sft")
  assert rl.optimizer.lr == config.rl_optimizer.lr != config.optimizer.lr
  # Evaluation samples at pipeline.eval.temperature whatever temperature RL samples at.
  hot = demo_config(**{"rl.temperature": 1.0, "pipeline.eval.temperature": 0.6})
  cold = demo_config(**{"rl.temperature": 0.6, "pipeline.eval.temperature": 0.3})
  assert (
      pipeline.eval_settings(hot).temperature == 0.6
      and pipeline.eval_settings(cold).temperature == 0.3
  )
  assert pipeline.rl_config(hot, str(tmp_path)).rl.temperature == 1.0
  assert pipeline.rl_config(cold, str(tmp_path)).rl.temperature == 0.6


def test_unknown_teacher_family_or_sft_override_is_a_config_error(tmp_path):
  from biomni_jax.config_utils import ConfigError

  with pytest.raises(
      ConfigError, match="pipeline.sft_overrides.epochs': not a field of section 'sft'"
  ):
    pipeline.sft_config(demo_config(**{"pipeline.sft_overrides": {"epochs": 3}}), str(tmp_path))
  with pytest.raises(ConfigError, match="pipeline.teacher.families': unknown \\['nope'\\]"):
    pipeline.run_pipeline(demo_config(**{"pipeline.teacher.families": ["nope"]}), str(tmp_path))
  # RL on a family the teacher data never taught: named before any stage runs, nothing written.
  untaught = demo_config(**{"pipeline.teacher.families": ["locus_causal_gene"]})
  with pytest.raises(
      ConfigError, match="rl.task_families': \\['sequence_qa'\\] not in pipeline.teacher"
  ):
    pipeline.run_pipeline(untaught, str(tmp_path / "untaught"))
  assert not (tmp_path / "untaught").exists()
  for bad, message in (
      ([[64]], "expected \\[length, count\\] pairs of positive integers, found \\[\\[64\\]\\]"),
      ([[64, 0]], "expected .* pairs of positive integers, found \\[\\[64, 0\\]\\]"),
      ([[4, 10]], "a copy example needs at least 8 tokens"),
  ):
    with pytest.raises(ConfigError, match="pipeline.sft_copy_examples': " + message):
      pipeline.run_pipeline(demo_config(**{"pipeline.sft_copy_examples": bad}), str(tmp_path / "b"))
  no_base = demo_config(**{"pipeline.pretrain.base": "none"})
  with pytest.raises(ConfigError, match="copy examples need the base's tokenizer"):
    pipeline.run_pipeline(no_base, str(tmp_path / "b"))
  assert not (tmp_path / "b").exists()


TINY = {
    "mode": "pipeline",
    "model.overrides.num_hidden_layers": 1,
    "model.overrides.hidden_size": 64,
    "model.overrides.intermediate_size": 128,
    "model.overrides.head_dim": 16,
    "tokenizer.vocab_size": 600,
    "sft.num_steps": 2,
    "sft.batch_size": 2,
    "sft.seq_len": 512,
    "sft.progress_bar": False,
    "sft.tensorboard": False,
    "sft.async_checkpoint": False,
    "optimizer.warmup_steps": 1,
    "rl.task_families": ["sequence_qa"],
    "rl.tasks_per_family": 2,
    "rl.num_steps": 1,
    "rl.num_groups": 1,
    "rl.group_size": 2,
    "rl.num_minibatches": 1,
    "rl.seq_len": 512,
    "rl.engine.max_len": 512,
    "rl.engine.num_slots": 2,
    "rl.rollout.max_turns": 1,
    "rl.rollout.max_new_tokens_per_turn": 8,
    "rl.rollout.max_context_tokens": 500,
    "rl.rollout.overlong_threshold": 500,
    "rl.progress_bar": False,
    "rl.tensorboard": False,
    "rl.async_checkpoint": False,
    "rl.sandbox_workers": 1,
    "pipeline.teacher.families": ["sequence_qa"],
    "pipeline.teacher.train_per_family": 2,
    "pipeline.teacher.val_per_family": 1,
    "pipeline.teacher.n_samples": 1,
    "pipeline.teacher.workers": 1,
    "pipeline.eval.tasks_per_family": 1,
    "pipeline.eval.samples": 2,
    "pipeline.pretrain.base": "train",
    "pipeline.pretrain.copy_stages": [[32, 1], [64, 1]],
    "pipeline.pretrain.documents_steps": 1,
    "pipeline.pretrain.warmup_steps": 1,
    "pipeline.pretrain.eval_rows": 1,
    "pipeline.sft_overrides.num_steps": 2,
    "pipeline.sft_copy_examples": [[32, 2], [16, 1]],
}


def test_tiny_pipeline_end_to_end(tmp_path):
  workdir = str(tmp_path / "run")
  out = pipeline.run_pipeline(demo_config(**TINY), workdir)
  result = json.load(open(os.path.join(workdir, "eval.json")))
  assert set(result["tasks"]["sequence_qa"]) >= {"base", "sft", "rl"}
  assert result["episodes"] == {"base": 2, "sft": 2, "rl": 2}
  assert out["average_rl"] == result["average"]["rl"]
  html = open(os.path.join(workdir, "report.html")).read()
  assert html.count("<svg") == 3 and "sequence_qa" in html and "<details" in html
  rows = [json.loads(l) for l in open(os.path.join(workdir, "eval", "rl", "trajectories.jsonl"))]
  assert len(rows) == 2 and all(r["messages"][0]["role"] == "user" for r in rows)
  for name in pipeline.STAGES:
    assert pipeline.read_marker(workdir, name), name
  # The base model is the curriculum run, exported; SFT starts from it (same tokenizer and vocabulary).
  docs = [
      t
      for t in map(json.loads, open(os.path.join(workdir, "pretrain", "data", "base_train.jsonl")))
      if t["task"]["task_name"] == "document"
  ]
  assert len(docs) == 2 and all(
      "<solution>" not in m["content"] and "<execute>" not in m["content"]
      for d in docs
      for m in d["messages"]
  )
  # SFT's data: the teacher trajectories, then the copy examples (loss on the copied half only).
  teacher = [json.loads(l) for l in open(os.path.join(workdir, "data", "sft_train.jsonl"))]
  mixed = [json.loads(l) for l in open(os.path.join(workdir, "data", "sft_train_with_copy.jsonl"))]
  assert mixed[: len(teacher)] == teacher and len(mixed) == len(teacher) + 3
  for row, length in zip(mixed[len(teacher) :], (32, 32, 16)):
    assert row["task"]["task_name"] == "copy_row" and len(row["token_ids"]) == length
    tokens, mask = np.asarray(row["token_ids"]), np.asarray(row["loss_mask"])
    k = int(mask.sum()) + 1  # the repeated segment; its first token starts the copy, unlearned
    assert 2 <= k <= length // 2 and mask[-(k - 1) :].all() and not mask[: -(k - 1)].any()
    np.testing.assert_array_equal(tokens[-k:], tokens[-2 * k : -k])
  before = open(os.path.join(workdir, "data", "sft_train_with_copy.jsonl"), "rb").read()
  pipeline.write_sft_mix(
      demo_config(**TINY), workdir
  )  # a resumed SFT stage trains on the same rows
  assert open(os.path.join(workdir, "data", "sft_train_with_copy.jsonl"), "rb").read() == before
  base = pipeline.base_agent(workdir)
  assert base.source == os.path.join(workdir, "base")
  from biomni_jax.eval.agents import load_run_agent

  pretrained = load_run_agent(os.path.join(workdir, "pretrain", "run"))
  for a, b in zip(jax.tree.leaves(pretrained.params), jax.tree.leaves(base.params)):
    np.testing.assert_array_equal(a, b)
  sft_config = json.load(open(os.path.join(workdir, "sft", "config.json")))
  assert (
      sft_config["model"]["init_from"]
      == sft_config["tokenizer"]["path"]
      == os.path.join(workdir, "base")
  )
  sft, rl = load_run_agent(os.path.join(workdir, "sft")), load_run_agent(
      os.path.join(workdir, "rl")
  )
  assert (
      rl.source.endswith("rl@1")
      and sft.source.endswith("sft@2")
      and rl.model_config == sft.model_config
  )
  assert (
      rl.params["embed_tokens"]["embedding"].shape == sft.params["embed_tokens"]["embedding"].shape
  )
  relative = load_run_agent(
      os.path.relpath(os.path.join(workdir, "sft"))
  )  # a relative workdir loads too
  np.testing.assert_array_equal(
      relative.params["embed_tokens"]["embedding"], sft.params["embed_tokens"]["embedding"]
  )
  t0 = time.monotonic()
  pipeline.run_pipeline(demo_config(**TINY), workdir)  # resumes: every stage is done
  assert time.monotonic() - t0 < 5


@pytest.mark.slow
def test_full_demo_command(tmp_path):
  """The README's first command; held-out success should rise base -> SFT -> RL (reported, not asserted:
  with 48 held-out episodes the RL margin is within noise)."""
  t0 = time.monotonic()
  proc = subprocess.run(
      [
          sys.executable,
          "-m",
          "biomni_jax.main",
          "--config=configs/demo.py",
          f"--workdir={tmp_path}",
      ],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=1800,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  wall = time.monotonic() - t0
  result = json.load(open(tmp_path / "eval.json"))
  assert result["average"]["sft"] > result["average"]["base"]
  assert (tmp_path / "report.html").stat().st_size > 10_000
  assert wall < 20 * 60, wall


def test_rl_trains_on_tasks_the_teacher_data_never_held(tmp_path):
  from biomni_jax.env.tasks import get_family
  from biomni_jax.train import rl_run

  config = demo_config()
  rl_tasks = rl_run.build_tasks(pipeline.rl_config(config, str(tmp_path)))
  teacher = config.pipeline.teacher
  sft_ids = {
      t.instance_id
      for name in teacher.families
      for t in get_family(name).instances("train", teacher.train_per_family)
  }
  rl_ids = {t.instance_id for t in rl_tasks}
  assert len(rl_ids) == len(rl_tasks) == len(config.rl.task_families) * config.rl.tasks_per_family
  assert not rl_ids & sft_ids
  assert min(int(i.rsplit("/", 1)[1]) for i in rl_ids) == teacher.train_per_family
