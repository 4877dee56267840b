"""Groups -> RL training rows: advantages per group broadcast onto exactly the sampled target positions,
masks and per-token fields shifted onto the predicting position, overlong-and-malformed trajectories out of
the loss but inside their group's mean, packing equal to one-per-row, episode metrics by hand."""

import numpy as np
import pytest

from biomni_jax.metrics import pass_at_k
from biomni_jax.rollout.types import Group, TokenTrajectory
from biomni_jax.train import rl_batch, rl_metrics


def traj(
    task,
    iid,
    gid,
    prompt_len,
    replies,
    reward,
    *,
    correctness=None,
    version=0,
    overlong=False,
    seed=0,
):
  """A trajectory: a prompt of prompt_len tokens, then for each (sampled, observation) lengths a sampled
  reply and an observation; sampler log-probs -0.1 * (1 + index) on sampled tokens."""
  rng = np.random.default_rng(seed)
  ids, mask = list(rng.integers(1, 50, prompt_len)), [0] * prompt_len
  for sampled, obs in replies:
    ids += list(rng.integers(1, 50, sampled))
    mask += [1] * sampled
    ids += list(rng.integers(1, 50, obs))
    mask += [0] * obs
  mask = np.asarray(mask, np.int32)
  lp = np.where(mask > 0, -0.1 * (1 + np.arange(len(ids))), 0.0).astype(np.float32)
  return TokenTrajectory(
      task_name=task,
      instance_id=iid,
      group_id=gid,
      token_ids=np.asarray(ids, np.int32),
      loss_mask=mask,
      sampler_logprobs=lp,
      policy_versions=np.where(mask > 0, version, -1).astype(np.int32),
      prompt_len=prompt_len,
      correctness=reward if correctness is None else correctness,
      format=0.0,
      reward=reward,
      num_turns=len(replies),
      termination="solution",
      tool_seconds=0.5,
      generate_seconds=1.0,
      messages=[],
      overlong_and_malformed=overlong,
  )


def make_groups():
  g0 = Group(
      "a",
      "a/0",
      0,
      [
          traj("a", "a/0", 0, 4, [(3, 2), (2, 0)], 1.0, seed=1),
          traj("a", "a/0", 0, 4, [(5, 0)], 0.0, seed=2),
          traj("a", "a/0", 0, 4, [(2, 3), (1, 0)], 0.5, seed=3, overlong=True),
      ],
  )
  g1 = Group(
      "b",
      "b/0",
      1,
      [
          traj("b", "b/0", 1, 3, [(4, 0)], 2.0, seed=4, version=1),
          traj("b", "b/0", 1, 3, [(1, 1), (2, 0)], 2.0, seed=5, version=1),
      ],
  )
  return [g0, g1]


def test_drgrpo_advantages_are_reward_minus_group_mean_including_dropped_member():
  adv = rl_batch.group_advantages(make_groups(), "drgrpo")
  np.testing.assert_allclose(adv, [1.0 - 0.5, 0.0 - 0.5, 0.5 - 0.5, 0.0, 0.0], atol=1e-6)
  adv = rl_batch.group_advantages(make_groups(), "grpo")
  std0 = np.std([1.0, 0.0, 0.5], ddof=1)
  np.testing.assert_allclose(adv[:3], np.array([0.5, -0.5, 0.0]) / (std0 + 1e-6), rtol=1e-5)


def test_unpacked_rows_shift_every_field_onto_the_predicting_position():
  groups = make_groups()
  trajs = [t for g in groups for t in g.trajectories]
  adv = rl_batch.group_advantages(groups)
  examples = [rl_batch.trajectory_example(t, a) for t, a in zip(trajs, adv)]
  rows = rl_batch.build_rows(examples, 16, pack=False, rows_multiple_of=2, bucket=False)
  assert rows["tokens"].shape == (6, 16)  # 5 rows padded to a multiple of 2
  for r, (t, a) in enumerate(zip(trajs, adv)):
    n = len(t.token_ids)
    mask = np.zeros(16, np.int32)
    if not t.overlong_and_malformed:
      mask[: n - 1] = t.loss_mask[1:]
    np.testing.assert_array_equal(rows["target_mask"][r], mask)
    np.testing.assert_array_equal(rows["targets"][r, : n - 1], t.token_ids[1:])
    np.testing.assert_allclose(rows["advantages"][r], a * mask)
    np.testing.assert_allclose(
        rows["sampler_logprobs"][r, : n - 1], t.sampler_logprobs[1:] * mask[: n - 1]
    )
    np.testing.assert_array_equal(rows["policy_versions"][r], np.where(mask > 0, t.max_version, -1))
  assert rows["target_mask"][5].sum() == 0 and rows["segment_ids"][5].sum() == 0


def test_packed_rows_hold_the_same_per_trajectory_data_as_unpacked():
  groups = make_groups()
  trajs = [t for g in groups for t in g.trajectories]
  adv = rl_batch.group_advantages(groups)
  examples = [rl_batch.trajectory_example(t, a) for t, a in zip(trajs, adv)]
  packed = rl_batch.build_rows(examples, 24, pack=True, rows_multiple_of=1)
  unpacked = rl_batch.build_rows(examples, 24, pack=False, rows_multiple_of=1, bucket=False)
  assert packed["tokens"].shape[0] < unpacked["tokens"].shape[0]
  assert packed["tokens"].shape[0] in (1, 2, 4)  # bucketed to a power of two
  for name in ("target_mask", "advantages", "sampler_logprobs"):
    assert np.isclose(packed[name].sum(), unpacked[name].sum()), name
  # Per (row, segment) the advantages are constant on the mask and match one trajectory each.
  seen = []
  for r in range(packed["tokens"].shape[0]):
    for seg in set(packed["segment_ids"][r]) - {0}:
      on = (packed["segment_ids"][r] == seg) & (packed["target_mask"][r] > 0)
      if on.any():
        assert np.ptp(packed["advantages"][r][on]) == 0
        seen.append(round(float(packed["advantages"][r][on][0]), 6))
  assert sorted(seen) == sorted(
      round(float(a), 6) for a, t in zip(adv, trajs) if not t.overlong_and_malformed
  )


def test_minibatches_partition_the_trajectories_and_are_seeded():
  parts = rl_batch.minibatch_indices(10, 3, seed=7)
  assert sorted(np.concatenate(parts).tolist()) == list(range(10))
  assert [len(p) for p in parts] == [4, 3, 3]
  again = rl_batch.minibatch_indices(10, 3, seed=7)
  assert all((a == b).all() for a, b in zip(parts, again))
  with pytest.raises(ValueError, match="mini-batches"):
    rl_batch.minibatch_indices(2, 3, seed=0)
  minibatches, adv = rl_batch.build_minibatches(
      make_groups(), num_minibatches=2, row_length=16, pack=False, rows_multiple_of=1
  )
  assert len(minibatches) == 2 and adv.shape == (5,)
  total_segments = sum(int((mb["segment_ids"][:, 0] > 0).sum()) for mb in minibatches)
  assert total_segments == 5


def test_pass_at_k_and_episode_metrics_by_hand():
  assert pass_at_k(4, 0, 2) == 0.0
  assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert pass_at_k(4, 1, 2) == pytest.approx(1 - 3 / 6)
  assert pass_at_k(4, 3, 2) == 1.0
  m = rl_metrics.episode_metrics(make_groups())
  assert m["reward"] == pytest.approx((1 + 0 + 0.5 + 2 + 2) / 5)
  # successes: correctness >= 1: a: [1, 0, 0.5] -> 1 of 3; b: 2 of 2.
  assert m["success"] == pytest.approx(3 / 5)
  assert m["success/a"] == pytest.approx(1 / 3) and m["success/b"] == 1.0
  assert m["pass@1"] == pytest.approx((1 / 3 + 1) / 2)
  assert m["pass@3"] == pytest.approx((1 + 1) / 2)  # group b (size 2) has no pass@3
  assert m["response_tokens"] == pytest.approx((5 + 5 + 3 + 4 + 3) / 5)
  lengths, rewards = np.array([5, 5, 3, 4, 3.0]), np.array([1, 0, 0.5, 2, 2.0])
  assert m["length_reward_corr"] == pytest.approx(np.corrcoef(lengths, rewards)[0, 1])
  assert m["zero_signal_group_frac"] == 0.5
  s = rl_metrics.staleness_metrics(make_groups(), current_version=2)
  # 13 tokens at version 0 (staleness 2), 7 at version 1 (staleness 1)
  assert s["staleness/1"] == pytest.approx(7 / 20) and s["staleness/2"] == pytest.approx(13 / 20)
  assert s["staleness_max"] == 2.0
