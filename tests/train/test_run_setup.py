"""Run setup shared by SFT and RL (train/run_setup.py) and the SFT settings: the optimizer's total
steps, a restorable optimizer for a run that left them unset, start or resume, the tokenizer's size
against the model's vocabulary, and SFTSettings' defaults and errors naming the config field."""

import dataclasses

import jax
import numpy as np
import pytest

from biomni_jax.config_utils import ConfigError
from biomni_jax.sharding import ShardingRules, make_mesh
from biomni_jax.train import run_setup
from biomni_jax.train.sft import SFTSettings

OPTIMIZER = {"lr": 1e-3, "schedule": "warmup_cosine", "warmup_steps": 2, "final_lr_fraction": 0.1}


def test_run_optimizer_fills_total_steps_only_when_the_config_leaves_them_0():
  _, schedule = run_setup.run_optimizer({"optimizer": dict(OPTIMIZER, total_steps=0)}, 12)
  # Cosine from lr at step 2 down to 0.1 lr at the run's 12 steps.
  np.testing.assert_allclose(float(schedule(12)), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(float(schedule(7)), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-5)
  _, schedule = run_setup.run_optimizer({"optimizer": dict(OPTIMIZER, total_steps=22)}, 12)
  np.testing.assert_allclose(float(schedule(12)), 1e-3 * (0.1 + 0.9 * 0.5), rtol=1e-5)
  with pytest.raises(ConfigError, match="total_steps"):
    run_setup.run_optimizer({"optimizer": dict(OPTIMIZER, warmup_steps=50)}, 10)


def test_structure_optimizer_restores_a_run_whose_total_steps_were_unset():
  params = {"w": np.ones((3, 2), np.float32), "norm": {"scale": np.ones(2, np.float32)}}
  unset = run_setup.structure_optimizer(dict(OPTIMIZER, total_steps=0)).init(params)
  run = run_setup.run_optimizer({"optimizer": dict(OPTIMIZER, total_steps=0)}, 40)[0].init(params)
  assert jax.tree.structure(unset) == jax.tree.structure(run)


def test_start_or_resume_and_the_vocabulary_check(tmp_path):
  config = {
      "model": {"preset": "tiny", "overrides": {"hidden_size": 32, "num_hidden_layers": 1}},
      "tokenizer": {"vocab_size": 512},
      "optimizer": dict(OPTIMIZER, total_steps=0),
  }
  workdir = run_setup.run_workdir(str(tmp_path / "run"))
  sharding = ShardingRules(make_mesh())
  tokenizer, model_cfg, params = run_setup.model_and_tokenizer(config, workdir, sharding)
  assert params is None and model_cfg.vocab_size >= len(tokenizer)
  assert (tmp_path / "run" / run_setup.TOKENIZER_DIR / "tokenizer.json").exists()
  optimizer, _ = run_setup.run_optimizer(config, 5)
  with run_setup.open_checkpointer(workdir, keep=2, async_save=False) as ckpt:
    state, step, extra = run_setup.start_or_resume(ckpt, model_cfg, optimizer, 0, sharding)
    assert (step, extra, int(state.step)) == (0, {}, 0)
    ckpt.save(3, state, {"note": "x"}, force=True)
  with run_setup.open_checkpointer(workdir, keep=2, async_save=False) as ckpt:
    again, step, extra = run_setup.start_or_resume(ckpt, model_cfg, optimizer, 1, sharding)
  assert (step, extra) == (3, {"note": "x"})
  # The saved params come back (a new init, here from seed 1, would differ).
  leaves = zip(jax.tree.leaves(again.params), jax.tree.leaves(state.params))
  assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in leaves)

  small = dict(config, model={"preset": "tiny", "overrides": {"vocab_size": 100}})
  with pytest.raises(ConfigError, match="vocab_size=100 is smaller than the tokenizer's 512"):
    run_setup.model_and_tokenizer(small, workdir, sharding)


def test_sft_settings_defaults_frozen_and_errors_naming_the_field():
  s = SFTSettings.from_config({"sft": {"batch_size": 4, "seq_len": 128}})
  assert (s.micro_batches, s.pack, s.overlong, s.aggregation, s.num_epochs) == (
      1,
      True,
      "truncate",
      "token-mean",
      1,
  )
  with pytest.raises(dataclasses.FrozenInstanceError):
    s.batch_size = 8
  bad = [
      ({"micro_batches": 3}, r"'sft.micro_batches': 3 does not divide sft.batch_size=4"),
      ({"seq_len": 1}, r"'sft.seq_len': expected >= 2, found 1"),
      ({"loss_aggregation": "mean"}, r"'sft.loss_aggregation': expected one of \('token-mean'"),
      ({"overlong": "cut"}, r"'sft.overlong': expected one of .*found 'cut'"),
  ]
  for extra, match in bad:
    with pytest.raises(ConfigError, match=match):
      SFTSettings.from_config({"sft": {"batch_size": 4, "seq_len": 128, **extra}})
