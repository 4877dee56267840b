"""Token-level training losses, each returning (loss_sum, denominator[, metrics]).

Notation (all per token, shapes [B, T], float32): logp = log pi_theta(y_t) under
the current params, logp_old = log pi_old (the params the rollout batch is
"anchored" to, recomputed by the trainer), logp_smp = the sampler's log-prob
recorded at generation time, logp_ref = a frozen reference policy, A = the
advantage, m = the loss mask.

Policy-gradient losses (registry ``POLICY_LOSSES``, config ``policy_loss``):

  ppo_clip   r = exp(logp - logp_old)
             L = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))       (clip-higher)
             if A < 0 and dual_clip c is set: L = min(L, -A c)           (dual-clip)
  importance_sampling   L = -A r   (unclipped; unstable off-policy, kept for comparison)

Token-level truncated importance sampling (TIS) against the sampler, when
``tis_cap`` is set: L <- stop_grad(min(exp(logp_old - logp_smp), tis_cap)) * L.
It corrects for the engine's numerics / staleness differing from the trainer's.

KL penalty to the reference (``kl_coef`` > 0), estimator ``kl_estimator``
with d = logp - logp_ref:  k1 = d,  k2 = d^2 / 2,  k3 = exp(-d) + d - 1 (>= 0,
low variance). Entropy bonus (``entropy_coef`` > 0) given per-token entropies H:

  per-token loss = w_tis * L + kl_coef * k(d) - entropy_coef * H

which is then aggregated by ``aggregation`` (see aggregation.py) into
(loss_sum, denominator). The train step sums both over micro-batches and
devices and divides once.

Metrics are returned as additive sums over loss tokens (plus max/min) so
they too can be combined across micro-batches with ``combine_metrics`` and
turned into fractions/means with ``finalize_metrics``.

``sft_cross_entropy`` is the SFT loss in the same form: -sum m logp / sum m.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections

from biomni_jax.registry import Registry
from biomni_jax.train import aggregation as aggregation_lib

Array = jax.Array
# (logp, logp_old, advantages, cfg) -> (per-token loss [B,T], indicator arrays [B,T])
TokenPolicyLossFn = Callable[[Array, Array, Array, "PolicyLossConfig"], tuple[Array, dict]]
# (logp, logp_ref) -> per-token KL estimate [B,T]
KLEstimatorFn = Callable[[Array, Array], Array]
POLICY_LOSSES: Registry[TokenPolicyLossFn] = Registry("policy loss")
KL_ESTIMATORS: Registry[KLEstimatorFn] = Registry("KL estimator")

# The metrics `policy_loss` returns, all additive sums over loss tokens except the ratio extremes
# (max/min): the first ten always, the last four when their term is on (tis_cap, kl_coef,
# entropy_coef). combine_metrics and finalize_metrics read them; trainers pick them out of a step's
# metrics by this list.
METRIC_SUMS = (
    "num_tokens",
    "pg_loss_sum",
    "clip_low_count",
    "clip_high_count",
    "dual_clip_count",
    "ratio_sum",
    "ratio_sq_sum",
    "ratio_max",
    "ratio_min",
    "approx_kl_sum",
    "tis_weight_sum",
    "tis_capped_count",
    "kl_sum",
    "entropy_sum",
)


@dataclasses.dataclass(frozen=True)
class PolicyLossConfig:
  """Knobs of the policy loss. Defaults are the Biomni-R0 RL recipe.

  Attributes:
    policy_loss: name in ``POLICY_LOSSES``.
    clip_low, clip_high: PPO ratio clip range [1 - clip_low, 1 + clip_high].
    dual_clip: c > 1 bounding the loss of negative-advantage tokens by -A c; None disables.
    tis_cap: cap of the truncated importance weight vs the sampler; None disables TIS.
    kl_coef: weight of the KL penalty to the reference policy; 0 disables.
    kl_estimator: name in ``KL_ESTIMATORS`` ("k1", "k2", "k3").
    entropy_coef: weight of the entropy bonus; 0 disables.
    aggregation: name in ``aggregation.AGGREGATIONS``.
    token_sum_norm: the run's constant normaliser of "seq-mean-token-sum-norm" (Dr.GRPO: the
      maximum response length; RL uses its row length rl.seq_len); required by that mode, ignored
      by the others. ``from_config`` fills it from ``default_token_sum_norm`` when unset.
  """

  policy_loss: str = "ppo_clip"
  clip_low: float = 0.2
  clip_high: float = 0.28
  dual_clip: Optional[float] = 3.0
  tis_cap: Optional[float] = None
  kl_coef: float = 0.0
  kl_estimator: str = "k3"
  entropy_coef: float = 0.0
  aggregation: str = "seq-mean-token-mean"
  token_sum_norm: Optional[float] = None

  def __post_init__(self):
    for name, registry in (("policy_loss", POLICY_LOSSES), ("kl_estimator", KL_ESTIMATORS)):
      if getattr(self, name) not in registry:
        raise ValueError(
            f"PolicyLossConfig.{name}: unknown {getattr(self, name)!r}; "
            f"expected one of {registry.names()}"
        )
    aggregation_lib.AGGREGATIONS[self.aggregation]  # an unknown mode raises, naming the known ones
    if not (0 <= self.clip_low < 1) or self.clip_high < 0:
      raise ValueError(
          f"PolicyLossConfig: expected 0 <= clip_low < 1 and clip_high >= 0, "
          f"found clip_low={self.clip_low}, clip_high={self.clip_high}"
      )
    if self.dual_clip is not None and self.dual_clip <= 1:
      raise ValueError(
          f"PolicyLossConfig.dual_clip: expected c > 1 or None, found {self.dual_clip}"
      )
    if self.tis_cap is not None and self.tis_cap <= 0:
      raise ValueError(f"PolicyLossConfig.tis_cap: expected > 0 or None, found {self.tis_cap}")
    if self.token_sum_norm is not None and not self.token_sum_norm > 0:
      raise ValueError(
          f"PolicyLossConfig.token_sum_norm: expected > 0 or None, found {self.token_sum_norm}"
      )
    if self.aggregation == "seq-mean-token-sum-norm" and self.token_sum_norm is None:
      raise ValueError(
          "PolicyLossConfig.token_sum_norm: aggregation 'seq-mean-token-sum-norm' needs the run's "
          "constant normaliser (Dr.GRPO: the maximum response length, e.g. the row length "
          "rl.seq_len); found None"
      )

  @classmethod
  def from_config(
      cls, cfg: Mapping[str, Any], *, default_token_sum_norm: Optional[float] = None
  ) -> "PolicyLossConfig":
    """Build from a ConfigDict/dict holding (a subset of) the fields; unknown keys are ignored.

    default_token_sum_norm: the value of ``token_sum_norm`` when cfg leaves it out or sets it to
      None (the trainer passes its row length, a constant of the run).
    """
    names = {f.name for f in dataclasses.fields(cls)}
    fields = {k: cfg[k] for k in names if k in cfg}
    if fields.get("token_sum_norm") is None and default_token_sum_norm is not None:
      fields["token_sum_norm"] = float(default_token_sum_norm)
    return cls(**fields)


def default_policy_loss_config() -> ml_collections.ConfigDict:
  """The `rl.loss` config section with the Biomni-R0 recipe's values (PolicyLossConfig's defaults):
  PPO clip 0.2 / 0.28, dual-clip 3, no TIS, no KL or entropy term, seq-mean-token-mean."""
  return ml_collections.ConfigDict(dataclasses.asdict(PolicyLossConfig()))


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(logp: Array, logp_old: Array, adv: Array, cfg: PolicyLossConfig) -> tuple[Array, dict]:
  """PPO clipped surrogate with clip-higher and dual-clip; see module docstring."""
  ratio = jnp.exp(logp - logp_old)
  unclipped = -adv * ratio
  clipped = -adv * jnp.clip(ratio, 1.0 - cfg.clip_low, 1.0 + cfg.clip_high)
  loss = jnp.maximum(unclipped, clipped)
  negative = adv < 0
  indicators = {
      "clip_low": (negative & (ratio < 1.0 - cfg.clip_low)),
      "clip_high": ((adv > 0) & (ratio > 1.0 + cfg.clip_high)),
  }
  if cfg.dual_clip is not None:
    loss = jnp.where(negative, jnp.minimum(loss, -adv * cfg.dual_clip), loss)
    indicators["dual_clip"] = negative & (ratio > cfg.dual_clip)
  else:
    indicators["dual_clip"] = jnp.zeros_like(negative)
  return loss, indicators


@POLICY_LOSSES.register("importance_sampling")
def importance_sampling(
    logp: Array, logp_old: Array, adv: Array, cfg: PolicyLossConfig
) -> tuple[Array, dict]:
  """Unclipped importance-weighted policy gradient: -A exp(logp - logp_old)."""
  del cfg
  zeros = jnp.zeros(logp.shape, bool)
  return -adv * jnp.exp(logp - logp_old), {
      "clip_low": zeros,
      "clip_high": zeros,
      "dual_clip": zeros,
  }


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Array, logp_ref: Array) -> Array:
  """d = logp - logp_ref."""
  return logp - logp_ref


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Array, logp_ref: Array) -> Array:
  """d^2 / 2."""
  return 0.5 * (logp - logp_ref) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Array, logp_ref: Array) -> Array:
  """exp(-d) + d - 1 (>= 0, low variance)."""
  return jnp.exp(logp_ref - logp) - (logp_ref - logp) - 1.0


def _require(value: Optional[Array], name: str, reason: str, shape: tuple) -> Array:
  if value is None:
    raise ValueError(f"policy_loss: {reason} needs {name} [B, T]; found None")
  if value.shape != shape:
    raise ValueError(f"policy_loss: expected {name} of shape {shape}, found {value.shape}")
  return value.astype(jnp.float32)


def policy_loss(
    logprobs: Array,
    advantages: Array,
    loss_mask: Array,
    cfg: PolicyLossConfig,
    *,
    old_logprobs: Optional[Array] = None,
    sampler_logprobs: Optional[Array] = None,
    ref_logprobs: Optional[Array] = None,
    entropies: Optional[Array] = None,
    segment_ids: Optional[Array] = None,
) -> tuple[Array, Array, dict[str, Array]]:
  """Policy loss of a (micro-)batch as (loss_sum, denominator, metric sums).

  Args:
    logprobs: [B, T] log-probs of the taken tokens under the current params (differentiated).
    advantages: [B] per trajectory or [B, T] per token.
    loss_mask: [B, T] 1 on the policy's own tokens, 0 on prompt/observation/padding.
    cfg: PolicyLossConfig.
    old_logprobs: [B, T] anchor of the ratio; None means on-policy (stop_grad(logprobs)).
    sampler_logprobs: [B, T] recorded by the engine; required when cfg.tis_cap is set.
    ref_logprobs: [B, T] reference policy; required when cfg.kl_coef > 0.
    entropies: [B, T] per-token entropy of the current policy; required when cfg.entropy_coef > 0.
    segment_ids: [B, T] optional packing segments (0 = padding) for per-sequence aggregations.
  Returns:
    loss_sum, denominator: float32 scalars (see aggregation.py for what each mode sums/counts).
    metrics: dict of float32 scalars, additive sums over loss tokens plus "ratio_max"/"ratio_min";
      combine across micro-batches with ``combine_metrics``, read with ``finalize_metrics``.
  """
  if logprobs.ndim != 2 or loss_mask.shape != logprobs.shape:
    raise ValueError(
        f"policy_loss: expected logprobs [B, T] and loss_mask [B, T] of equal shape, "
        f"found {logprobs.shape} and {loss_mask.shape}"
    )
  shape = logprobs.shape
  logp = logprobs.astype(jnp.float32)
  mask = loss_mask.astype(jnp.float32)
  if segment_ids is not None:
    mask = mask * (segment_ids > 0)
  if advantages.ndim == 1 and advantages.shape[0] == shape[0]:
    adv = jnp.broadcast_to(advantages[:, None], shape)
  elif advantages.shape == shape:
    adv = advantages
  else:
    raise ValueError(
        f"policy_loss: expected advantages [B]={shape[:1]} or [B, T]={shape}, "
        f"found {advantages.shape}"
    )
  adv = jax.lax.stop_gradient(adv.astype(jnp.float32))
  if old_logprobs is None:
    logp_old = jax.lax.stop_gradient(logp)
  else:
    logp_old = jax.lax.stop_gradient(_require(old_logprobs, "old_logprobs", "PPO", shape))

  pg_loss, indicators = POLICY_LOSSES[cfg.policy_loss](logp, logp_old, adv, cfg)
  token_loss = pg_loss
  ratio = jnp.exp(logp - logp_old)
  # Metrics never carry gradient.
  ratio_ng = jax.lax.stop_gradient(ratio)
  metrics = {
      "num_tokens": mask.sum(),
      "pg_loss_sum": jax.lax.stop_gradient(pg_loss * mask).sum(),
      "clip_low_count": (indicators["clip_low"] * mask).sum(),
      "clip_high_count": (indicators["clip_high"] * mask).sum(),
      "dual_clip_count": (indicators["dual_clip"] * mask).sum(),
      "ratio_sum": (ratio_ng * mask).sum(),
      "ratio_sq_sum": (ratio_ng**2 * mask).sum(),
      "ratio_max": jnp.where(mask > 0, ratio_ng, -jnp.inf).max(),
      "ratio_min": jnp.where(mask > 0, ratio_ng, jnp.inf).min(),
      # k3 estimate of KL(pi_old || pi_theta) on tokens sampled from (about) pi_old.
      "approx_kl_sum": ((ratio_ng - 1.0 - jnp.log(ratio_ng)) * mask).sum(),
  }
  if cfg.tis_cap is not None:
    logp_smp = _require(sampler_logprobs, "sampler_logprobs", "tis_cap", shape)
    raw_weight = jnp.exp(logp_old - logp_smp)
    tis_weight = jax.lax.stop_gradient(jnp.minimum(raw_weight, cfg.tis_cap))
    token_loss = tis_weight * token_loss
    metrics["tis_weight_sum"] = (tis_weight * mask).sum()
    metrics["tis_capped_count"] = ((raw_weight > cfg.tis_cap) * mask).sum()
  if cfg.kl_coef > 0:
    logp_ref = jax.lax.stop_gradient(_require(ref_logprobs, "ref_logprobs", "kl_coef > 0", shape))
    kl = KL_ESTIMATORS[cfg.kl_estimator](logp, logp_ref)
    token_loss = token_loss + cfg.kl_coef * kl
    metrics["kl_sum"] = jax.lax.stop_gradient(kl * mask).sum()
  if cfg.entropy_coef > 0:
    entropy = _require(entropies, "entropies", "entropy_coef > 0", shape)
    token_loss = token_loss - cfg.entropy_coef * entropy
    metrics["entropy_sum"] = jax.lax.stop_gradient(entropy * mask).sum()

  loss_sum, denom = aggregation_lib.aggregate(
      cfg.aggregation, token_loss, mask, segment_ids=segment_ids, token_sum_norm=cfg.token_sum_norm
  )
  return loss_sum, denom, {k: v.astype(jnp.float32) for k, v in metrics.items()}


def combine_metrics(a: Mapping[str, Array], b: Mapping[str, Array]) -> dict[str, Array]:
  """Combine two micro-batches' metric dicts: max/min for ratio extremes, sums otherwise."""
  if set(a) != set(b):
    raise ValueError(f"combine_metrics: metric keys differ: {sorted(a)} vs {sorted(b)}")
  out = {}
  for key in a:
    if key == "ratio_max":
      out[key] = jnp.maximum(a[key], b[key])
    elif key == "ratio_min":
      out[key] = jnp.minimum(a[key], b[key])
    else:
      out[key] = a[key] + b[key]
  return out


def finalize_metrics(sums: Mapping[str, Array]) -> dict[str, Array]:
  """Fractions and means over loss tokens from (combined) metric sums.

  clip_*_frac = count / num_tokens; ratio_mean, ratio_std; approx_kl; and
  tis_weight_mean, tis_capped_frac, kl, entropy when those terms are enabled.
  """
  n = jnp.maximum(sums["num_tokens"], 1.0)
  ratio_mean = sums["ratio_sum"] / n
  out = {
      "num_tokens": sums["num_tokens"],
      "pg_loss_token_mean": sums["pg_loss_sum"] / n,
      "clip_low_frac": sums["clip_low_count"] / n,
      "clip_high_frac": sums["clip_high_count"] / n,
      "dual_clip_frac": sums["dual_clip_count"] / n,
      "ratio_mean": ratio_mean,
      "ratio_std": jnp.sqrt(jnp.maximum(sums["ratio_sq_sum"] / n - ratio_mean**2, 0.0)),
      "ratio_max": sums["ratio_max"],
      "ratio_min": sums["ratio_min"],
      "approx_kl": sums["approx_kl_sum"] / n,
  }
  if "tis_weight_sum" in sums:
    out["tis_weight_mean"] = sums["tis_weight_sum"] / n
    out["tis_capped_frac"] = sums["tis_capped_count"] / n
  if "kl_sum" in sums:
    out["kl"] = sums["kl_sum"] / n
  if "entropy_sum" in sums:
    out["entropy"] = sums["entropy_sum"] / n
  return out


def sft_cross_entropy(
    target_logprobs: Array,
    loss_mask: Array,
    *,
    aggregation: str = "token-mean",
    segment_ids: Optional[Array] = None,
    token_sum_norm: Optional[float] = None,
) -> tuple[Array, Array]:
  """Masked token cross-entropy as (loss_sum, denominator).

  Args:
    target_logprobs: [B, T] log p(target token) (the model's log-softmax gathered at the labels).
    loss_mask: [B, T] 1 on tokens to learn (assistant content and its end-of-turn token).
  Returns:
    With the default "token-mean": (-sum m logp, sum m); the step divides by the
    global number of masked tokens, exact under packing and micro-batching.
  """
  return aggregation_lib.aggregate(
      aggregation,
      -target_logprobs.astype(jnp.float32),
      loss_mask,
      segment_ids=segment_ids,
      token_sum_norm=token_sum_norm,
  )
