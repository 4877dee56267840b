"""The RL loop on the tiny model with a pool that really samples from the engine (one turn per episode,
reward = fraction of sampled tokens with an even id): recomputed old log-probs equal the sampler's for an
on-policy batch; the first mini-batch sees ratio 1; published weights reach the engine with their version;
a run interrupted after a checkpoint and resumed hands out exactly the tasks of an uninterrupted run.
"""

import os
import pathlib
import zlib

import jax
import numpy as np
import pytest

from biomni_jax.config_utils import load_config_file
from biomni_jax.rollout.types import Group, TokenTrajectory
from biomni_jax.sampling import SamplingParams
from biomni_jax.train import rl, rl_run
from biomni_jax.train.metrics import read_jsonl_metrics

REPO = pathlib.Path(__file__).resolve().parents[2]
PROMPT_TOKENS = 12
NEW_TOKENS = 6


def demo_rl_config(**overrides):
  fast = {
      "model.overrides.hidden_size": 32,
      "model.overrides.intermediate_size": 64,
      "model.overrides.num_hidden_layers": 2,
      "model.overrides.head_dim": 8,
      "model.overrides.attention_block_q": 32,
      "model.overrides.attention_block_kv": 32,
      "model.overrides.logits_chunk": 32,
      "tokenizer.vocab_size": 512,
      "rl.task_families": ["sequence_qa"],
      "rl.tasks_per_family": 12,
      "rl.num_groups": 2,
      "rl.group_size": 4,
      "rl.num_minibatches": 2,
      "rl.seq_len": 32,
      "rl.pack": False,
      "rl.rows_multiple_of": 4,
      "rl.logprob_batch_rows": 4,
      "rl.engine.num_slots": 4,
      "rl.engine.max_len": 64,
      "rl.engine.max_prefill_chunk": 16,
      "rl.save_every": 1,
      "rl.async_checkpoint": False,
      "rl.tensorboard": False,
      "rl.progress_bar": False,
      "rl.temperature": 1.0,
      "rl.loss.kl_coef": 0.0,  # the policy gradient alone (test_kl_term_... turns the term on)
      "optimizer.lr": 1e-2,
  }
  fast.update(overrides)
  return load_config_file(REPO / "configs" / "demo_rl.py", fast)


class EnginePool:
  """A one-turn rollout pool: G samples of NEW_TOKENS per task, straight from the engine."""

  handed_out: list = []  # every instance id returned by get_groups, across pools of a test

  def __init__(self, *, engine, tokenizer, tasks, config, settings):
    self.engine, self.tokenizer, self.tasks, self.s = engine.engine, tokenizer, tasks, settings
    self.version, self.consumed, self.skip, self.next_group = 0, [], set(), 0

  def restore_consumed(self, ids):
    self.consumed, self.skip = list(ids), set(ids)

  def publish_version(self, version):
    self.version = version

  def start(self):
    pass

  def stop(self):
    pass

  def consumed_task_ids(self):
    return list(self.consumed)

  def stats(self):
    return {"engine": {"decode_steps": self.engine.stats["decode_steps"]}, "note": "fake"}

  def get_groups(self, num_groups, timeout_s=None):
    groups = []
    while len(groups) < num_groups:
      task = next(self.tasks)
      if task.instance_id in self.skip:
        continue
      groups.append(self.sample_group(task))
      self.consumed.append(task.instance_id)
      EnginePool.handed_out.append(task.instance_id)
    return groups

  def sample_group(self, task):
    prompt = np.asarray(self.tokenizer.encode(task.prompt)[:PROMPT_TOKENS], np.int32)
    trajectories = []
    for g in range(self.s.group_size):
      seed = zlib.crc32(f"{task.instance_id}/{g}".encode())
      c = self.engine.generate(
          prompt,
          SamplingParams(temperature=self.s.temperature, max_new_tokens=NEW_TOKENS, seed=seed),
      ).result()
      sampled = np.asarray(c.token_ids, np.int32)
      reward = float(np.mean(sampled % 2 == 0))
      n = len(prompt)
      trajectories.append(
          TokenTrajectory(
              task_name=task.task_name,
              instance_id=task.instance_id,
              group_id=self.next_group,
              token_ids=np.concatenate([prompt, sampled]),
              loss_mask=np.concatenate([np.zeros(n, np.int32), np.ones(len(sampled), np.int32)]),
              sampler_logprobs=np.concatenate(
                  [np.zeros(n, np.float32), np.asarray(c.logprobs, np.float32)]
              ),
              policy_versions=np.concatenate(
                  [np.full(n, -1, np.int32), np.asarray(c.token_versions, np.int32)]
              ),
              prompt_len=n,
              correctness=reward,
              format=0.0,
              reward=reward,
              num_turns=1,
              termination="solution",
              tool_seconds=0.0,
              generate_seconds=0.0,
              messages=[],
          )
      )
    group = Group(task.task_name, task.instance_id, self.next_group, trajectories)
    self.next_group += 1
    return group


@pytest.fixture
def compilation_cache(tmp_path_factory):
  """A persistent compilation cache for this test only: a resumed run reuses the programs of the first."""
  names = (
      "jax_compilation_cache_dir",
      "jax_persistent_cache_min_compile_time_secs",
      "jax_persistent_cache_min_entry_size_bytes",
  )
  before = {n: getattr(jax.config, n) for n in names}
  jax.config.update("jax_compilation_cache_dir", str(tmp_path_factory.mktemp("jax_cache")))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield
  for n, v in before.items():
    jax.config.update(n, v)


def spy_on_trainer(monkeypatch):
  """Records, per mini-batch, (recomputed old log-probs, sampler log-probs, target mask), and the metrics."""
  captured = {"pairs": [], "metrics": []}
  original = rl.RLTrainer.train_on_groups

  def spy(self, state, groups, rl_step):
    minibatches, _ = self.build(groups, rl_step)
    for rows in minibatches:
      old = rl.recompute_logprobs(self.logprob_fn, state.params, rows, 4, self.sharding)
      captured["pairs"].append((old, rows["sampler_logprobs"], rows["target_mask"]))
    state, metrics = original(self, state, groups, rl_step)
    captured["metrics"].append(metrics)
    return state, metrics

  monkeypatch.setattr(rl.RLTrainer, "train_on_groups", spy)
  return captured


def expected_stream(config, count):
  tasks = rl_run.build_tasks(config)
  stream = rl_run.task_stream(tasks, config.rl.epochs, config.seed)
  return [next(stream).instance_id for _ in range(count)]


def test_on_policy_logprobs_then_resume_without_repeating_or_skipping_tasks(
    tmp_path, monkeypatch, compilation_cache
):
  captured = spy_on_trainer(monkeypatch)
  EnginePool.handed_out = []
  first = rl_run.train_rl(
      demo_rl_config(**{"rl.num_steps": 2}), str(tmp_path / "run"), pool_factory=EnginePool
  )
  assert first["start_step"] == 0 and first["final_step"] == 4  # 2 RL steps x 2 mini-batches

  # Version 0 sampled the first batch with the params the trainer recomputes with: equal log-probs.
  old, sampler, mask = captured["pairs"][0]
  on = mask > 0
  assert on.sum() == 4 * NEW_TOKENS  # half of the 2 x 4 trajectories, every sampled token a target
  np.testing.assert_allclose(old[on], sampler[on], atol=1e-4)
  m = captured["metrics"][0]
  assert (
      m["logprob_diff_abs"] < 1e-4 and abs(m["sampler_kl"]) < 1e-6 and m["optimizer_steps"] == 2.0
  )
  # The first mini-batch runs at the params its old log-probs came from (ratio exactly 1); the second
  # after one update, so the logged extremes bracket 1 and something moved.
  assert m["ratio_min"] <= 1.0 + 1e-6 <= m["ratio_max"] + 1e-6
  assert m["ratio_max"] - m["ratio_min"] > 1e-4
  # After the first publish the engine samples with version 1, and the trainer agrees with it again.
  old, sampler, mask = captured["pairs"][2]
  np.testing.assert_allclose(old[mask > 0], sampler[mask > 0], atol=1e-4)

  config = demo_rl_config(**{"rl.num_steps": 3})
  resumed = rl_run.train_rl(config, str(tmp_path / "run"), pool_factory=EnginePool)
  assert resumed["start_step"] == 2 and resumed["final_step"] == 6
  assert EnginePool.handed_out == expected_stream(config, 6)  # in order, none twice, none skipped
  records = read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")
  assert [r["step"] for r in records] == [1, 2, 3]
  for key in (
      "reward",
      "pass@1",
      "pass@4",
      "staleness/0",
      "clip_low_frac",
      "clip_high_frac",
      "dual_clip_frac",
      "ratio_mean",
      "pool/engine/decode_steps",
      "length_reward_corr",
      "success/sequence_qa",
      "grad_norm",
      "turns",
      "tokens_per_episode",
      "tool_seconds",
  ):
    assert key in records[-1], key
  # S = 0 with a synchronous pool: every trained token came from the current version.
  assert all(r["staleness/0"] == 1.0 for r in records)
  assert [r["version"] for r in records] == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_resumed_run_ends_with_the_params_of_an_uninterrupted_run(tmp_path, compilation_cache):
  EnginePool.handed_out = []
  full = rl_run.train_rl(
      demo_rl_config(**{"rl.num_steps": 3}), str(tmp_path / "full"), pool_factory=EnginePool
  )
  uninterrupted = list(EnginePool.handed_out)
  EnginePool.handed_out = []
  rl_run.train_rl(
      demo_rl_config(**{"rl.num_steps": 2}), str(tmp_path / "resumed"), pool_factory=EnginePool
  )
  resumed = rl_run.train_rl(
      demo_rl_config(**{"rl.num_steps": 3}), str(tmp_path / "resumed"), pool_factory=EnginePool
  )
  assert EnginePool.handed_out == uninterrupted
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      full["state"].params,
      resumed["state"].params,
  )


def test_more_steps_than_the_task_supply_is_a_config_error_before_training(tmp_path):
  from biomni_jax.config_utils import ConfigError

  # 12 tasks x 1 epoch feed 6 steps of 2 groups; a 7th step would find the task stream empty mid-run.
  with pytest.raises(ConfigError, match=r"rl.num_steps.*14 task instances.*1 x 12"):
    rl_run.train_rl(
        demo_rl_config(**{"rl.num_steps": 7}), str(tmp_path / "run"), pool_factory=EnginePool
    )
  assert not os.path.exists(tmp_path / "run" / "checkpoints") or not os.listdir(
      tmp_path / "run" / "checkpoints"
  )


def test_policy_gradient_raises_the_reward_it_is_trained_on(tmp_path):
  """End to end through the engine, batch building, advantages, loss, optimizer and weight publishing:
  with reward = fraction of sampled tokens with an even id, the sampled even fraction climbs from chance.
  (A sign error, a shift between targets and log-probs or a stale engine would leave it at ~0.5.)"""
  config = demo_rl_config(
      **{
          "rl.num_steps": 20,
          "rl.tasks_per_family": 48,
          "rl.save_every": 0,
          "rl.num_minibatches": 1,
          "optimizer.lr": 3e-2,
      }
  )
  summary = rl_run.train_rl(config, str(tmp_path / "run"), pool_factory=EnginePool)
  rewards = [summary["rewards"][k] for k in sorted(summary["rewards"])]
  first, last = np.mean(rewards[:3]), np.mean(rewards[-3:])
  assert 0.3 < first < 0.7, rewards  # a random init samples even and odd ids about equally
  assert last > 0.85, rewards


def test_kl_term_holds_the_policy_to_the_initial_params(tmp_path, monkeypatch, compilation_cache):
  """rl.loss.kl_coef > 0: the trainer computes log pi_ref under the initial params (kept apart from the
  donated train state) and the logged kl is the k3 estimate, mean over sampled tokens of
  exp(ref - logp) - (ref - logp) - 1, recomputed here in numpy from the two policies' log-probs."""
  expected = []
  original = rl.RLTrainer.train_on_groups

  def spy(self, state, groups, rl_step):
    (rows,), _ = self.build(groups, rl_step)  # one mini-batch: the loss runs at these params
    logp = rl.recompute_logprobs(self.logprob_fn, state.params, rows, 4, self.sharding)
    ref = rl.recompute_logprobs(self.logprob_fn, self.reference_params, rows, 4, self.sharding)
    on = rows["target_mask"] > 0
    d = (ref - logp)[on].astype(np.float64)
    expected.append(float(np.mean(np.exp(d) - d - 1.0)))
    return original(self, state, groups, rl_step)

  monkeypatch.setattr(rl.RLTrainer, "train_on_groups", spy)
  config = demo_rl_config(
      **{
          "rl.num_steps": 3,
          "rl.num_minibatches": 1,
          "rl.save_every": 0,
          "rl.loss.kl_coef": 0.5,
      }
  )
  rl_run.train_rl(config, str(tmp_path / "run"), pool_factory=EnginePool)
  records = read_jsonl_metrics(tmp_path / "run" / "metrics.jsonl")
  kl = [r["kl"] for r in records]
  # Step 1 trains the initial params themselves; later steps have moved away from them.
  assert kl[0] == pytest.approx(0.0, abs=1e-7) and expected[0] == pytest.approx(0.0, abs=1e-7)
  assert min(kl[1:]) > 1e-6, kl
  np.testing.assert_allclose(kl, expected, rtol=1e-3, atol=1e-8)

  settings = rl.RLSettings.from_config(config)
  with pytest.raises(ValueError, match="kl_coef = 0.5 > 0 needs the reference policy"):
    rl.RLTrainer(None, settings, None, None)
