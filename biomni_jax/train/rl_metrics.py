"""Episode-level RL metrics of one rollout batch: rewards, pass@k, per-task success, lengths, staleness.

All functions take the batch's groups (rollout.types.Group) and return flat {name: float} dicts ready for
MetricsWriter. A trajectory "succeeds" when its correctness is 1 (partial credit, e.g. crispr_delivery's
0.5, does not count as success; biomni_jax/metrics.py, shared with evaluation).

  pass@k (per group of n trajectories with c successes, unbiased):  1 - C(n - c, k) / C(n, k)
  staleness of a sampled token = current version - version that sampled it
  length_reward_corr = Pearson correlation over trajectories of (sampled tokens, reward); 0 when either
    is constant (the paper's observation: longer structured reasoning goes with success)
"""

from __future__ import annotations

import collections
from typing import Any, Mapping, Sequence

import numpy as np

from biomni_jax.metrics import pass_at_k, succeeded

STALENESS_BUCKETS = (0, 1, 2, 3)  # the last bucket collects everything >= 3


def pearson(x: np.ndarray, y: np.ndarray) -> float:
  """Pearson correlation of two equal-length vectors; 0 when either has zero variance."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  if x.size < 2 or x.std() == 0 or y.std() == 0:
    return 0.0
  return float(np.corrcoef(x, y)[0, 1])


def episode_metrics(groups: Sequence[Any], ks: Sequence[int] = (1,)) -> dict[str, float]:
  """Means over the batch's trajectories and groups (see the module docstring for the definitions)."""
  trajs = [t for g in groups for t in g.trajectories]
  if not trajs:
    return {}
  reward = np.asarray([t.reward for t in trajs], np.float64)
  sampled = np.asarray([int(np.sum(t.loss_mask)) for t in trajs], np.float64)
  out = {
      "episodes": float(len(trajs)),
      "groups": float(len(groups)),
      "reward": float(reward.mean()),
      "correctness": float(np.mean([t.correctness for t in trajs])),
      "format": float(np.mean([t.format for t in trajs])),
      "success": float(np.mean([succeeded(t.correctness) for t in trajs])),
      "turns": float(np.mean([t.num_turns for t in trajs])),
      "tokens_per_episode": float(np.mean([len(t.token_ids) for t in trajs])),
      "response_tokens": float(sampled.mean()),
      "response_tokens_max": float(sampled.max()),
      "length_reward_corr": pearson(sampled, reward),
      "tool_seconds": float(np.mean([t.tool_seconds for t in trajs])),
      "generate_seconds": float(np.mean([t.generate_seconds for t in trajs])),
      "overlong_and_malformed_frac": float(
          np.mean([bool(t.overlong_and_malformed) for t in trajs])
      ),
      # Groups whose rewards are all equal give every member advantage 0: no learning signal.
      "zero_signal_group_frac": float(np.mean([np.ptp(g.rewards) == 0 for g in groups])),
  }
  sizes = {len(g.trajectories) for g in groups}
  for k in sorted(set(ks) | {max(sizes)}):
    values = [
        pass_at_k(len(g.trajectories), sum(succeeded(t.correctness) for t in g.trajectories), k)
        for g in groups
        if len(g.trajectories) >= k
    ]
    if values:
      out[f"pass@{k}"] = float(np.mean(values))
  terminations = collections.Counter(t.termination for t in trajs)
  for name, count in terminations.items():
    out[f"termination/{name}"] = count / len(trajs)
  by_task: dict[str, list[bool]] = collections.defaultdict(list)
  for t in trajs:
    by_task[t.task_name].append(succeeded(t.correctness))
  for task, hits in sorted(by_task.items()):
    out[f"success/{task}"] = float(np.mean(hits))
    out[f"episodes/{task}"] = float(len(hits))
  return out


def staleness_metrics(groups: Sequence[Any], current_version: int) -> dict[str, float]:
  """Fractions of sampled tokens by staleness (0, 1, 2, >=3) and the maximum, against `current_version`."""
  versions = [
      np.asarray(t.policy_versions)[np.asarray(t.loss_mask) > 0]
      for g in groups
      for t in g.trajectories
  ]
  versions = np.concatenate(versions) if versions else np.zeros(0, np.int32)
  if versions.size == 0:
    return {}
  staleness = current_version - versions.astype(np.int64)
  out = {
      "staleness_max": float(staleness.max()),
      "staleness_mean": float(staleness.mean()),
      "sampled_tokens": float(staleness.size),
  }
  last = STALENESS_BUCKETS[-1]
  for b in STALENESS_BUCKETS:
    hit = staleness >= b if b == last else staleness == b
    out[f"staleness/{b}{'+' if b == last else ''}"] = float(hit.mean())
  return out


_COUNTS = ("episodes", "groups", "sampled_tokens")
_MAXIMA = ("response_tokens_max", "staleness_max")


def _weight_key(key: str) -> str:
  """Which count a per-host mean is weighted by when hosts are combined."""
  if key.startswith("pass@") or key == "zero_signal_group_frac":
    return "groups"
  if key.startswith("staleness"):
    return "sampled_tokens"
  if key.startswith("success/"):
    return "episodes/" + key.split("/", 1)[1]
  return "episodes"


def combine_host_metrics(per_host: Sequence[Mapping[str, float]]) -> dict[str, float]:
  """One batch's metrics from every host's `episode_metrics` + `staleness_metrics` of its own groups:
  counts summed, maxima maxed, means weighted by what they average over (episodes, groups, sampled
  tokens, a task's episodes), which is exact for every mean; `length_reward_corr` becomes the
  episode-weighted mean of the hosts' correlations."""
  if len(per_host) == 1:
    return dict(per_host[0])
  keys = list(dict.fromkeys(k for host in per_host for k in host))
  out = {}
  for key in keys:
    present = [h for h in per_host if key in h]
    if key in _COUNTS or key.startswith("episodes/"):
      out[key] = float(sum(h[key] for h in present))
    elif key in _MAXIMA:
      out[key] = float(max(h[key] for h in present))
    else:
      weight = _weight_key(key)
      total = sum(h.get(weight, 0.0) for h in present)
      out[key] = (
          float(sum(h[key] * h.get(weight, 0.0) for h in present) / total)
          if total
          else float(np.mean([h[key] for h in present]))
      )
  return out


def pool_metrics(stats: Mapping[str, Any], prefix: str = "pool/") -> dict[str, float]:
  """The numeric entries of pool.stats(), flattened one level ({"a": {"b": 1}} -> "pool/a/b")."""
  out = {}
  for key, value in stats.items():
    if isinstance(value, Mapping):
      out.update(pool_metrics(value, f"{prefix}{key}/"))
    elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
      out[f"{prefix}{key}"] = float(value)
  return out
