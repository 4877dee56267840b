"""Optimizer and schedule against hand-computed values and a plain-numpy AdamW."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import ml_collections

from biomni_jax.train import optimizer as opt_lib


def cfg_with(**kw):
  cfg = opt_lib.default_optimizer_config()
  cfg.update(kw)
  return cfg


def test_warmup_cosine_schedule_values():
  sched = opt_lib.make_schedule(
      cfg_with(
          lr=1e-3, schedule="warmup_cosine", warmup_steps=10, total_steps=110, final_lr_fraction=0.1
      )
  )
  assert float(sched(0)) == 0.0
  np.testing.assert_allclose(float(sched(5)), 5e-4, rtol=1e-6)
  np.testing.assert_allclose(float(sched(10)), 1e-3, rtol=1e-6)
  # halfway through the cosine: end + (peak - end) * (1 + cos(pi/2)) / 2
  np.testing.assert_allclose(float(sched(60)), 1e-4 + 9e-4 * 0.5, rtol=1e-5)
  np.testing.assert_allclose(float(sched(110)), 1e-4, rtol=1e-5)


def test_constant_and_warmup_constant_schedules():
  assert float(opt_lib.make_schedule(cfg_with(lr=1e-6))(1234)) == pytest.approx(1e-6)
  sched = opt_lib.make_schedule(cfg_with(lr=2e-5, schedule="warmup_constant", warmup_steps=4))
  np.testing.assert_allclose(
      [float(sched(s)) for s in (0, 2, 4, 100)], [0, 1e-5, 2e-5, 2e-5], rtol=1e-6
  )


def numpy_adamw(params, grads_seq, cfg, lrs, decay_mask):
  p = {k: v.astype(np.float64) for k, v in params.items()}
  m = {k: np.zeros_like(v) for k, v in p.items()}
  v = {k: np.zeros_like(x) for k, x in p.items()}
  for step, grads in enumerate(grads_seq, start=1):
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    scale = min(1.0, cfg.grad_clip / norm) if cfg.grad_clip else 1.0
    lr = lrs[step - 1]
    for k in p:
      g = grads[k] * scale
      m[k] = cfg.b1 * m[k] + (1 - cfg.b1) * g
      v[k] = cfg.b2 * v[k] + (1 - cfg.b2) * g * g
      mhat = m[k] / (1 - cfg.b1**step)
      vhat = v[k] / (1 - cfg.b2**step)
      upd = mhat / (np.sqrt(vhat) + cfg.eps)
      if decay_mask[k]:
        upd = upd + cfg.weight_decay * p[k]
      p[k] = p[k] - lr * upd
  return p


@pytest.mark.parametrize("decay_1d,grad_clip", [(False, 1.0), (True, 1.0), (False, 0.0)])
def test_matches_numpy_adamw_with_clipping_and_decay_mask(decay_1d, grad_clip):
  cfg = cfg_with(
      lr=1e-2,
      schedule="warmup_cosine",
      warmup_steps=2,
      total_steps=6,
      weight_decay=0.1,
      decay_1d_params=decay_1d,
      grad_clip=grad_clip,
  )
  rng = np.random.default_rng(0)
  params = {
      "w": rng.normal(size=(3, 4)).astype(np.float32),
      "scale": rng.normal(size=(4,)).astype(np.float32),
  }
  grads_seq = [
      {k: rng.normal(0, 2, size=v.shape).astype(np.float32) for k, v in params.items()}
      for _ in range(5)
  ]
  tx = opt_lib.make_optimizer(cfg)
  jp = jax.tree.map(jnp.asarray, params)
  state = tx.init(jp)
  for grads in grads_seq:
    updates, state = tx.update(jax.tree.map(jnp.asarray, grads), state, jp)
    jp = jax.tree.map(lambda a, b: a + b, jp, updates)
  sched = opt_lib.make_schedule(cfg)
  want = numpy_adamw(
      params, grads_seq, cfg, [float(sched(s)) for s in range(5)], {"w": True, "scale": decay_1d}
  )
  for k in params:
    np.testing.assert_allclose(np.asarray(jp[k]), want[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The clip actually bit (norms ~ 2*sqrt(16) = 8 > 1), so the cases differ.
  assert sum(float((g**2).sum()) for g in grads_seq[0].values()) > 1.0


def test_weight_decay_mask_skips_1d_params():
  mask = opt_lib.weight_decay_mask(
      {"a": jnp.zeros((2, 2)), "b": jnp.zeros(3), "c": jnp.zeros((1, 2, 3))}
  )
  assert mask == {"a": True, "b": False, "c": True}


def test_accepts_plain_dict_and_partial_config():
  tx = opt_lib.make_optimizer({"lr": 1e-3})
  state = tx.init({"w": jnp.ones((2, 2))})
  updates, _ = tx.update({"w": jnp.ones((2, 2))}, state, {"w": jnp.ones((2, 2))})
  assert updates["w"].shape == (2, 2)


def test_bad_fields_are_named():
  with pytest.raises(ValueError, match="field schedule: unknown 'linear'"):
    opt_lib.make_schedule(cfg_with(schedule="linear"))
  with pytest.raises(ValueError, match="field total_steps"):
    opt_lib.make_schedule(cfg_with(schedule="warmup_cosine", warmup_steps=10, total_steps=5))
  with pytest.raises(ValueError, match="field lr"):
    opt_lib.make_optimizer(cfg_with(lr=0.0))
  with pytest.raises(ValueError, match="field grad_clip"):
    opt_lib.make_optimizer(cfg_with(grad_clip=-1.0))
