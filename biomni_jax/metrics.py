"""Episode metrics that training and evaluation both report: success and pass@k.

An episode succeeds when its score (RL: correctness; evaluation: the official grade) is 1; partial
credit (e.g. 0.5) is not success. With n episodes of one task instance of which c succeed, the
unbiased estimate of the probability that at least one of k of them succeeds is

    pass@k = 1 - C(n - c, k) / C(n, k)        (1 when n - c < k)
"""

from __future__ import annotations

import math

# A score this close to 1 counts as 1 (scores are float32 sums in places).
SUCCESS_THRESHOLD = 1.0 - 1e-6


def succeeded(score: float) -> bool:
  """Whether an episode with this score succeeded (score 1, up to float rounding)."""
  return float(score) >= SUCCESS_THRESHOLD


def pass_at_k(n: int, c: int, k: int) -> float:
  """Probability that at least one of k draws without replacement from n (c correct) is correct."""
  if not 0 <= c <= n or not 1 <= k <= n:
    raise ValueError(f"pass_at_k: expected 0 <= c <= n and 1 <= k <= n, found n={n}, c={c}, k={k}")
  if n - c < k:
    return 1.0
  return 1.0 - math.comb(n - c, k) / math.comb(n, k)
