"""Policy and SFT losses against plain-numpy references: values, clip branches, gradients,
micro-batch and packing invariance."""

import itertools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from biomni_jax.train import aggregation as agg_lib
from biomni_jax.train import losses
from biomni_jax.train.losses import PolicyLossConfig

AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
# The run's constant normaliser of seq-mean-token-sum-norm (the other modes ignore it); unequal to
# every padded length used below, so a normaliser taken from the padding would show.
NORM = 16.0


# ----------------------------------------------------------------------------- numpy reference
def np_sequences(mask, segment_ids):
  """List of (row, boolean column selector) for every sequence."""
  seqs = []
  for b in range(mask.shape[0]):
    if segment_ids is None:
      seqs.append((b, np.ones(mask.shape[1], bool)))
    else:
      for s in np.unique(segment_ids[b]):
        if s > 0:
          seqs.append((b, segment_ids[b] == s))
  return seqs


def np_aggregate(mode, x, mask, segment_ids=None, norm=None):
  x = x.astype(np.float64)
  mask = mask.astype(np.float64)
  if segment_ids is not None:
    mask = mask * (segment_ids > 0)
  if mode == "token-mean":
    return (x * mask).sum(), mask.sum()
  total, count = 0.0, 0
  if mode == "seq-mean-token-sum-norm":
    assert norm is not None, "the reference needs the run's constant normaliser"
  for b, cols in np_sequences(mask, segment_ids):
    m = mask[b, cols]
    if m.sum() == 0:
      continue
    count += 1
    s = (x[b, cols] * m).sum()
    total += s / m.sum() if mode == "seq-mean-token-mean" else s / norm
  return total, float(count)


def np_token_loss(cfg, logp, old, adv, smp=None, ref=None, ent=None):
  """Per-token loss [B, T] in float64 and clip indicators."""
  logp, old, adv = (np.asarray(a, np.float64) for a in (logp, old, adv))
  r = np.exp(logp - old)
  if cfg.policy_loss == "ppo_clip":
    pg = np.maximum(-adv * r, -adv * np.clip(r, 1 - cfg.clip_low, 1 + cfg.clip_high))
    if cfg.dual_clip is not None:
      pg = np.where(adv < 0, np.minimum(pg, -adv * cfg.dual_clip), pg)
  else:
    pg = -adv * r
  loss = pg
  if cfg.tis_cap is not None:
    loss = loss * np.minimum(np.exp(old - np.asarray(smp, np.float64)), cfg.tis_cap)
  if cfg.kl_coef > 0:
    d = logp - np.asarray(ref, np.float64)
    kl = {"k1": d, "k2": 0.5 * d * d, "k3": np.exp(-d) + d - 1}[cfg.kl_estimator]
    loss = loss + cfg.kl_coef * kl
  if cfg.entropy_coef > 0:
    loss = loss - cfg.entropy_coef * np.asarray(ent, np.float64)
  ind = {
      "clip_low": (adv < 0) & (r < 1 - cfg.clip_low),
      "clip_high": (adv > 0) & (r > 1 + cfg.clip_high),
      "dual_clip": (adv < 0) & (r > (cfg.dual_clip or np.inf)),
  }
  return loss, ind


def np_policy_loss(cfg, logp, old, adv, mask, smp=None, ref=None, ent=None, segment_ids=None):
  loss, ind = np_token_loss(cfg, logp, old, adv, smp, ref, ent)
  s, d = np_aggregate(cfg.aggregation, loss, mask, segment_ids, cfg.token_sum_norm)
  m = mask.astype(bool)
  counts = {k: float((v & m).sum()) for k, v in ind.items()}
  return s, d, counts


def random_batch(seed, b=6, t=11, spread=0.4):
  rng = np.random.default_rng(seed)
  logp = rng.uniform(-3, -0.1, size=(b, t)).astype(np.float32)
  old = (logp + rng.normal(0, spread, size=(b, t))).astype(np.float32)
  smp = (old + rng.normal(0, spread, size=(b, t))).astype(np.float32)
  ref = (logp + rng.normal(0, spread, size=(b, t))).astype(np.float32)
  ent = rng.uniform(0, 2, size=(b, t)).astype(np.float32)
  adv = rng.normal(0, 1, size=(b,)).astype(np.float32)
  mask = (rng.uniform(size=(b, t)) < 0.7).astype(np.float32)
  mask[0] = 0.0  # a trajectory dropped from the loss
  return dict(logp=logp, old=old, smp=smp, ref=ref, ent=ent, adv=adv, mask=mask)


def run(cfg, d, segment_ids=None, old=True):
  return losses.policy_loss(
      jnp.asarray(d["logp"]),
      jnp.asarray(d["adv"]),
      jnp.asarray(d["mask"]),
      cfg,
      old_logprobs=jnp.asarray(d["old"]) if old else None,
      sampler_logprobs=jnp.asarray(d["smp"]),
      ref_logprobs=jnp.asarray(d["ref"]),
      entropies=jnp.asarray(d["ent"]),
      segment_ids=None if segment_ids is None else jnp.asarray(segment_ids),
  )


CONFIGS = [
    PolicyLossConfig(
        aggregation=a,
        tis_cap=tis,
        kl_coef=kl,
        kl_estimator=est,
        entropy_coef=ent,
        dual_clip=dual,
        token_sum_norm=NORM,
    )
    for a, tis, (kl, est), ent, dual in itertools.product(
        AGGREGATIONS,
        [None, 1.5],
        [(0.0, "k3"), (0.1, "k1"), (0.1, "k2"), (0.05, "k3")],
        [0.0, 0.01],
        [3.0, None],
    )
] + [PolicyLossConfig(policy_loss="importance_sampling", aggregation="token-mean", tis_cap=2.0)]


# ----------------------------------------------------------------------------- values
@pytest.mark.parametrize(
    "cfg",
    CONFIGS,
    ids=lambda c: f"{c.policy_loss}-{c.aggregation}-tis{c.tis_cap}"
    f"-kl{c.kl_coef}{c.kl_estimator}-ent{c.entropy_coef}-dual{c.dual_clip}",
)
def test_policy_loss_matches_numpy(cfg):
  d = random_batch(seed=0, spread=1.0)
  loss_sum, denom, metrics = run(cfg, d)
  want_sum, want_denom, counts = np_policy_loss(
      cfg,
      d["logp"],
      d["old"],
      d["adv"][:, None] + 0 * d["logp"],
      d["mask"],
      d["smp"],
      d["ref"],
      d["ent"],
  )
  np.testing.assert_allclose(float(loss_sum), want_sum, rtol=2e-5, atol=1e-5)
  assert float(denom) == want_denom
  if cfg.policy_loss == "ppo_clip":
    for k in ("clip_low", "clip_high"):
      assert float(metrics[f"{k}_count"]) == counts[k]
    assert float(metrics["dual_clip_count"]) == (counts["dual_clip"] if cfg.dual_clip else 0.0)
    # The random batch exercises every branch on loss tokens.
    assert counts["clip_low"] > 0 and counts["clip_high"] > 0, counts
    assert counts["dual_clip"] > 0 or cfg.dual_clip is None, counts
  assert float(metrics["num_tokens"]) == d["mask"].sum()


def test_each_clip_branch_is_hit_and_valued_by_hand():
  cfg = PolicyLossConfig(clip_low=0.2, clip_high=0.28, dual_clip=3.0, aggregation="token-mean")
  #            unclipped+   clip_high    unclipped-   clip_low    dual_clip   A>0, r low (unclipped)
  ratio = np.array([1.1, 1.5, 0.9, 0.5, 5.0, 0.5])
  adv = np.array([1.0, 2.0, -1.0, -1.0, -2.0, 1.0])
  old = np.full(6, -1.0)
  logp = old + np.log(ratio)
  mask = np.ones(6)
  loss_sum, denom, m = losses.policy_loss(
      jnp.asarray(logp[None], jnp.float32),
      jnp.asarray(adv[None], jnp.float32),
      jnp.asarray(mask[None]),
      cfg,
      old_logprobs=jnp.asarray(old[None], jnp.float32),
  )
  per_token = [-1.1, -2 * 1.28, 0.9, 0.8, 2 * 3.0, -0.5]
  np.testing.assert_allclose(float(loss_sum), sum(per_token), rtol=1e-5)
  assert float(denom) == 6
  assert (float(m["clip_high_count"]), float(m["clip_low_count"]), float(m["dual_clip_count"])) == (
      1,
      1,
      1,
  )
  fin = losses.finalize_metrics(m)
  np.testing.assert_allclose(fin["clip_low_frac"], 1 / 6, rtol=1e-6)
  np.testing.assert_allclose(fin["ratio_max"], 5.0, rtol=1e-5)
  np.testing.assert_allclose(fin["ratio_min"], 0.5, rtol=1e-5)
  np.testing.assert_allclose(fin["ratio_mean"], ratio.mean(), rtol=1e-5)
  np.testing.assert_allclose(fin["ratio_std"], ratio.std(), rtol=1e-4)
  # Without dual-clip the negative-advantage, large-ratio token is unbounded: -A r = 10.
  no_dual = PolicyLossConfig(dual_clip=None, aggregation="token-mean")
  s2, _, m2 = losses.policy_loss(
      jnp.asarray(logp[None], jnp.float32),
      jnp.asarray(adv[None], jnp.float32),
      jnp.asarray(mask[None]),
      no_dual,
      old_logprobs=jnp.asarray(old[None], jnp.float32),
  )
  np.testing.assert_allclose(float(s2) - float(loss_sum), 10.0 - 6.0, rtol=1e-5)
  assert float(m2["dual_clip_count"]) == 0


def test_tis_weight_is_capped_and_counted():
  cfg = PolicyLossConfig(tis_cap=2.0, aggregation="token-mean")
  old = jnp.array([[-1.0, -1.0]])
  smp = jnp.array([[-1.0 - np.log(5.0), -1.0 - np.log(1.5)]], jnp.float32)  # raw weights 5, 1.5
  s, _, m = losses.policy_loss(
      old, jnp.array([1.0]), jnp.ones((1, 2)), cfg, old_logprobs=old, sampler_logprobs=smp
  )
  np.testing.assert_allclose(float(s), -(2.0 + 1.5), rtol=1e-5)
  assert float(m["tis_capped_count"]) == 1
  np.testing.assert_allclose(losses.finalize_metrics(m)["tis_weight_mean"], 1.75, rtol=1e-5)


def test_kl_estimators_by_hand():
  d = 0.5  # logp - logp_ref
  for est, want in [("k1", d), ("k2", d * d / 2), ("k3", np.exp(-d) + d - 1)]:
    cfg = PolicyLossConfig(kl_coef=1.0, kl_estimator=est, aggregation="token-mean")
    s, _, m = losses.policy_loss(
        jnp.array([[-1.0]]),
        jnp.array([0.0]),
        jnp.ones((1, 1)),
        cfg,
        ref_logprobs=jnp.array([[-1.5]]),
    )
    np.testing.assert_allclose(float(s), want, rtol=1e-5)
    np.testing.assert_allclose(losses.finalize_metrics(m)["kl"], want, rtol=1e-5)


# ----------------------------------------------------------------------------- gradients
def np_grad_fd(cfg, d, h=1e-6):
  """Central finite differences of the numpy loss_sum w.r.t. logp (float64)."""
  logp = d["logp"].astype(np.float64)
  adv = d["adv"][:, None] + 0 * logp
  grad = np.zeros_like(logp)
  for idx in np.ndindex(logp.shape):
    plus, minus = logp.copy(), logp.copy()
    plus[idx] += h
    minus[idx] -= h
    f = lambda lp: np_policy_loss(cfg, lp, d["old"], adv, d["mask"], d["smp"], d["ref"], d["ent"])[
        0
    ]
    grad[idx] = (f(plus) - f(minus)) / (2 * h)
  return grad


def np_grad_analytic_ppo(cfg, d):
  """d loss_sum / d logp for ppo_clip + TIS + KL with token-mean aggregation."""
  logp, old = d["logp"].astype(np.float64), d["old"].astype(np.float64)
  adv = d["adv"][:, None] + 0 * logp
  r = np.exp(logp - old)
  _, ind = np_token_loss(cfg, logp, old, adv)
  pg_active = ~(ind["clip_low"] | ind["clip_high"] | ind["dual_clip"])
  g = np.where(pg_active, -adv * r, 0.0)
  if cfg.tis_cap is not None:
    g = g * np.minimum(np.exp(old - d["smp"]), cfg.tis_cap)
  dl = logp - d["ref"]
  g = g + cfg.kl_coef * {"k1": 1.0, "k2": dl, "k3": 1 - np.exp(-dl)}[cfg.kl_estimator]
  return g * d["mask"]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("tis_cap,kl_coef", [(None, 0.0), (1.5, 0.1)])
def test_gradient_matches_finite_differences(aggregation, tis_cap, kl_coef):
  cfg = PolicyLossConfig(
      aggregation=aggregation,
      tis_cap=tis_cap,
      kl_coef=kl_coef,
      entropy_coef=0.01,
      token_sum_norm=NORM,
  )
  d = random_batch(seed=0, spread=1.0)
  counts = np_policy_loss(
      cfg,
      d["logp"],
      d["old"],
      d["adv"][:, None] + 0 * d["logp"],
      d["mask"],
      d["smp"],
      d["ref"],
      d["ent"],
  )[2]
  assert min(counts.values()) > 0, counts  # gradients checked across every clip branch
  grad = jax.grad(lambda lp: run(cfg, {**d, "logp": lp})[0])(jnp.asarray(d["logp"]))
  np.testing.assert_allclose(np.asarray(grad), np_grad_fd(cfg, d), rtol=1e-4, atol=1e-5)


def test_gradient_matches_analytic_formula_and_clipped_tokens_get_none():
  cfg = PolicyLossConfig(aggregation="token-mean", tis_cap=1.5, kl_coef=0.1, kl_estimator="k3")
  d = random_batch(seed=0, spread=1.0)
  grad = np.asarray(jax.grad(lambda lp: run(cfg, {**d, "logp": lp})[0])(jnp.asarray(d["logp"])))
  np.testing.assert_allclose(grad, np_grad_analytic_ppo(cfg, d), rtol=1e-4, atol=1e-6)
  # Masked tokens never get gradient.
  assert np.all(grad[d["mask"] == 0] == 0)


def test_on_policy_gradient_is_minus_advantage():
  cfg = PolicyLossConfig(aggregation="token-mean")
  d = random_batch(seed=5)
  grad = jax.grad(lambda lp: run(cfg, {**d, "logp": lp}, old=False)[0])(jnp.asarray(d["logp"]))
  np.testing.assert_allclose(np.asarray(grad), -d["adv"][:, None] * d["mask"], rtol=1e-6)


# ----------------------------------------------------------------------------- invariance
@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("splits", [[3], [1, 4]])
def test_micro_batch_sums_equal_whole_batch(aggregation, splits):
  cfg = PolicyLossConfig(aggregation=aggregation, tis_cap=2.0, kl_coef=0.05, token_sum_norm=NORM)
  d = random_batch(seed=11, b=6, spread=0.8)
  whole_sum, whole_den, whole_m = run(cfg, d)
  parts = [{k: v[idx] for k, v in d.items()} for idx in np.split(np.arange(6), splits)]
  outs = [run(cfg, p) for p in parts]
  tot_sum = sum(float(o[0]) for o in outs)
  tot_den = sum(float(o[1]) for o in outs)
  np.testing.assert_allclose(tot_sum, float(whole_sum), rtol=1e-5)
  assert tot_den == float(whole_den)
  m = outs[0][2]
  for o in outs[1:]:
    m = losses.combine_metrics(m, o[2])
  for k in whole_m:
    np.testing.assert_allclose(float(m[k]), float(whole_m[k]), rtol=1e-5, err_msg=k)

  # And the gradient of the once-divided loss is the sum of the micro-batch gradients.
  def micro_grad(p):
    return np.asarray(jax.grad(lambda lp: run(cfg, {**p, "logp": lp})[0])(jnp.asarray(p["logp"])))

  whole_grad = np.asarray(
      jax.grad(lambda lp: run(cfg, {**d, "logp": lp})[0])(jnp.asarray(d["logp"]))
  )
  np.testing.assert_allclose(
      np.concatenate([micro_grad(p) for p in parts]) / tot_den,
      whole_grad / float(whole_den),
      rtol=1e-5,
      atol=1e-8,
  )


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_packed_rows_with_segment_ids_equal_unpacked_rows(aggregation):
  cfg = PolicyLossConfig(aggregation=aggregation, token_sum_norm=8.0)
  d = random_batch(seed=13, b=3, t=4, spread=0.5)
  d["mask"][0] = [1, 1, 0, 1]  # every row keeps tokens here
  d["adv"] = np.array([1.0, -0.5, 0.3], np.float32)
  unpacked = run(cfg, d)
  # Pack rows 0 and 1 into one row of length 8, row 2 into a second row with padding.
  packed = {}
  for k, v in d.items():
    if k == "adv":
      packed[k] = np.stack([np.repeat(v[:2], 4), np.r_[np.repeat(v[2], 4), np.zeros(4)]]).astype(
          np.float32
      )
    else:
      packed[k] = np.stack([np.r_[v[0], v[1]], np.r_[v[2], np.zeros(4)]]).astype(np.float32)
  packed["mask"][1, 4:] = 1.0  # padding with a stray mask: segment id 0 must exclude it
  seg = np.array([[1, 1, 1, 1, 2, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0]], np.int32)
  got = run(cfg, packed, segment_ids=seg)
  np.testing.assert_allclose(float(got[0]), float(unpacked[0]), rtol=1e-5)
  assert float(got[1]) == float(unpacked[1])
  want = np_aggregate(
      aggregation,
      np_token_loss(cfg, packed["logp"], packed["old"], packed["adv"])[0],
      packed["mask"],
      seg,
      8.0,
  )
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-5)


def test_aggregation_hand_computed():
  x = jnp.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
  m = jnp.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0]])
  assert [float(v) for v in agg_lib.aggregate("token-mean", x, m)] == [9.0, 3.0]
  assert [float(v) for v in agg_lib.aggregate("seq-mean-token-mean", x, m)] == [1.5 + 6.0, 2.0]
  assert [
      float(v) for v in agg_lib.aggregate("seq-mean-token-sum-norm", x, m, token_sum_norm=3.0)
  ] == [3.0, 2.0]
  assert [
      float(v) for v in agg_lib.aggregate("seq-mean-token-sum-norm", x, m, token_sum_norm=2.0)
  ] == [4.5, 2.0]


# ----------------------------------------------------------------------------- SFT
def test_sft_cross_entropy_hand_computed_and_micro_batch_invariant():
  logp = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.1, 1.0, 0.5]]))
  mask = jnp.array([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
  s, n = losses.sft_cross_entropy(logp, mask)
  np.testing.assert_allclose(
      float(s), -(np.log(0.5) + np.log(0.25) + np.log(1.0) + np.log(0.5)), rtol=1e-6
  )
  assert float(n) == 4
  s0, n0 = losses.sft_cross_entropy(logp[:1], mask[:1])
  s1, n1 = losses.sft_cross_entropy(logp[1:], mask[1:])
  np.testing.assert_allclose(float(s0 + s1), float(s), rtol=1e-6)
  assert float(n0 + n1) == 4
  grad = jax.grad(lambda lp: losses.sft_cross_entropy(lp, mask)[0])(logp)
  np.testing.assert_array_equal(grad, -mask)


# ----------------------------------------------------------------------------- errors
def test_errors_name_field_and_shapes():
  with pytest.raises(ValueError, match="policy_loss: unknown 'grpo'"):
    PolicyLossConfig(policy_loss="grpo")
  with pytest.raises(ValueError, match="dual_clip"):
    PolicyLossConfig(dual_clip=0.5)
  with pytest.raises(ValueError, match="unknown loss aggregation"):
    PolicyLossConfig(aggregation="mean")
  with pytest.raises(ValueError, match="tis_cap needs sampler_logprobs"):
    losses.policy_loss(
        jnp.zeros((2, 3)), jnp.zeros(2), jnp.ones((2, 3)), PolicyLossConfig(tis_cap=2.0)
    )
  with pytest.raises(ValueError, match="advantages"):
    losses.policy_loss(jnp.zeros((2, 3)), jnp.zeros(3), jnp.ones((2, 3)), PolicyLossConfig())
  assert PolicyLossConfig.from_config({"clip_high": 0.3, "lr": 1.0}).clip_high == 0.3


def test_jit_and_bfloat16_inputs_match_eager_float32():
  cfg = PolicyLossConfig(tis_cap=2.0, kl_coef=0.05, entropy_coef=0.01)
  d = random_batch(seed=0, spread=1.0)
  eager = run(cfg, d)
  jitted = jax.jit(
      lambda lp, a, m, o, s, r, e: losses.policy_loss(
          lp, a, m, cfg, old_logprobs=o, sampler_logprobs=s, ref_logprobs=r, entropies=e
      )
  )(*(jnp.asarray(d[k]) for k in ("logp", "adv", "mask", "old", "smp", "ref", "ent")))
  np.testing.assert_allclose(float(jitted[0]), float(eager[0]), rtol=1e-5)
  assert float(jitted[1]) == float(eager[1])
  bf16 = losses.policy_loss(
      jnp.asarray(d["logp"], jnp.bfloat16),
      jnp.asarray(d["adv"]),
      jnp.asarray(d["mask"]),
      cfg,
      old_logprobs=jnp.asarray(d["old"]),
      sampler_logprobs=jnp.asarray(d["smp"]),
      ref_logprobs=jnp.asarray(d["ref"]),
      entropies=jnp.asarray(d["ent"]),
  )
  assert bf16[0].dtype == jnp.float32
  np.testing.assert_allclose(float(bf16[0]), float(eager[0]), rtol=3e-2)


def test_approx_kl_metric_is_k3_of_old_vs_current():
  logp = jnp.array([[-1.0, -2.0, -0.5]])
  old = jnp.array([[-1.2, -1.5, -0.5]])
  _, _, m = losses.policy_loss(
      logp, jnp.array([1.0]), jnp.array([[1.0, 1.0, 0.0]]), PolicyLossConfig(), old_logprobs=old
  )
  r = np.exp(np.array([0.2, -0.5]))
  np.testing.assert_allclose(
      losses.finalize_metrics(m)["approx_kl"], np.mean(r - 1 - np.log(r)), rtol=1e-5
  )
