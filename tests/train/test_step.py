"""The generic train step: one division by the global denominator, so packing, micro-batching and data
parallelism leave the gradient and the update unchanged; hand-checkable SGD update and metrics."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from biomni_jax import model as M
from biomni_jax.data.packing import add_next_token_targets, pack_examples, unpacked_examples
from biomni_jax.sharding import ShardingRules, make_mesh
from biomni_jax.train.optimizer import make_optimizer, make_schedule
from biomni_jax.train.sft import ROW_FIELDS, make_sft_loss
from biomni_jax.train.step import init_train_state, make_train_step, split_micro_batches

CONFIG = M.get_preset("tiny", attention_block_q=16, attention_block_kv=16, logits_chunk=32)
ROW_LENGTH = 48


def examples(n=8, seed=0):
  """Examples of 3 lengths (few compilations of the reference); the mask covers a random tail span of each,
  like an assistant reply."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    length = (9, 17, 30)[i % 3]
    mask = np.zeros(length, np.int32)
    mask[int(rng.integers(1, length - 2)) :] = 1
    out.append(
        {"tokens": rng.integers(0, CONFIG.vocab_size, length).astype(np.int32), "loss_mask": mask}
    )
  return out


def rows_of(exs, pack, multiple=4):
  layout = pack_examples if pack else unpacked_examples
  rows = add_next_token_targets(layout(exs, ROW_LENGTH, rows_multiple_of=multiple).rows)
  return {k: np.asarray(rows[k], np.int32) for k in ROW_FIELDS}


@pytest.fixture(scope="module")
def setup():
  rules = ShardingRules(make_mesh())
  params = jax.device_get(M.init_params(CONFIG, jax.random.key(0)))
  return rules, params


def reference_gradient(params, exs):
  """Each example alone (batch 1, no padding): grad of sum_i sum_t m logp / global count."""

  def example_loss_sum(p, ex):
    tokens = jnp.asarray(ex["tokens"])[None]
    logp = M.token_logprobs(CONFIG, p, tokens[:, :-1], tokens[:, 1:])
    return -(logp * jnp.asarray(ex["loss_mask"][1:], jnp.float32)[None]).sum()

  grad_fn = jax.jit(jax.grad(example_loss_sum))
  total = jax.tree.map(jnp.zeros_like, params)
  count = 0.0
  for ex in exs:
    total = jax.tree.map(jnp.add, total, grad_fn(params, ex))
    count += float(ex["loss_mask"][1:].sum())
  return jax.tree.map(lambda g: np.asarray(g / count), total)


@pytest.fixture(scope="module")
def ref_grad(setup):
  return reference_gradient(setup[1], examples())


def max_rel(a, b):
  return max(
      float(np.max(np.abs(np.asarray(x) - np.asarray(y))) / (np.max(np.abs(np.asarray(y))) + 1e-30))
      for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))
  )


LR = 1e4  # large: the update dominates the params, so (old - new) / LR recovers g to float32 precision


@pytest.fixture(scope="module")
def sgd_variants(setup):
  """One SGD step (update = -LR * gradient, so the update IS the gradient) per (packing, micro-batches)."""
  rules, params = setup
  out = {}
  for pack, micro in ((True, 1), (True, 4), (False, 1)):
    rows = rows_of(examples(), pack=pack)
    step = make_train_step(
        CONFIG,
        make_sft_loss(CONFIG, rules),
        optax.sgd(LR),
        sharding=rules,
        micro_batches=micro,
        learning_rate_fn=optax.constant_schedule(LR),
    )
    state = init_train_state(CONFIG, optax.sgd(LR), 0, rules, params=params)
    rng_before = np.asarray(state.rng)
    new_state, metrics = step(state, rows)
    out[pack, micro] = dict(
        rows=rows,
        step=step,
        state=jax.device_get(new_state),
        rng_before=rng_before,
        metrics={k: float(v) for k, v in metrics.items()},
        donated=state.params["norm"]["scale"].is_deleted(),
    )
  return out


def test_update_is_the_reference_gradient_with_and_without_packing_and_micro_batches(
    setup, sgd_variants, ref_grad
):
  """ref_grad: each example alone, unpadded, its masked log-prob sum divided by the global count."""
  rules, params = setup
  exs = examples()
  ref = ref_grad
  assert (
      sgd_variants[True, 1]["rows"]["tokens"].shape[0]
      < sgd_variants[False, 1]["rows"]["tokens"].shape[0]
  ), "packing must actually merge examples"
  for (pack, micro), v in sgd_variants.items():
    grad = jax.tree.map(lambda new, old: (old - new) / LR, v["state"].params, params)
    assert max_rel(grad, ref) < 1e-5, (pack, micro)
    assert v["metrics"]["denominator"] == sum(float(e["loss_mask"][1:].sum()) for e in exs)
  losses = [v["metrics"]["loss"] for v in sgd_variants.values()]
  np.testing.assert_allclose(losses, losses[0], rtol=1e-6)


def test_step_metrics_match_hand_computed_values(sgd_variants, ref_grad):
  ref = ref_grad
  v = sgd_variants[True, 4]
  rows, metrics = v["rows"], v["metrics"]
  assert metrics["denominator"] == rows["target_mask"].sum() == metrics["target_tokens"]
  assert metrics["tokens"] == (rows["segment_ids"] > 0).sum()
  assert np.isclose(
      metrics["grad_norm"], np.sqrt(sum((g**2).sum() for g in jax.tree.leaves(ref))), rtol=1e-5
  )
  assert metrics["lr"] == LR and int(v["state"].step) == 1
  assert not np.array_equal(np.asarray(v["state"].rng), v["rng_before"])


def test_all_masked_batch_gives_zero_gradient_not_nan(setup, sgd_variants):
  rules, params = setup
  v = sgd_variants[False, 1]
  rows = {k: x.copy() for k, x in v["rows"].items()}
  rows["target_mask"][:] = 0
  state, metrics = v["step"](init_train_state(CONFIG, optax.sgd(LR), 0, rules, params=params), rows)
  assert float(metrics["loss"]) == 0.0 and float(metrics["grad_norm"]) == 0.0
  assert max_rel(state.params, params) == 0.0


def test_state_argument_is_donated(sgd_variants):
  assert all(v["donated"] for v in sgd_variants.values())


def test_micro_batch_split_keeps_each_devices_rows_local():
  batch = {"tokens": np.arange(8)[:, None] * np.ones((1, 3), int)}
  split = split_micro_batches(batch, 4)["tokens"]
  assert split.shape == (4, 2, 3)
  np.testing.assert_array_equal(split[:, :, 0], [[0, 4], [1, 5], [2, 6], [3, 7]])
  with pytest.raises(ValueError, match="not divisible by micro_batches=3"):
    split_micro_batches(batch, 3)


DATA_PARALLEL_CHILD = textwrap.dedent(r"""
    import json, sys
    import jax, numpy as np
    sys.path.insert(0, sys.argv[1])
    from tests.train.test_step import CONFIG, examples, rows_of
    from biomni_jax import model as M
    from biomni_jax.sharding import ShardingRules, make_mesh
    import optax
    from biomni_jax.train.sft import make_sft_loss
    from biomni_jax.train.step import init_train_state, make_train_step

    lr = 1e4  # SGD with a large rate: (old - new) / lr is the gradient to float32 precision
    optimizer = optax.sgd(lr)
    rows = rows_of(examples(12, seed=5), pack=True, multiple=8)
    params = jax.device_get(M.init_params(CONFIG, jax.random.key(1)))
    out = {}
    for name, mesh in (("one", make_mesh(devices=jax.devices()[:1])),
                       ("dp", make_mesh(data=2, fsdp=2, tensor=2))):
        rules = ShardingRules(mesh)
        step = make_train_step(CONFIG, make_sft_loss(CONFIG, rules), optimizer, sharding=rules, micro_batches=2)
        state = init_train_state(CONFIG, optimizer, 0, rules, params=params)
        new_state, m = step(state, rows)
        sharded = sum(not x.sharding.is_fully_replicated for x in jax.tree.leaves(new_state.params))
        grads = jax.tree.map(lambda a, b: (np.asarray(a) - np.asarray(b)) / lr, params,
                             jax.device_get(new_state.params))
        out[name] = dict(losses=[float(m["loss"]), float(m["grad_norm"])],
                         params=[x.tolist() for x in jax.tree.leaves(grads)], sharded=sharded,
                         devices=len(mesh.devices.flat))
    one, dp = out["one"], out["dp"]
    rel = max(float(np.max(np.abs(np.array(a) - np.array(b))) / np.max(np.abs(np.array(b))))
              for a, b in zip(dp["params"], one["params"]))
    print("RESULT " + json.dumps(dict(losses_one=one["losses"], losses_dp=dp["losses"], grad_rel=rel,
                                      sharded=dp["sharded"], devices=dp["devices"])))
""")


def test_data_parallel_step_on_8_devices_equals_one_device():
  """Mesh data 2 x fsdp 2 x tensor 2, 2 micro-batches: loss, grad norm and gradient equal one device's."""
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-c", DATA_PARALLEL_CHILD, root],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
      cwd=root,
  )
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  assert proc.returncode == 0 and lines, proc.stderr[-3000:]
  result = json.loads(lines[-1][len("RESULT ") :])
  assert result["devices"] == 8 and result["sharded"] > 0
  np.testing.assert_allclose(result["losses_dp"], result["losses_one"], rtol=1e-5)
  assert result["grad_rel"] < 1e-5
