"""The trainer's RL loss on rl_batch rows equals a per-trajectory numpy reference (PPO clip-higher with
dual-clip, seq-mean-token-mean over trajectories with sampled tokens), packed or not, and its gradient does
not depend on the layout."""

import jax
import jax.numpy as jnp
import numpy as np

from biomni_jax import model as M
from biomni_jax.sharding import ShardingRules, make_mesh
from biomni_jax.train import losses, rl, rl_batch
from tests.train.test_rl_batch import make_groups

CONFIG = M.get_preset("tiny", attention_block_q=16, attention_block_kv=16, logits_chunk=16)
TEMPERATURE = 0.7


def reference_loss(params_new, params_old, groups, cfg: losses.PolicyLossConfig):
  """mean over kept trajectories of mean_t max(-A r, -A clip(r)) (dual-clip for A < 0), numpy."""
  trajs = [t for g in groups for t in g.trajectories]
  adv = rl_batch.group_advantages(groups)
  # One batched forward per params: each trajectory alone in a right-padded row (causal: the padding
  # after a trajectory cannot change its log-probs).
  ids = np.zeros((len(trajs), 32), np.int32)
  for i, t in enumerate(trajs):
    ids[i, : len(t.token_ids)] = t.token_ids
  targets = np.concatenate([ids[:, 1:], np.zeros((len(trajs), 1), np.int32)], axis=1)
  forward = jax.jit(lambda p: M.token_logprobs(CONFIG, p, ids, targets, temperature=TEMPERATURE))
  new_all, old_all = np.asarray(forward(params_new)), np.asarray(forward(params_old))
  per_seq = []
  for i, (t, a) in enumerate(zip(trajs, adv)):
    if t.overlong_and_malformed:
      continue
    n = len(t.token_ids)
    new, old = new_all[i, : n - 1], old_all[i, : n - 1]
    on = t.loss_mask[1:] > 0
    r = np.exp(new - old)[on].astype(np.float64)
    loss = np.maximum(-a * r, -a * np.clip(r, 1 - cfg.clip_low, 1 + cfg.clip_high))
    if a < 0:
      loss = np.minimum(loss, -a * cfg.dual_clip)
    per_seq.append(loss.mean())
  return float(np.mean(per_seq)), len(per_seq)


def test_rl_loss_matches_reference_packed_and_unpacked():
  sharding = ShardingRules(make_mesh())
  p_old = M.init_params(CONFIG, jax.random.key(0))
  # Large enough a perturbation that some ratios leave [0.8, 1.28] and both clip branches act.
  p_new = jax.tree.map(
      lambda x, k: x + 0.3 * jax.random.normal(k, x.shape),
      p_old,
      jax.tree.unflatten(
          jax.tree.structure(p_old),
          list(jax.random.split(jax.random.key(1), len(jax.tree.leaves(p_old)))),
      ),
  )
  cfg = losses.PolicyLossConfig()
  groups = make_groups()
  expected, num_seqs = reference_loss(p_new, p_old, groups, cfg)
  loss_fn = rl.make_rl_loss(CONFIG, cfg, TEMPERATURE, sharding)
  value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: loss_fn(p, b)[0]))
  evaluate = jax.jit(loss_fn)
  logprob_fn = rl.make_logprob_fn(CONFIG, sharding, TEMPERATURE)
  grads, clip_fracs = [], []
  for pack in (False, True):
    trajs = [t for g in groups for t in g.trajectories]
    adv = rl_batch.group_advantages(groups)
    rows = rl_batch.build_rows(
        [rl_batch.trajectory_example(t, a) for t, a in zip(trajs, adv)],
        32,
        pack=pack,
        rows_multiple_of=8,
    )  # one shape for both layouts: one compilation
    rows["old_logprobs"] = rl.recompute_logprobs(logprob_fn, p_old, rows, 8, sharding)
    batch = {k: jnp.asarray(rows[k]) for k in rl.STEP_FIELDS}
    loss_sum, denom, metrics = evaluate(p_new, batch)
    assert float(denom) == num_seqs
    np.testing.assert_allclose(float(loss_sum) / float(denom), expected, rtol=1e-4)
    final = losses.finalize_metrics(metrics)
    clip_fracs.append(float(final["clip_low_frac"] + final["clip_high_frac"]))
    grads.append(value_and_grad(p_new, batch)[1])
  assert clip_fracs[0] > 0 and abs(clip_fracs[0] - clip_fracs[1]) < 1e-6
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3, atol=1e-6), *grads)


def test_policy_loss_returns_exactly_the_declared_metric_sums():
  """losses.METRIC_SUMS (what the trainer picks out of a step's metrics) is what policy_loss returns:
  the first ten always, the TIS, KL and entropy sums only with their terms on."""
  logp = jnp.log(jnp.asarray([[0.5, 0.25, 0.9], [0.1, 0.6, 0.3]], jnp.float32))
  mask, adv = jnp.asarray([[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), jnp.asarray([1.0, -0.5])
  _, _, plain = losses.policy_loss(logp, adv, mask, losses.PolicyLossConfig())
  assert tuple(plain) == losses.METRIC_SUMS[:10]
  every_term = losses.PolicyLossConfig(tis_cap=2.0, kl_coef=0.1, entropy_coef=0.01)
  _, _, full = losses.policy_loss(
      logp,
      adv,
      mask,
      every_term,
      old_logprobs=logp - 0.1,
      sampler_logprobs=logp,
      ref_logprobs=logp + 0.2,
      entropies=jnp.ones_like(logp),
  )
  assert tuple(full) == losses.METRIC_SUMS
  assert float(full["num_tokens"]) == 4.0 and float(full["entropy_sum"]) == 4.0
  # k3 at d = -0.2 on each of the 4 loss tokens: exp(0.2) - 0.2 - 1.
  np.testing.assert_allclose(float(full["kl_sum"]), 4 * (np.exp(0.2) - 1.2), rtol=1e-5)
