"""Optimizer and schedule against hand-computed values and a plain-numpy AdamW."""

import math

import numpy as np
import pytest
import jax
import jax.numpy as jnp
import ml_collections
import optax

from biomni_jax import model as M
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


def test_weight_decay_mask_skips_1d_params_and_named_norms_and_biases():
  mask = opt_lib.weight_decay_mask(
      {
          "a": jnp.zeros((2, 2)),
          "b": jnp.zeros(3),
          "c": jnp.zeros((1, 2, 3)),
          "block": {"ln": {"scale": jnp.zeros((4, 3))}, "proj": {"bias": jnp.zeros((4, 3))}},
          "final_norm": {"weight": jnp.zeros((4, 3))},
      }
  )
  assert mask == {
      "a": True,
      "b": False,
      "c": True,
      "block": {"ln": {"scale": False}, "proj": {"bias": False}},
      "final_norm": {"weight": False},
  }


# The model's param tree, stacked over layers by nn.scan: every per-layer norm scale is
# [layers, D], so a rule by rank alone decays it.
MODEL_CONFIG = M.get_preset("tiny")


@pytest.fixture(scope="module")
def model_params():
  return jax.device_get(M.init_params(MODEL_CONFIG, jax.random.key(0)))


def _by_path(tree, is_leaf=None):
  flat = jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]
  return {jax.tree_util.keystr(path): leaf for path, leaf in flat}


def test_weight_decay_mask_on_the_scanned_model_exempts_every_norm_scale(model_params):
  mask = _by_path(opt_lib.weight_decay_mask(model_params))
  # The role as the model declares it: a norm scale has the logical axis "norm".
  axes = _by_path(M.param_logical_axes(MODEL_CONFIG), is_leaf=lambda x: isinstance(x, tuple))
  shapes = {k: v.shape for k, v in _by_path(model_params).items()}
  assert set(mask) == set(axes) == set(shapes)
  norms = {k for k, a in axes.items() if "norm" in a}
  for name in ("input_layernorm", "post_attention_layernorm", "q_norm", "k_norm"):
    key = next(k for k in norms if f"['{name}']" in k)
    assert len(shapes[key]) == 2, (key, shapes[key])  # stacked: [layers, D]
  assert "['norm']['scale']" in norms and len(norms) == 5
  assert {k for k, decayed in mask.items() if not decayed} == norms
  # Every matrix and embedding (embed_tokens, lm_head, all projections) is decayed.
  assert all(mask[k] for k in shapes if k not in norms)
  assert mask["['embed_tokens']['embedding']"] and mask["['lm_head']"]


def test_adamw_update_leaves_norm_scales_alone_and_decays_matrices(model_params):
  """Zero gradients: Adam's step is 0, so all that moves a param is its weight decay."""
  lr, wd = 1e-2, 0.1
  tx = opt_lib.make_optimizer(cfg_with(lr=lr, weight_decay=wd, grad_clip=1.0))
  params = jax.tree.map(jnp.asarray, model_params)
  state = tx.init(params)
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = jax.jit(tx.update)(zeros, state, params)
  new = _by_path(jax.device_get(optax.apply_updates(params, updates)))
  old = _by_path(model_params)
  axes = _by_path(M.param_logical_axes(MODEL_CONFIG), is_leaf=lambda x: isinstance(x, tuple))
  for key, a in axes.items():
    if "norm" in a:
      np.testing.assert_array_equal(new[key], old[key], err_msg=key)
    else:
      np.testing.assert_allclose(new[key], old[key] * (1 - lr * wd), rtol=1e-6, err_msg=key)
      assert np.abs(old[key]).max() > 0, key


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
