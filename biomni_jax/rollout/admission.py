"""Staleness control: when a new group may start, and which finished trajectories may be returned.

Versions. The engine tags every sampled token with the weight version that produced it. The trainer
publishes versions v0 (the pool's start), v0 + 1, ...; `step = current - v0` optimizer phases have
happened. S = max_staleness, B = groups_per_batch (the trainer takes B groups per phase).

Rule 1, pacing (SkyRL's capacity rule): a new group may start only while

    live_groups < (S + 1 + step) * B

where live_groups counts every group ever admitted that was not dropped (in flight, buffered or
already delivered). With S = 0 this is batch-synchronous on-policy RL: at step k at most (k + 1) * B
groups have ever started, i.e. exactly the batch the trainer is waiting for; the next batch starts
only once the trainer has published v0 + k + 1. With S > 0 generation runs up to S batches ahead of
training, so in the usual first-finished-first-served order a group admitted at version v is
delivered by version v + S.

Rule 2, the guarantee: a trajectory is fresh iff every token it sampled has version >= current - S.
Pacing cannot promise this for a straggler that later groups overtake, so the pool checks it: an
in-flight episode whose oldest token falls out of the window aborts at its next turn and restarts,
and a finished group is re-checked when the trainer asks for it (its stale trajectories re-run).
Nothing older than S versions is ever returned; pacing makes such restarts rare.

Not thread-safe on its own: the pool calls it under its lock.
"""

from __future__ import annotations


class AdmissionControl:

  def __init__(self, max_staleness: int, groups_per_batch: int, version: int = 0):
    if max_staleness < 0 or groups_per_batch < 1:
      raise ValueError(
          f"AdmissionControl: expected max_staleness >= 0 and groups_per_batch >= 1, "
          f"found {max_staleness}, {groups_per_batch}"
      )
    self.max_staleness = int(max_staleness)
    self.groups_per_batch = int(groups_per_batch)
    self.first_version = int(version)
    self.version = int(version)
    self.live_groups = 0

  @property
  def step(self) -> int:
    return self.version - self.first_version

  @property
  def capacity(self) -> int:
    """Groups that may have started by now: (S + 1 + step) * B."""
    return (self.max_staleness + 1 + self.step) * self.groups_per_batch

  def can_admit(self) -> bool:
    return self.live_groups < self.capacity

  def on_admit(self) -> None:
    self.live_groups += 1

  def on_drop(self) -> None:
    """A group left without being delivered (all its episodes failed): its place is free again."""
    self.live_groups -= 1

  def publish(self, version: int) -> None:
    if version < self.version:
      raise ValueError(
          f"AdmissionControl.publish: versions must not decrease; current {self.version}, "
          f"found {version}"
      )
    self.version = int(version)

  @property
  def oldest_allowed(self) -> int:
    """The oldest token version a returned trajectory may hold: current - S."""
    return self.version - self.max_staleness

  def is_fresh(self, min_version: int) -> bool:
    """min_version: the oldest version among a trajectory's sampled tokens (< 0: none sampled)."""
    return min_version < 0 or min_version >= self.oldest_allowed
