"""Micro-batch invariance of every loss aggregation when micro-batches or packed rows are padded to
different lengths, and the run-constant normaliser of seq-mean-token-sum-norm (required, named when
missing, defaulted by the trainer through PolicyLossConfig.from_config)."""

import functools

import numpy as np
import pytest
import jax
import jax.numpy as jnp

from biomni_jax.train import aggregation as agg_lib
from biomni_jax.train import losses
from biomni_jax.train.losses import PolicyLossConfig
from tests.train.test_losses import AGGREGATIONS, NORM, np_aggregate, np_token_loss


def random_sequences(seed, lengths):
  """Per-sequence token arrays of the given lengths (one sequence with an all-zero loss mask)."""
  rng = np.random.default_rng(seed)
  seqs = []
  for i, n in enumerate(lengths):
    logp = rng.uniform(-3, -0.1, size=n)
    old = logp + rng.normal(0, 0.8, size=n)
    mask = rng.uniform(size=n) < 0.7
    mask[-1] = True  # every sequence keeps a loss token ...
    if i == 1:
      mask[:] = False  # ... but sequence 1, dropped from the loss
    seqs.append(
        dict(
            logp=logp,
            old=old,
            smp=old + rng.normal(0, 0.8, size=n),
            ref=logp + rng.normal(0, 0.8, size=n),
            ent=rng.uniform(0, 2, size=n),
            adv=np.full(n, rng.normal()),
            mask=mask,
        )
    )
  return seqs


def lay_out(seqs, length, pack):
  """Sequences as rows [B, length] (right-padded; one row per sequence, or all packed in one row
  with segment ids 1..k). Returns (arrays, segment_ids or None, [(row, start, end)] per sequence).
  """
  rows = 1 if pack else len(seqs)
  out = {k: np.zeros((rows, length), np.float32) for k in seqs[0]}
  seg = np.zeros((rows, length), np.int32) if pack else None
  where, col = [], 0
  for i, s in enumerate(seqs):
    n = len(s["logp"])
    row, start = (0, col) if pack else (i, 0)
    for k, v in s.items():
      out[k][row, start : start + n] = v
    if pack:
      seg[0, start : start + n] = i + 1
      col += n
    where.append((row, start, start + n))
  assert max(end for _, _, end in where) <= length
  # A stray mask on padding must not count (it does not in a packed row: segment 0).
  if pack:
    out["mask"][0, col:] = 1.0
  return out, seg, where


@functools.lru_cache(maxsize=None)
def _jitted_loss_and_grad(cfg):
  """jit((logp, arrays, segment_ids) -> ((loss_sum, denominator), d loss_sum / d logp))."""

  def loss(logp, arrays, segment_ids):
    loss_sum, denom, _ = losses.policy_loss(
        logp,
        arrays["adv"],
        arrays["mask"],
        cfg,
        old_logprobs=arrays["old"],
        sampler_logprobs=arrays["smp"],
        ref_logprobs=arrays["ref"],
        entropies=arrays["ent"],
        segment_ids=segment_ids,
    )
    return loss_sum, denom

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


def loss_and_sequence_grads(cfg, seqs, length, pack):
  """(loss_sum, denominator, [d loss_sum / d logp of each sequence's tokens])."""
  arrays, seg, where = lay_out(seqs, length, pack)
  (total, denom), grad = _jitted_loss_and_grad(cfg)(
      jnp.asarray(arrays["logp"]),
      {k: jnp.asarray(v) for k, v in arrays.items() if k != "logp"},
      None if seg is None else jnp.asarray(seg),
  )
  grad = np.asarray(grad)
  return float(total), float(denom), [grad[r, a:b] for r, a, b in where]


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
@pytest.mark.parametrize("pack", [False, True], ids=["rows", "packed"])
def test_micro_batches_padded_to_different_lengths_equal_one_batch(aggregation, pack):
  """Every mode: (sum, denominator) added over micro-batches padded to lengths 12, 9 and 40 gives
  the loss and the gradient of one batch padded to 64 (and the float64 reference). The normaliser
  of seq-mean-token-sum-norm is the run's constant (NORM here; RL passes its row length
  rl.seq_len), not each call's padded length."""
  cfg = PolicyLossConfig.from_config(
      {"aggregation": aggregation, "tis_cap": 2.0, "kl_coef": 0.05, "entropy_coef": 0.01},
      default_token_sum_norm=NORM,
  )
  assert cfg.token_sum_norm == NORM
  seqs = random_sequences(21, [3, 7, 2, 5, 4, 6, 8])
  whole_sum, whole_den, whole_grads = loss_and_sequence_grads(cfg, seqs, 64, pack)
  parts = [(seqs[:2], 12), (seqs[2:4], 9), (seqs[4:], 40)]
  outs = [loss_and_sequence_grads(cfg, part, length, pack) for part, length in parts]
  tot_sum = sum(o[0] for o in outs)
  tot_den = sum(o[1] for o in outs)
  assert tot_den == whole_den
  if aggregation != "token-mean":
    assert whole_den == 6.0  # the sequences with loss tokens
  np.testing.assert_allclose(tot_sum / tot_den, whole_sum / whole_den, rtol=1e-6)
  micro_grads = [g for o in outs for g in o[2]]
  for got, want in zip(micro_grads, whole_grads):
    np.testing.assert_allclose(got / tot_den, want / whole_den, rtol=1e-6, atol=1e-9)
  # And both equal the float64 reference over the sequences laid out one per row.
  ref_rows, _, _ = lay_out(seqs, 8, pack=False)
  ref_loss, _ = np_token_loss(
      cfg, *(ref_rows[k] for k in ("logp", "old", "adv", "smp", "ref", "ent"))
  )
  want_sum, want_den = np_aggregate(aggregation, ref_loss, ref_rows["mask"], norm=NORM)
  assert want_den == whole_den
  np.testing.assert_allclose(whole_sum, want_sum, rtol=1e-5)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_sft_cross_entropy_is_invariant_to_padding_in_every_mode(aggregation):
  rng = np.random.default_rng(3)
  logp = rng.uniform(-4, -0.1, size=(4, 6)).astype(np.float32)
  mask = (rng.uniform(size=(4, 6)) < 0.6).astype(np.float32)
  mask[:, 0] = 1.0

  def padded(rows, length):
    pad = ((0, 0), (0, length - 6))
    return jnp.asarray(np.pad(logp[rows], pad)), jnp.asarray(np.pad(mask[rows], pad))

  whole = losses.sft_cross_entropy(
      *padded(slice(0, 4), 30), aggregation=aggregation, token_sum_norm=NORM
  )
  a = losses.sft_cross_entropy(
      *padded(slice(0, 1), 6), aggregation=aggregation, token_sum_norm=NORM
  )
  b = losses.sft_cross_entropy(
      *padded(slice(1, 4), 11), aggregation=aggregation, token_sum_norm=NORM
  )
  np.testing.assert_allclose(float(a[0] + b[0]), float(whole[0]), rtol=1e-6)
  assert float(a[1] + b[1]) == float(whole[1])
  want = np_aggregate(aggregation, -logp, mask, norm=NORM)
  np.testing.assert_allclose(float(whole[0]), want[0], rtol=1e-5)


def test_token_sum_norm_is_required_and_named_when_missing():
  """seq-mean-token-sum-norm has no per-call default: a normaliser taken from each call's padded
  length would weight micro-batches padded differently differently."""
  x = jnp.ones((2, 5))
  m = jnp.ones((2, 5))
  with pytest.raises(ValueError, match="seq-mean-token-sum-norm.*token_sum_norm"):
    agg_lib.aggregate("seq-mean-token-sum-norm", x, m)
  with pytest.raises(ValueError, match="token_sum_norm"):
    losses.sft_cross_entropy(x, m, aggregation="seq-mean-token-sum-norm")
  with pytest.raises(ValueError, match="PolicyLossConfig.token_sum_norm"):
    PolicyLossConfig(aggregation="seq-mean-token-sum-norm")
  with pytest.raises(ValueError, match="PolicyLossConfig.token_sum_norm"):
    PolicyLossConfig.from_config({"aggregation": "seq-mean-token-sum-norm", "token_sum_norm": None})
  with pytest.raises(ValueError, match="token_sum_norm.*> 0"):
    agg_lib.aggregate("seq-mean-token-sum-norm", x, m, token_sum_norm=0.0)
  # The other modes need none.
  assert float(agg_lib.aggregate("seq-mean-token-mean", x, m)[1]) == 2.0


def test_from_config_takes_the_run_default_unless_the_field_is_set():
  mode = {"aggregation": "seq-mean-token-sum-norm"}
  assert PolicyLossConfig.from_config(mode, default_token_sum_norm=2048).token_sum_norm == 2048
  unset = {**mode, "token_sum_norm": None}  # the recipe configs spell the field out as None
  assert PolicyLossConfig.from_config(unset, default_token_sum_norm=2048).token_sum_norm == 2048
  own = {**mode, "token_sum_norm": 512.0}
  assert PolicyLossConfig.from_config(own, default_token_sum_norm=2048).token_sum_norm == 512.0
  assert PolicyLossConfig.from_config({}).token_sum_norm is None
