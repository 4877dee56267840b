"""The generic train step: jitted over a mesh, gradient accumulation over micro-batches, one optax update.

A loss is a function `loss_fn(params, micro_batch) -> (loss_sum, denominator, metric_sums)` (see
losses.py / aggregation.py). For a global batch split into micro-batches k = 1..M (and, inside jit, over
data-parallel shards), the step computes

    g = (sum_k grad loss_sum_k) / (sum_k denominator_k),      loss = sum_k loss_sum_k / sum_k denominator_k

i.e. it differentiates SUMS and divides once by the global denominator, so packing, data parallelism and
micro-batching leave the gradient unchanged. Then `optimizer` (clipping + AdamW + schedule, optimizer.py)
updates the params. The same step serves SFT (cross-entropy) and RL (policy loss).

Micro-batch k holds rows k, k + M, k + 2M, ... of the global batch: with rows sharded contiguously over the
data axes, every device keeps 1/M of its own rows per micro-batch and nothing moves between devices.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

from biomni_jax import model as M
from biomni_jax.model.config import ModelConfig
from biomni_jax.sharding import ShardingRules

Array = jax.Array
Batch = Mapping[str, Array]
LossFn = Callable[[Any, Batch], tuple[Array, Array, Mapping[str, Array]]]
MetricCombiner = Callable[[Mapping[str, Array], Mapping[str, Array]], dict]

BATCH_AXES = ("batch", "length")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class TrainState:
  """Everything a resumed run needs from the device side.

  params: the model pytree (float32). opt_state: the optimizer's state. step: int32 scalar, optimizer steps
  taken. rng: uint32 [2] raw key data of the run's random stream (advanced once per step; SFT draws nothing
  from it, stochastic losses fold in the step).
  """

  params: Any
  opt_state: Any
  step: Array
  rng: Array

  def replace(self, **changes) -> "TrainState":
    return dataclasses.replace(self, **changes)


def row_logprobs(
    model_config: ModelConfig,
    params,
    rows: Batch,
    *,
    sharding: Optional[ShardingRules] = None,
    temperature: float = 1.0,
    with_entropy: bool = False,
):
  """log p(targets) float32 [B, L] of training rows (and the entropies [B, L] if asked): M.token_logprobs
  of rows["tokens"], rows["targets"], rows["positions"], rows["segment_ids"] (packing.TRAIN_ROW_FIELDS),
  at `temperature`."""
  return M.token_logprobs(
      model_config,
      params,
      rows["tokens"],
      rows["targets"],
      positions=rows["positions"],
      segment_ids=rows["segment_ids"],
      sharding=sharding,
      temperature=temperature,
      with_entropy=with_entropy,
  )


def _sum_metrics(a: Mapping[str, Array], b: Mapping[str, Array]) -> dict:
  return {k: a[k] + b[k] for k in a}


def train_state_shardings(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, sharding: ShardingRules
) -> TrainState:
  """NamedShardings of every TrainState leaf: params by logical axes, optimizer moments like their params,
  scalars (counts, step, rng) replicated."""
  param_sh = M.param_shardings(model_config, sharding)
  replicated = sharding.sharding(())
  abstract_opt = jax.eval_shape(optimizer.init, M.abstract_params(model_config))
  opt_sh = optax.tree_map_params(
      optimizer, lambda _, sh: sh, abstract_opt, param_sh, transform_non_params=lambda _: replicated
  )
  return TrainState(params=param_sh, opt_state=opt_sh, step=replicated, rng=replicated)


def abstract_train_state(
    model_config: ModelConfig, optimizer: optax.GradientTransformation, sharding: ShardingRules
) -> TrainState:
  """ShapeDtypeStructs (with shardings) of the TrainState: a restore target that allocates nothing."""
  shardings = train_state_shardings(model_config, optimizer, sharding)
  params = M.abstract_params(model_config)
  shapes = TrainState(
      params=params,
      opt_state=jax.eval_shape(optimizer.init, params),
      step=jax.ShapeDtypeStruct((), jnp.int32),
      rng=jax.ShapeDtypeStruct((2,), jnp.uint32),
  )
  return jax.tree.map(
      lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, shardings
  )


def random_init_params(model_config: ModelConfig, seed: int, sharding: ShardingRules) -> Any:
  """The random params init_train_state starts from when it is given none."""
  init_key = jax.random.split(jax.random.key(seed))[0]
  return M.init_params(model_config, init_key, sharding)


def init_train_state(
    model_config: ModelConfig,
    optimizer: optax.GradientTransformation,
    seed: int,
    sharding: ShardingRules,
    params: Any = None,
) -> TrainState:
  """A fresh TrainState placed in its shardings; random params from `seed` unless `params` are given."""
  shardings = train_state_shardings(model_config, optimizer, sharding)
  run_key = jax.random.split(jax.random.key(seed))[1]
  if params is None:
    params = random_init_params(model_config, seed, sharding)
  params = jax.device_put(params, shardings.params)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  return TrainState(
      params=params,
      opt_state=opt_state,
      step=jax.device_put(jnp.zeros((), jnp.int32), shardings.step),
      rng=jax.device_put(jax.random.key_data(run_key).astype(jnp.uint32), shardings.rng),
  )


def split_micro_batches(batch: Batch, micro_batches: int) -> dict:
  """[B, ...] leaves -> [M, B / M, ...] with micro-batch k = rows k, k + M, ... (see module docstring)."""
  out = {}
  for name, x in batch.items():
    b = x.shape[0]
    if b % micro_batches:
      raise ValueError(
          f"train step: batch field {name!r} has {b} rows, not divisible by "
          f"micro_batches={micro_batches}"
      )
    out[name] = x.reshape(b // micro_batches, micro_batches, *x.shape[1:]).swapaxes(0, 1)
  return out


def accumulate_gradients(
    loss_fn: LossFn,
    params: Any,
    batch: Batch,
    micro_batches: int,
    *,
    combine: MetricCombiner = _sum_metrics,
    sharding: Optional[ShardingRules] = None,
    param_sharding: Any = None,
):
  """(grad_sum, loss_sum, denominator, metric_sums) over the micro-batches of `batch` (a lax.scan).

  grad_sum = sum_k d loss_sum_k / d params: not yet divided by anything.
  """
  grad_fn = jax.grad(lambda p, mb: _with_aux(loss_fn(p, mb)), has_aux=True)

  def one(mb):
    if sharding is not None:
      mb = {
          k: sharding.constrain(v, BATCH_AXES[: v.ndim] + (None,) * max(0, v.ndim - 2))
          for k, v in mb.items()
      }
    grads, (loss_sum, denom, metrics) = grad_fn(params, mb)
    if param_sharding is not None:
      grads = jax.lax.with_sharding_constraint(grads, param_sharding)
    return grads, loss_sum, denom, dict(metrics)

  if micro_batches == 1:
    return one(dict(batch))
  stacked = split_micro_batches(batch, micro_batches)
  first = jax.tree.map(lambda x: x[0], stacked)
  rest = jax.tree.map(lambda x: x[1:], stacked)
  carry0 = one(first)

  def body(carry, mb):
    g, l, d, m = carry
    g2, l2, d2, m2 = one(mb)
    return (jax.tree.map(jnp.add, g, g2), l + l2, d + d2, combine(m, m2)), None

  carry, _ = jax.lax.scan(body, carry0, rest)
  return carry


def _with_aux(out):
  loss_sum, denom, metrics = out
  return loss_sum, (jax.lax.stop_gradient(loss_sum), jax.lax.stop_gradient(denom), metrics)


def make_train_step(
    model_config: ModelConfig,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    *,
    sharding: ShardingRules,
    micro_batches: int = 1,
    learning_rate_fn: Optional[optax.Schedule] = None,
    combine_metrics: MetricCombiner = _sum_metrics,
    donate: bool = True,
):
  """A jitted `step(state, batch) -> (state, metrics)`.

  batch: dict of arrays [B, L], B divisible by `micro_batches` and by the data axes' size;
    placed by rows over ('batch', 'length').
  metrics (float32 scalars, replicated): loss = sum loss_sum / sum denominator (before the update),
    denominator, grad_norm (global L2 norm of the averaged gradient, before clipping), lr (the rate this
    update used, when `learning_rate_fn` is given), plus the loss's metric sums combined over micro-batches.
  The state argument is donated: do not use it after the call.
  """
  if micro_batches < 1:
    raise ValueError(f"make_train_step: micro_batches must be >= 1, found {micro_batches}")
  state_sh = train_state_shardings(model_config, optimizer, sharding)
  replicated = sharding.sharding(())

  def step(state: TrainState, batch: Batch):
    grad_sum, loss_sum, denom, metric_sums = accumulate_gradients(
        loss_fn,
        state.params,
        batch,
        micro_batches,
        combine=combine_metrics,
        sharding=sharding,
        param_sharding=state_sh.params,
    )
    # An all-masked batch has denominator 0 and zero gradient sums: divide by 1 instead of 0.
    safe_denom = jnp.where(denom > 0, denom, 1.0)
    grads = jax.tree.map(lambda g: g / safe_denom, grad_sum)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    next_rng, _ = jax.random.split(jax.random.wrap_key_data(state.rng))
    metrics = {
        "loss": loss_sum / safe_denom,
        "denominator": denom,
        "grad_norm": optax.global_norm(grads),
    }
    if learning_rate_fn is not None:
      metrics["lr"] = jnp.asarray(learning_rate_fn(state.step), jnp.float32)
    metrics.update({k: jnp.asarray(v, jnp.float32) for k, v in metric_sums.items()})
    new_state = TrainState(
        params=params,
        opt_state=opt_state,
        step=state.step + 1,
        rng=jax.random.key_data(next_rng).astype(jnp.uint32),
    )
    return new_state, metrics

  batch_sh = sharding.sharding(BATCH_AXES)
  return jax.jit(
      step,
      in_shardings=(state_sh, batch_sh),
      out_shardings=(state_sh, replicated),
      donate_argnums=(0,) if donate else (),
  )
