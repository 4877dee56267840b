"""The rollout pool with a scripted engine and a fake sandbox: staleness, faults, resume, exhaustion."""

import functools
import time

import numpy as np
import pytest

from biomni_jax.rollout.config import RolloutConfig
from biomni_jax.rollout.pool import RolloutError, RolloutPool
from tests.rollout.conftest import TOY, FakeSandbox, ScriptedEngine, answer_from_prompt, toy_env, toy_tasks


def make_pool(renderer, engine, cfg, n_tasks=100, sandbox=None, tasks=None):
  tasks = toy_tasks(n_tasks) if tasks is None else tasks
  return RolloutPool(
      engine, sandbox or FakeSandbox(), renderer, tasks, cfg, environments={TOY: toy_env()}
  )


def fake_trainer(pool, engine, steps, batch, train_s=0.0, timeout_s=30.0):
  """get_groups -> (pretend to train) -> update_params -> publish_version; returns [(version, groups, stats)]."""
  version, seen = 0, []
  for _ in range(steps):
    groups = pool.get_groups(batch, timeout_s=timeout_s)
    seen.append((version, groups, pool.stats()))
    time.sleep(train_s)
    version += 1
    engine.update_params(None, version)
    pool.publish_version(version)
  return seen


def sampled_versions(group):
  return np.concatenate([t.policy_versions[t.loss_mask == 1] for t in group.trajectories])


def test_s0_every_returned_token_was_sampled_by_the_current_version(renderer):
  replies = functools.partial(answer_from_prompt, code="sleep 0.02", turns=3)
  engine = ScriptedEngine(renderer, replies, delay_s=0.01)
  cfg = RolloutConfig(group_size=3, groups_per_batch=4, max_staleness=0, max_concurrent_episodes=6)
  with make_pool(renderer, engine, cfg) as pool:
    seen = fake_trainer(pool, engine, steps=4, batch=4, train_s=0.05)
  for version, groups, stats in seen:
    assert len(groups) == 4 and all(len(g.trajectories) == 3 for g in groups)
    for g in groups:
      assert (sampled_versions(g) == version).all()
      assert all(t.reward == 2.0 and t.termination == "solution" for t in g.trajectories)
    # Batch-synchronous: nothing of the next batch ran while the trainer held this one.
    assert stats["episodes_in_flight"] == 0 and stats["admitted_groups"] == 4 * (version + 1)
  ids = [g.instance_id for _, groups, _ in seen for g in groups]
  assert len(set(ids)) == 16 and sorted(pool.consumed_task_ids()) == sorted(ids)
  assert pool.stats()["staleness_histogram"] == {0: 16 * 3}


def test_s2_no_token_older_than_two_versions_and_generation_runs_ahead(renderer):
  replies = functools.partial(answer_from_prompt, code="sleep 0.03", turns=4)
  engine = ScriptedEngine(renderer, replies, delay_s=0.02)
  cfg = RolloutConfig(group_size=2, groups_per_batch=3, max_staleness=2, max_concurrent_episodes=12)
  with make_pool(renderer, engine, cfg) as pool:
    seen = fake_trainer(pool, engine, steps=8, batch=3, train_s=0.06)
    stats = pool.stats()
  oldest_lag = 0
  for version, groups, _ in seen:
    for g in groups:
      v = sampled_versions(g)
      assert v.min() >= version - 2 and v.max() <= version + 1
      oldest_lag = max(oldest_lag, version - v.min())
  assert oldest_lag >= 1, "S = 2 should let generation run ahead of training"
  assert max(stats["staleness_histogram"]) <= 2


def test_straggler_is_restarted_rather_than_returned_stale(renderer):
  def replies(turn, text):  # instance 0 runs slow code every turn; everyone else is quick
    slow = "Say 0." in text
    return answer_from_prompt(turn, text, code="sleep 0.4" if slow else "sleep 0.005", turns=3)

  engine = ScriptedEngine(renderer, replies)
  cfg = RolloutConfig(group_size=1, groups_per_batch=2, max_staleness=1, max_concurrent_episodes=8)
  with make_pool(renderer, engine, cfg, n_tasks=40) as pool:
    seen = fake_trainer(pool, engine, steps=12, batch=2, train_s=0.06)
    stats = pool.stats()
  for version, groups, _ in seen:
    for g in groups:
      assert sampled_versions(g).min() >= version - 1
  assert stats["stale_restarts"] >= 1


def test_slow_tools_do_not_deadlock_and_overlap(renderer):
  replies = functools.partial(answer_from_prompt, code="sleep 0.3", turns=3)
  engine = ScriptedEngine(renderer, replies)
  cfg = RolloutConfig(group_size=4, groups_per_batch=2, max_staleness=0, max_concurrent_episodes=8)
  start = time.monotonic()
  with make_pool(renderer, engine, cfg) as pool:
    groups = pool.get_groups(2, timeout_s=20)
  elapsed = time.monotonic() - start
  assert sum(len(g.trajectories) for g in groups) == 8
  # 8 episodes x 2 tool calls x 0.3 s = 4.8 s serially; concurrently about 0.6 s.
  assert elapsed < 2.5


@pytest.mark.parametrize("policy", ["exclude", "zero_reward"])
def test_engine_errors_fail_only_their_episodes(renderer, policy):
  def fail(turn, text):  # every episode of instances 1, 3, 5 fails at turn 2
    return turn == 2 and any(f"Say {i}." in text for i in (1, 3, 5))

  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2), fail=fail)
  cfg = RolloutConfig(group_size=2, groups_per_batch=6, max_staleness=0, error_policy=policy)
  with make_pool(renderer, engine, cfg, n_tasks=6) as pool:
    groups = pool.get_groups(6, timeout_s=20)
    stats = pool.stats()
  by_instance = {g.instance_id: g for g in groups}
  # "exclude" drops a group whose episodes all failed (the task still counts as consumed).
  assert len(by_instance) == (3 if policy == "exclude" else 6)
  assert stats["groups_dropped"] == (3 if policy == "exclude" else 0)
  assert sorted(pool.consumed_task_ids()) == sorted(f"{TOY}/train/{i}" for i in range(6))
  for i in range(6):
    g = by_instance.get(f"{TOY}/train/{i}")
    if i % 2 == 0:
      assert [t.reward for t in g.trajectories] == [2.0, 2.0]
    elif policy == "exclude":
      assert g is None
    else:
      assert [t.termination for t in g.trajectories] == ["error", "error"]
      assert [t.reward for t in g.trajectories] == [0.0, 0.0]
  assert stats["episode_errors"] == 6


def test_engine_errors_partial_group(renderer):
  # Only the first session ever opened fails: its group keeps one trajectory under "exclude".
  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2))
  first = []

  def fail(turn, text):
    first.append(text)
    return len(first) == 1

  engine.fail = fail
  cfg = RolloutConfig(
      group_size=2, groups_per_batch=1, max_concurrent_episodes=1, error_policy="exclude"
  )
  with make_pool(renderer, engine, cfg, n_tasks=3) as pool:
    (group,) = pool.get_groups(1, timeout_s=20)
  assert len(group.trajectories) == 1 and group.trajectories[0].reward == 2.0


def test_an_engine_that_always_fails_is_reported_not_waited_on(renderer):
  engine = ScriptedEngine(
      renderer, functools.partial(answer_from_prompt, turns=2), fail=lambda *_: True
  )
  cfg = RolloutConfig(group_size=2, groups_per_batch=2, max_failed_groups_in_a_row=3)
  with make_pool(renderer, engine, cfg) as pool:
    with pytest.raises(RolloutError, match="3 groups in a row.*scripted engine failure"):
      pool.get_groups(2, timeout_s=20)


def test_resume_neither_repeats_nor_skips(renderer):
  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2), delay_s=0.005)
  cfg = RolloutConfig(group_size=2, groups_per_batch=2, max_staleness=1)
  with make_pool(renderer, engine, cfg, n_tasks=10) as pool:
    first = [g.instance_id for _, gs, _ in fake_trainer(pool, engine, steps=2, batch=2) for g in gs]
    checkpoint = pool.consumed_task_ids()
  assert sorted(checkpoint) == sorted(first)

  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2))
  pool = make_pool(renderer, engine, cfg, n_tasks=10)
  pool.restore_consumed(checkpoint)
  with pool:
    rest, version = [], 0
    while True:
      groups = pool.get_groups(2, timeout_s=20)
      if not groups:
        break
      rest += [g.instance_id for g in groups]
      version += 1
      engine.update_params(None, version)
      pool.publish_version(version)
    assert pool.get_groups(2, timeout_s=1) == []
    assert sorted(pool.consumed_task_ids()) == sorted(first + rest)
  assert sorted(first + rest) == sorted(f"{TOY}/train/{i}" for i in range(10))


def test_asking_past_admission_without_publishing_raises_instead_of_hanging(renderer):
  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2))
  with make_pool(
      renderer, engine, RolloutConfig(group_size=1, groups_per_batch=2, max_staleness=1)
  ) as pool:
    assert len(pool.get_groups(4, timeout_s=20)) == 4
    with pytest.raises(
        RolloutError, match="admission is full .4 of 4 groups at version 0.: call publish_version"
    ):
      pool.get_groups(1, timeout_s=20)
    engine.update_params(None, 1)
    pool.publish_version(1)
    assert len(pool.get_groups(2, timeout_s=20)) == 2


def test_publishing_versions_the_engine_never_received_is_reported(renderer):
  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, turns=2))
  with make_pool(renderer, engine, RolloutConfig(group_size=2, groups_per_batch=2)) as pool:
    pool.get_groups(2, timeout_s=20)
    pool.publish_version(1)  # without engine.update_params: every new token would be stale forever
    with pytest.raises(RolloutError, match="sampled version 0 after version 1 was published"):
      pool.get_groups(2, timeout_s=20)


def test_get_groups_times_out_and_checks_arguments(renderer):
  engine = ScriptedEngine(renderer, functools.partial(answer_from_prompt, code="sleep 5", turns=2))
  pool = make_pool(renderer, engine, RolloutConfig(group_size=1, groups_per_batch=1))
  with pytest.raises(RuntimeError, match="start"):
    pool.get_groups(1)
  with pool:
    with pytest.raises(TimeoutError, match="0 of 1 groups ready"):
      pool.get_groups(1, timeout_s=0.2)
    with pytest.raises(ValueError):
      pool.get_groups(0)
    with pytest.raises(RuntimeError, match="before start"):
      pool.restore_consumed([])
  # stop() cancelled the sleeping episode: its sandbox session was closed.
  assert all(s.closed for s in pool.sandbox.sessions)
