"""Advantage estimators against plain-numpy references on random rewards and ragged groups."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from biomni_jax.train import advantages as adv_lib


def numpy_advantages(name, rewards, group_ids, eps=1e-6):
  out = np.zeros_like(rewards, dtype=np.float64)
  for g in np.unique(group_ids):
    idx = np.where(group_ids == g)[0]
    r = rewards[idx].astype(np.float64)
    n = len(r)
    if n == 1:
      continue
    if name == "grpo":
      out[idx] = (r - r.mean()) / (r.std(ddof=1) + eps)
    elif name == "drgrpo":
      out[idx] = r - r.mean()
    elif name == "rloo":
      out[idx] = [r[i] - np.delete(r, i).mean() for i in range(n)]
  return out


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_matches_numpy_on_regular_groups(name):
  rng = np.random.default_rng(0)
  rewards = rng.uniform(0, 2, size=(5, 8)).astype(np.float32)
  got = np.asarray(adv_lib.compute_advantages(name, rewards))
  ids = np.repeat(np.arange(5), 8)
  want = numpy_advantages(name, rewards.reshape(-1), ids).reshape(5, 8)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert got.shape == (5, 8) and got.dtype == np.float32


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_matches_numpy_on_ragged_shuffled_groups(name):
  rng = np.random.default_rng(1)
  ids = np.array([0] * 3 + [1] * 1 + [2] * 6 + [3] * 2)
  rng.shuffle(ids)
  rewards = rng.integers(0, 3, size=ids.shape).astype(np.float32)  # ties like real 0/1/2 rewards
  got = np.asarray(adv_lib.compute_advantages(name, rewards, group_ids=ids))
  np.testing.assert_allclose(got, numpy_advantages(name, rewards, ids), rtol=1e-5, atol=1e-5)
  # The singleton group has no baseline.
  assert got[ids == 1].tolist() == [0.0]


def test_hand_computed_values():
  rewards = np.array([[2.0, 0.0, 1.0, 1.0]], np.float32)
  np.testing.assert_allclose(adv_lib.compute_advantages("drgrpo", rewards), [[1, -1, 0, 0]])
  # rloo: 2 - mean(0,1,1) = 4/3
  np.testing.assert_allclose(
      adv_lib.compute_advantages("rloo", rewards), [[4 / 3, -4 / 3, 0, 0]], rtol=1e-6
  )
  # grpo: std(ddof=1) = sqrt(2/3)
  np.testing.assert_allclose(
      adv_lib.compute_advantages("grpo", rewards, eps=0.0),
      [[1 / np.sqrt(2 / 3), -1 / np.sqrt(2 / 3), 0, 0]],
      rtol=1e-6,
  )


def test_uniform_group_gives_zero_and_grpo_stays_finite():
  rewards = np.ones((2, 4), np.float32)
  for name in adv_lib.ADVANTAGES:
    got = np.asarray(adv_lib.compute_advantages(name, rewards))
    assert np.all(got == 0.0) and np.all(np.isfinite(got))


PARTIAL_CREDIT = [0.7, 0.1, 0.3, 1.7, 0.35, 1.15, 2.0 / 3.0, 0.2]


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
def test_groups_of_equal_partial_credit_rewards_give_exactly_zero(name):
  """All members equal: no signal, so advantage 0 exactly (float32 mean rounding must not leak).

  Eight rewards of 0.7 gave +-0.056 under grpo before (0.15 with G = 16): the float32 mean was
  one ulp off and the std ~1e-8, which the division by std + eps magnified.
  """
  values = np.asarray(PARTIAL_CREDIT, np.float32)
  sizes = (2, 8, 16, 64)
  for group_size in sizes:  # one group per value, rewards [num_groups, G]
    got = np.asarray(adv_lib.compute_advantages(name, np.repeat(values[:, None], group_size, 1)))
    assert np.all(got == 0.0), (name, group_size, np.abs(got).max(axis=1))
  # The same groups ragged, in one flat batch.
  rewards = np.concatenate([np.full(g, v, np.float32) for g in sizes for v in values])
  ids = np.repeat(np.arange(len(sizes) * len(values)), [g for g in sizes for _ in values])
  got = np.asarray(adv_lib.compute_advantages(name, rewards, group_ids=ids))
  assert np.all(got == 0.0), (name, np.abs(got).max())


@pytest.mark.parametrize("name", ["grpo", "drgrpo", "rloo"])
@pytest.mark.parametrize("seed", range(4))
def test_matches_float64_reference_on_partial_credit_groups(name, seed):
  """Random partial-credit rewards on ragged groups (some flat, some with ties) vs numpy float64."""
  rng = np.random.default_rng(100 + seed)
  sizes = rng.integers(1, 17, size=12)
  ids = np.repeat(np.arange(len(sizes)), sizes)
  # Rewards on a 0.05 grid in [0, 2], like correctness partial credit + a 0/1 format term.
  rewards = (
      rng.integers(0, 21, size=ids.shape) * 0.05 + rng.integers(0, 2, size=ids.shape)
  ).astype(np.float32)
  flat = [g for g in (2, 5, 9) if sizes[g] > 1]
  for g in flat:  # flat groups: every member the group's first reward
    rewards[ids == g] = rewards[ids == g][0]
  perm = rng.permutation(len(ids))
  ids, rewards = ids[perm], rewards[perm]
  got = np.asarray(adv_lib.compute_advantages(name, rewards, group_ids=ids))
  want = numpy_advantages(name, rewards, ids)
  tol = 2e-6 if name == "grpo" else 4e-7  # a few float32 ulps at |R| <= 3
  np.testing.assert_allclose(got, want, rtol=tol, atol=tol)
  for g in flat:
    assert np.all(got[ids == g] == 0.0), (name, g)
  assert got.dtype == np.float32


def test_rewards_equal_up_to_float32_rounding_count_as_flat():
  """Rewards that differ by an ulp or two are rounding, not signal: 0, not +-1 under grpo."""
  base = np.float32(1.7)
  rewards = np.array([[base, np.nextafter(base, np.float32(2)), base, base]], np.float32)
  for name in adv_lib.ADVANTAGES:
    np.testing.assert_array_equal(adv_lib.compute_advantages(name, rewards), 0.0)
  # A real difference (well above the rounding tolerance) still counts.
  rewards = np.array([[0.0, 1e-4, 0.0, 0.0]], np.float32)
  got = np.asarray(adv_lib.compute_advantages("grpo", rewards, eps=0.0))
  np.testing.assert_allclose(got, [[-0.5, 1.5, -0.5, -0.5]], rtol=1e-4)


def test_jittable_with_static_num_groups():
  fn = jax.jit(lambda r, g: adv_lib.compute_advantages("drgrpo", r, g, num_groups=3))
  got = fn(jnp.array([1.0, 0.0, 2.0, 2.0, 5.0]), jnp.array([0, 0, 1, 1, 2]))
  np.testing.assert_allclose(got, [0.5, -0.5, 0.0, 0.0, 0.0])


def test_broadcast_to_tokens_zeroes_masked_positions():
  mask = np.array([[1, 1, 0], [0, 1, 1]], np.float32)
  got = adv_lib.broadcast_to_tokens(jnp.array([2.0, -1.0]), mask)
  np.testing.assert_array_equal(got, [[2, 2, 0], [0, -1, -1]])


def test_errors_name_the_problem():
  with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'"):
    adv_lib.compute_advantages("ppo", np.ones((2, 2)))
  with pytest.raises(ValueError, match="need group_ids"):
    adv_lib.compute_advantages("grpo", np.ones(4))
  with pytest.raises(ValueError, match="group_ids shape"):
    adv_lib.compute_advantages("grpo", np.ones(4), group_ids=np.zeros(3, int))
